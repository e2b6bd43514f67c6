"""Writes of chat messages: numbering, idempotency, validation, publish after commit."""

import uuid

import pytest
from django.db import transaction

from chat import actions
from chat.models import Message
from chatsite.errors import Conflict, Forbidden, Invalid, NotFound
from projects.actions import do_create_project
from projects.models import Project


def project_seq(project):
    return Project.objects.values_list("seq", flat=True).get(pk=project.pk)


# --- numbering ------------------------------------------------------------------------


def test_each_send_takes_the_next_number(member, project):
    messages = [
        actions.do_send_message(member, project.pk, f"m{i}")[0] for i in range(3)
    ]
    assert [(m.seq, m.changed_seq) for m in messages] == [(1, 1), (2, 2), (3, 3)]
    assert project_seq(project) == 3


def test_projects_number_their_changes_independently(owner, member, project):
    other = do_create_project(owner, name="Other")
    actions.do_send_message(member, project.pk, "a")
    (message, _) = actions.do_send_message(owner, other.pk, "b")
    assert message.seq == 1
    assert (project_seq(project), project_seq(other)) == (1, 1)


def test_edit_and_delete_take_the_next_number_and_keep_the_place(member, project):
    first, _ = actions.do_send_message(member, project.pk, "first")
    actions.do_send_message(member, project.pk, "second")
    actions.do_edit_message(first, "first, edited")
    first.refresh_from_db()
    assert (first.seq, first.changed_seq, first.content) == (1, 3, "first, edited")
    assert first.edited_at is not None
    actions.do_delete_message(first)
    first.refresh_from_db()
    assert (first.seq, first.changed_seq, first.content) == (1, 4, "")
    assert first.deleted_at is not None
    assert project_seq(project) == 4


def test_rolled_back_send_gives_its_number_back(member, project):
    with pytest.raises(RuntimeError), transaction.atomic():
        actions.do_send_message(member, project.pk, "lost")
        raise RuntimeError("the surrounding work failed")
    assert project_seq(project) == 0
    assert not Message.objects.exists()
    message, _ = actions.do_send_message(member, project.pk, "kept")
    assert message.seq == 1  # no gap


# --- idempotent send --------------------------------------------------------------


def test_repeated_client_msg_id_creates_nothing(member, project):
    key = uuid.uuid4()
    first, created = actions.do_send_message(member, project.pk, "one", key)
    again, created_again = actions.do_send_message(member, project.pk, "two", key)
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk
    assert again.content == "one"
    assert Message.objects.count() == 1
    assert project_seq(project) == 1


def test_client_msg_id_is_scoped_to_its_author(owner, member, project):
    key = uuid.uuid4()
    actions.do_send_message(member, project.pk, "mine", key)
    _, created = actions.do_send_message(owner, project.pk, "theirs", key)
    assert created is True
    assert Message.objects.count() == 2


def test_client_msg_id_reused_in_another_project_is_a_conflict(owner, member, project):
    other = do_create_project(member, name="Other")
    key = uuid.uuid4()
    actions.do_send_message(member, project.pk, "here", key)
    with pytest.raises(Conflict):
        actions.do_send_message(member, other.pk, "there", key)
    assert project_seq(other) == 0


def test_check_send_message_accepts_client_msg_id_as_text(member, project):
    key = uuid.uuid4()
    message, created = actions.check_send_message(member, project.pk, "hi", str(key))
    assert created and message.client_msg_id == key
    again, created = actions.check_send_message(
        member, project.pk, "hi", str(key).upper()
    )
    assert (again.pk, created) == (message.pk, False)


# --- validation ---------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "   ", "\n\t", None, 5])
def test_validate_content_rejects_empty_or_non_text(content):
    with pytest.raises(Invalid):
        actions.validate_content(content)


def test_validate_content_strips_and_enforces_the_limit(settings):
    settings.MESSAGE_MAX_LENGTH = 5
    assert actions.validate_content("  abcde \n") == "abcde"
    with pytest.raises(Invalid) as excinfo:
        actions.validate_content("abcdef")
    assert excinfo.value.fields == {"content": "too_long"}


def test_validate_content_rejects_nul_characters():
    with pytest.raises(Invalid):
        actions.validate_content("a\x00b")


@pytest.mark.parametrize("value", ["nope", "1234", 12])
def test_validate_client_msg_id_rejects_non_uuids(value):
    with pytest.raises(Invalid):
        actions.validate_client_msg_id(value)


def test_check_send_message_by_non_member_is_forbidden(project, outsider):
    with pytest.raises(Forbidden):
        actions.check_send_message(outsider, project.pk, "hi")
    assert not Message.objects.exists()


def test_check_send_message_to_missing_project_is_not_found(member):
    with pytest.raises(NotFound):
        actions.check_send_message(member, 999999, "hi")


def test_check_send_message_validates_before_taking_a_number(member, project):
    with pytest.raises(Invalid):
        actions.check_send_message(member, project.pk, "   ")
    assert project_seq(project) == 0


# --- publish after commit -----------------------------------------------------------


def test_send_publishes_only_after_commit(
    member, project, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        message, _ = actions.do_send_message(member, project.pk, "hi")
    assert published == []  # nothing before commit
    assert len(callbacks) == 2  # retire cached reads, then broadcast
    for callback in callbacks:
        callback()
    assert len(published) == 1
    project_id, event = published[0]
    assert project_id == project.pk
    assert event["kind"] == "change"
    assert event["message"]["id"] == message.pk
    assert event["message"]["seq"] == 1


def test_rolled_back_send_publishes_nothing(
    member, project, published, django_capture_on_commit_callbacks
):
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        actions.do_send_message(member, project.pk, "lost")
        raise RuntimeError
    assert callbacks == []
    assert published == []


def test_repeated_client_msg_id_publishes_nothing_new(
    member, project, published, django_capture_on_commit_callbacks
):
    key = uuid.uuid4()
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_send_message(member, project.pk, "one", key)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        actions.do_send_message(member, project.pk, "one", key)
    assert callbacks == []
    assert len(published) == 1


def test_edit_and_delete_publish_their_change(
    member, project, published, django_capture_on_commit_callbacks
):
    message, _ = actions.do_send_message(member, project.pk, "hi")
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_edit_message(message, "edited")
        actions.do_delete_message(message)
    changes = [event["message"] for _, event in published]
    assert [(c["changed_seq"], c["content"], c["deleted"]) for c in changes] == [
        (2, "edited", False),
        (3, "", True),
    ]


@pytest.mark.django_db(transaction=True)
def test_send_touches_the_cache_only_after_commit(owner, project, monkeypatch):
    # The send's transaction holds the project's row lock (take_next_seq): a cache
    # call in it would make every sender of the project wait out Redis latency.
    from django.db import connection

    calls = []
    monkeypatch.setattr(actions, "bump_version",
                        lambda scope, ident: calls.append((scope, connection.in_atomic_block)))
    actions.do_send_message(owner, project.pk, "after commit")
    assert calls == [("project", False)]
