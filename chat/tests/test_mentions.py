"""Mentions: `@username` and `@all` recorded with a message, listed, counted, shown."""

import re

import pytest
from django.utils import timezone

from chat import actions
from chat.mentions import find_mentions
from chat.models import Mention, Message
from chatsite.errors import Invalid
from conftest import login_client
from projects.actions import do_create_project, do_join_project, do_mark_read
from projects.models import Project


def mentioned(message):
    return set(
        Mention.objects.filter(message=message).values_list("user__username", flat=True)
    )


def send(user, project, content):
    return actions.do_send_message(user, project.pk, content)[0]


# --- finding mentions in text ----------------------------------------------------------


@pytest.mark.parametrize(
    "content, names, everyone",
    [
        ("hi @bob", ["bob"], False),
        ("thanks @bob.", ["bob"], False),
        ("@bob, @carol: and @bob again", ["bob", "carol"], False),
        ("@first.last-name_2 ok", ["first.last-name_2"], False),
        ("mail bob@example.com", [], False),
        ("@@bob", [], False),
        ("(@zoë)", ["zoë"], False),
        ("@all please read", [], True),
        ("@all and @bob", ["bob"], True),
        ("no mention @ here", [], False),
    ],
)
def test_find_mentions(content, names, everyone):
    assert find_mentions(content) == (names, everyone)


# --- recording them ------------------------------------------------------------------------


def test_send_records_mentions_of_members_only(owner, member, outsider, project):
    message = send(owner, project, "@member and @outsider and @nobody and @owner look")
    # outsider is not in the project, nobody does not exist, owner is the author.
    assert mentioned(message) == {"member"}
    mention = Mention.objects.get(message=message)
    assert (mention.project_id, mention.seq) == (project.pk, message.seq)


def test_all_mentions_every_member_but_the_author(owner, member, make_user, project):
    others = [make_user(f"m{i}") for i in range(3)]
    for user in others:
        do_join_project(user, project.pk)
    message = send(member, project, "@all standup in 5")
    assert mentioned(message) == {"owner", "m0", "m1", "m2"}


def test_all_in_a_too_large_project_is_refused_and_takes_no_number(
    owner, member, make_user, project, monkeypatch
):
    monkeypatch.setattr(actions, "MENTION_ALL_MAX_MEMBERS", 2)
    for i in range(2):
        do_join_project(make_user(f"m{i}"), project.pk)
    with pytest.raises(Invalid) as error:
        send(member, project, "@all hello")
    assert error.value.fields == {"content": "mention_all_too_many"}
    assert Message.objects.count() == 0
    assert Mention.objects.count() == 0
    assert Project.objects.get(pk=project.pk).seq == 0  # the number was given back


def test_all_is_one_bulk_insert(owner, member, make_user, project, django_assert_num_queries):
    for i in range(30):
        do_join_project(make_user(f"m{i}"), project.pk)
    # SAVEPOINT, UPDATE ... RETURNING seq, INSERT the message, SELECT the
    # members, one INSERT of 31 mentions, RELEASE SAVEPOINT.
    with django_assert_num_queries(6):
        message = send(member, project, "@all release at noon")
    assert Mention.objects.filter(message=message).count() == 31


def test_edit_adds_and_removes_mentions_and_keeps_the_others(
    owner, member, make_user, project
):
    carol = make_user("carol")
    do_join_project(carol, project.pk)
    message = send(owner, project, "@member please look")
    kept = Mention.objects.get(message=message, user=member)

    actions.do_edit_message(message, "@member and @carol please look")
    assert mentioned(message) == {"member", "carol"}
    again = Mention.objects.get(message=message, user=member)
    assert (again.pk, again.created_at) == (kept.pk, kept.created_at)

    actions.do_edit_message(message, "@carol only")
    assert mentioned(message) == {"carol"}
    actions.do_edit_message(message, "nobody now")
    assert mentioned(message) == set()


def test_edit_without_any_at_sign_spends_no_query_on_mentions(
    owner, project, django_assert_num_queries
):
    message = send(owner, project, "plain")
    # SAVEPOINT, UPDATE ... RETURNING seq, SELECT the message again under the
    # project row lock, UPDATE the message, RELEASE SAVEPOINT.
    with django_assert_num_queries(5):
        actions.do_edit_message(message, "still plain")


def test_delete_removes_the_messages_mentions(owner, member, project):
    message = send(owner, project, "@member secret plan")
    actions.do_delete_message(message)
    assert Mention.objects.count() == 0


# --- GET /api/mentions ------------------------------------------------------------------


def test_my_mentions_are_newest_first_with_project_name(owner, member, project):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    first = send(owner, project, "@member one")
    send(owner, project, "@owner not me")
    second = send(owner, other, "@member two")
    body = login_client(member).get("/api/mentions").json()
    assert [m["id"] for m in body["items"]] == [second.pk, first.pk]
    assert [m["project_name"] for m in body["items"]] == ["Other", "General"]
    item = body["items"][0]
    assert item["content"] == "@member two"
    assert item["user"] == {"id": owner.pk, "username": "owner"}
    assert {"mention_id", "seq", "project_id", "created_at", "deleted"} <= set(item)
    assert (body["has_more"], body["next_cursor"]) == (False, None)


