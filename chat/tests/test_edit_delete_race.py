"""An edit or delete works on the message row as it is under the project row lock,
not on a copy read before it: a delete that commits in between is never undone."""

import pytest

from chat import actions
from chat.models import Mention, Message
from chatsite.errors import NotFound
from conftest import assert_error, login_client
from projects.models import Project


@pytest.fixture
def bumps(monkeypatch):
    """The project versions bumped after commit (each retires the cached reads)."""
    calls = []
    real = actions.bump_version

    def bump(scope, ident):
        calls.append((scope, ident))
        return real(scope, ident)

    monkeypatch.setattr(actions, "bump_version", bump)
    return calls


def send_one(user, project, content, capture):
    with capture(execute=True):
        return actions.do_send_message(user, project.pk, content)[0]


def test_edit_of_a_copy_read_before_a_delete_is_refused_and_changes_nothing(
    member, project, client_member, published, bumps, django_capture_on_commit_callbacks
):
    message = send_one(member, project, "secret plan", django_capture_on_commit_callbacks)
    stale = Message.objects.get(pk=message.pk)  # the edit's read, before its lock
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_delete_message(Message.objects.get(pk=message.pk))
    assert client_member.get(f"/api/projects/{project.pk}/messages").status_code == 200
    published.clear()
    bumps.clear()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(NotFound, match="deleted"):
            actions.do_edit_message(stale, "secret plan, revived")

    row = Message.objects.get(pk=message.pk)
    assert row.deleted_at is not None
    assert (row.content, row.edited_at, row.changed_seq) == ("", None, 2)
    assert Project.objects.get(pk=project.pk).seq == 2  # the edit's number was given back
    assert (callbacks, published, bumps) == ([], [], [])
    # The cached first page still shows the tombstone.
    item = client_member.get(f"/api/projects/{project.pk}/messages").json()["items"][0]
    assert (item["id"], item["content"], item["deleted"]) == (message.pk, "", True)


def test_delete_of_a_copy_read_before_a_delete_takes_no_number(
    member, project, published, bumps, django_capture_on_commit_callbacks
):
    message = send_one(member, project, "twice", django_capture_on_commit_callbacks)
    stale = Message.objects.get(pk=message.pk)
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_delete_message(Message.objects.get(pk=message.pk))
    published.clear()
    bumps.clear()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        returned = actions.do_delete_message(stale)

    assert returned.deleted_at is not None and returned.changed_seq == 2
    assert Project.objects.get(pk=project.pk).seq == 2
    assert Message.objects.get(pk=message.pk).changed_seq == 2
    assert (callbacks, published, bumps) == ([], [], [])


def test_edit_of_a_copy_read_before_another_edit_replaces_the_current_mentions(
    owner, member, project, django_capture_on_commit_callbacks
):
    # The mentions to drop are those of the text in the row, not of the copy.
    message = send_one(owner, project, "plain words", django_capture_on_commit_callbacks)
    stale = Message.objects.get(pk=message.pk)
    actions.do_edit_message(Message.objects.get(pk=message.pk), "@member look")
    assert Mention.objects.filter(message=message).count() == 1

    actions.do_edit_message(stale, "plain again")

    assert Mention.objects.filter(message=message).count() == 0
    row = Message.objects.get(pk=message.pk)
    assert (row.content, row.changed_seq) == ("plain again", 3)


def test_patch_after_delete_is_404_and_a_second_delete_is_204_with_no_number(
    member, project, django_capture_on_commit_callbacks
):
    author = login_client(member)
    message = send_one(member, project, "gone soon", django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        assert author.delete(f"/api/messages/{message.pk}").status_code == 204

    response = author.patch(f"/api/messages/{message.pk}", {"content": "back"},
                            content_type="application/json")

    error = assert_error(response, 404, "not_found")
    assert error["message"] == "This message was deleted."
    assert author.delete(f"/api/messages/{message.pk}").status_code == 204
    assert Project.objects.get(pk=project.pk).seq == 2
    assert Message.objects.get(pk=message.pk).content == ""