def test_my_mentions_page_back_with_a_cursor(owner, member, project):
    messages = [send(owner, project, f"@member number {i}") for i in range(7)]
    # Same time for all: the cursor must still page by (created_at, id).
    Mention.objects.update(created_at=timezone.now())
    client = login_client(member)
    seen, cursor = [], None
    while True:
        query = "/api/mentions?limit=3" + (f"&before={cursor}" if cursor else "")
        body = client.get(query).json()
        seen += [m["id"] for m in body["items"]]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            break
    assert seen == [m.pk for m in reversed(messages)]


def test_my_mentions_skip_deleted_messages_and_projects_i_left(
    owner, member, project
):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    kept = send(owner, project, "@member kept")
    gone = send(owner, project, "@member gone")
    send(owner, other, "@member elsewhere")
    # A deleted message is skipped even if a mention row were left behind.
    Message.objects.filter(pk=gone.pk).update(deleted_at=timezone.now())
    login_client(member).post(f"/api/projects/{other.pk}/leave")
    body = login_client(member).get("/api/mentions").json()
    assert [m["id"] for m in body["items"]] == [kept.pk]


def test_my_mentions_are_mine_only(owner, member, outsider, project):
    send(owner, project, "@member hi")
    assert login_client(outsider).get("/api/mentions").json()["items"] == []
    assert login_client(owner).get("/api/mentions").json()["items"] == []


def test_my_mentions_reject_a_bad_cursor(member):
    response = login_client(member).get("/api/mentions?before=abc")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_my_mentions_need_a_sign_in(client, db):
    assert client.get("/api/mentions").status_code == 401


@pytest.mark.parametrize("n_mentions", [3, 40])
def test_my_mentions_are_one_query(
    n_mentions, owner, member, project, django_assert_num_queries
):
    for i in range(n_mentions):
        send(owner, project, f"@member {i}")
    client = login_client(member)
    # auth (cached); one SELECT of the mentions with message, author and
    # project joined and my projects as a subquery -- nothing per mention.
    with django_assert_num_queries(1):
        body = client.get("/api/mentions?limit=100").json()
    assert len(body["items"]) == n_mentions


# --- counts in the project list and on the home page --------------------------------------


def project_item(client, project):
    body = client.get("/api/projects").json()
    return next(item for item in body["items"] if item["id"] == project.pk)


def test_mention_count_is_unread_mentions_in_live_messages(
        owner, member, project, django_capture_on_commit_callbacks):
    # Each write's on-commit work (the cache version bump) runs as after a commit.
    def committed(fn, *args):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args)

    client = login_client(member)
    assert project_item(client, project)["mention_count"] == 0
    committed(send, owner, project, "@member one")
    committed(send, owner, project, "@all two")
    deleted = committed(send, owner, project, "@member three")
    committed(send, owner, project, "no mention")
    assert project_item(client, project)["mention_count"] == 3
    committed(actions.do_delete_message, deleted)
    assert project_item(client, project)["mention_count"] == 2
    committed(do_mark_read, member, project.pk, Project.objects.get(pk=project.pk).seq)
    assert project_item(client, project)["mention_count"] == 0
    committed(send, owner, project, "@member again")
    assert project_item(client, project)["mention_count"] == 1


def test_mention_count_follows_an_edit(owner, member, project,
                                       django_capture_on_commit_callbacks):
    client = login_client(member)
    message = send(owner, project, "hello")
    assert project_item(client, project)["mention_count"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        actions.do_edit_message(message, "hello @member")
    assert project_item(client, project)["mention_count"] == 1


def test_home_shows_the_mention_count_next_to_unread(client_member, owner, project):
    send(owner, project, "@member look")
    send(owner, project, "@all and look")
    send(owner, project, "plain")
    # The home page's own list (the sidebar before it lists the project too).
    text = client_member.get("/").text.split('id="main"', 1)[1]
    item = text.split(f'data-project-id="{project.pk}"', 1)[1].split("</li>", 1)[0]
    assert "3 unread" in item
    assert re.search(r'class="mention-count" data-mentions="2"[^>]*>2 mentions<', item)


# --- the project page ------------------------------------------------------------------------


def test_page_highlights_mentions_of_the_reader_escaped(
    client_member, owner, member, project
):
    send(owner, project, "<b>@member</b> and @owner & @all")
    send(owner, project, "nothing for you, @owner")
    text = client_member.get(f"/projects/{project.pk}/").text
    # The mention spans of content_html, the reader's and @all marked mention-me.
    assert (
        f'<div class="msg-body"><p>&lt;b&gt;<span class="mention mention-me" '
        f'data-user-id="{member.pk}">@member</span>&lt;/b&gt; and '
        f'<span class="mention" data-user-id="{owner.pk}">@owner</span> &amp; '
        '<span class="mention mention-me" data-user-id="all">@all</span></p>'
    ) in text
    assert "<b>@member" not in text
    assert text.count("msg-mentions-me") == 1
    assert (
        '<div class="msg-body"><p>nothing for you, '
        f'<span class="mention" data-user-id="{owner.pk}">@owner</span></p></div>'
    ) in text


def test_page_does_not_highlight_my_own_mentions(client_owner, owner, member, project):
    send(owner, project, "@all @owner note to self")
    text = client_owner.get(f"/projects/{project.pk}/").text
    assert "mention-me" not in text


def test_page_state_carries_the_member_count(client_member, project):
    response = client_member.get(f"/projects/{project.pk}/")
    assert response.context["chat_state"]["memberCount"] == 2
