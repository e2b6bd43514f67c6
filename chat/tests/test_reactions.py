"""Reactions (docs/API.md "Reactions"): validation, numbering, summary, access,
delivery, and that history reads cost no more with them."""

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from chat import reactions
from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.models import Message, Reaction
from chat.selectors import get_message
from chatsite.errors import Invalid, NotFound
from conftest import assert_error, auth_queries, login_client
from projects.actions import do_create_project, do_join_project
from projects.models import Project

pytestmark = pytest.mark.django_db


def react(client, message_id, emoji):
    return client.post(f"/api/messages/{message_id}/reactions", {"emoji": emoji},
                       content_type="application/json")


def unreact(client, message_id, emoji=None):
    query = "" if emoji is None else "?" + _query(emoji)
    return client.delete(f"/api/messages/{message_id}/reactions{query}")


def _query(emoji):
    from urllib.parse import urlencode

    return urlencode({"emoji": emoji})


def project_seq(project):
    return Project.objects.get(pk=project.pk).seq


def add(user, message, emoji):
    """Add through the action on a fresh read of the message, as a request does."""
    return reactions.do_add_reaction(user, get_message(message.pk), emoji)


@pytest.fixture
def message(owner, project):
    return do_send_message(owner, project.pk, "react to me")[0]


# --- what an emoji is ------------------------------------------------------------------

VALID = ["👍", "❤️", "👍🏽", "👨‍👩‍👧", "🇫🇷", "1️⃣", ":tada:", ":+1:",
         "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "#️⃣", "☺", "🏽", ":a_b-c+1:", ":" + "x" * 32 + ":"]
FAMILY_WITH_SKIN_TONES = "👨🏻‍👩🏻‍👧🏻‍👦🏻"  # one grapheme cluster of 41 bytes
INVALID = ["", "a", "ab", "1", "#", "👍👍", " 👍", "👍 ", "👍\n", "<b>", ":Tada:",
           ":x y:", "::", ":tada", "tada:", ":" + "x" * 33 + ":", FAMILY_WITH_SKIN_TONES,
           "\u200d", "\ufe0f", "🇫", "x\u20e3", "👍\u0301", "e\u0301", "\x00",
           ":tada:\n", "\ud83d"]


@pytest.mark.parametrize("value", VALID, ids=[ascii(v) for v in VALID])
def test_valid_emoji_is_returned_unchanged(value):
    assert reactions.validate_emoji(value) == value


@pytest.mark.parametrize("value", INVALID, ids=[ascii(v) for v in INVALID])
def test_invalid_emoji_is_refused(value):
    with pytest.raises(Invalid) as caught:
        reactions.validate_emoji(value)
    assert caught.value.fields == {"emoji": "not_emoji"}


def test_the_over_long_cluster_is_one_cluster_refused_for_its_bytes():
    assert len(FAMILY_WITH_SKIN_TONES.encode()) > 32
    assert len(reactions.GRAPHEME.findall(FAMILY_WITH_SKIN_TONES)) == 1
    assert reactions.EMOJI.fullmatch(FAMILY_WITH_SKIN_TONES)


@pytest.mark.parametrize("value", [None, 1, 1.5, True, ["👍"], {"e": "👍"}])
def test_non_text_emoji_is_refused(value):
    with pytest.raises(Invalid) as caught:
        reactions.validate_emoji(value)
    assert caught.value.fields == {"emoji": "type"}


# --- the API -----------------------------------------------------------------------------


def test_add_answers_201_with_the_message_then_200_unchanged(
    member, project, message, client_member
):
    response = react(client_member, message.pk, "👍")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"] == message.pk
    assert body["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [member.pk]}]
    assert body["changed_seq"] == 2 == project_seq(project)

    again = react(client_member, message.pk, "👍")
    assert again.status_code == 200
    assert again.json()["reactions"] == body["reactions"]
    assert again.json()["changed_seq"] == 2
    assert project_seq(project) == 2  # no number taken
    assert Reaction.objects.filter(message=message).count() == 1


def test_remove_answers_204_also_when_absent_and_takes_no_number_then(
    member, project, message, client_member
):
    react(client_member, message.pk, ":tada:")
    assert project_seq(project) == 2
    response = unreact(client_member, message.pk, ":tada:")
    assert response.status_code == 204 and response.content == b""
    assert project_seq(project) == 3
    row = Message.objects.get(pk=message.pk)
    assert (row.reaction_summary, row.changed_seq) == ([], 3)
    assert not Reaction.objects.exists()

    assert unreact(client_member, message.pk, ":tada:").status_code == 204
    assert project_seq(project) == 3


@pytest.mark.parametrize("emoji", ["", "ab", " 👍", "<b>", ":Tada:"])
def test_api_refuses_a_bad_emoji_with_422_both_ways(project, message, client_member, emoji):
    error = assert_error(react(client_member, message.pk, emoji), 422, "invalid")
    assert error["fields"] == {"emoji": "not_emoji"}
    error = assert_error(unreact(client_member, message.pk, emoji), 422, "invalid")
    assert error["fields"] == {"emoji": "not_emoji"}
    assert project_seq(project) == 1


@pytest.mark.parametrize("body", [{"emoji": 5}, {"emoji": None}, {"emoji": ["👍"]}, {}])
def test_api_refuses_a_body_without_text_emoji_with_422(message, client_member, body):
    response = client_member.post(f"/api/messages/{message.pk}/reactions", body,
                                  content_type="application/json")
    assert "emoji" in assert_error(response, 422, "invalid")["fields"]


def test_remove_without_emoji_is_400(message, client_member):
    error = assert_error(unreact(client_member, message.pk), 400, "bad_request")
    assert error["fields"] == {"emoji": "required"}


def test_a_21st_distinct_emoji_is_refused_and_gives_its_number_back(
    owner, member, project, message, client_member
):
    emoji = [f":e{i}:" for i in range(20)]
    for value in emoji:
        add(owner, message, value)
    assert project_seq(project) == 21

    error = assert_error(react(client_member, message.pk, ":one-more:"), 422,
                         "too_many_reactions")
    assert error["fields"] == {"emoji": "too_many_reactions"}
    assert project_seq(project) == 21
    # One of the twenty is still welcome from someone else.
    response = react(client_member, message.pk, ":e7:")
    assert response.status_code == 201
    assert [r["emoji"] for r in response.json()["reactions"]] == emoji
    assert response.json()["reactions"][7]["user_ids"] == [owner.pk, member.pk]


def test_missing_message_is_404(client_member):
    assert_error(react(client_member, 999999, "👍"), 404, "not_found")
    assert_error(unreact(client_member, 999999, "👍"), 404, "not_found")


def test_public_non_member_is_403_and_private_non_member_404(
    owner, outsider, project, message, client_outsider
):
    assert_error(react(client_outsider, message.pk, "👍"), 403, "not_member")
    assert_error(unreact(client_outsider, message.pk, "👍"), 403, "not_member")
    private = do_create_project(owner, name="Secret", is_private=True)
    hidden = do_send_message(owner, private.pk, "psst")[0]
    assert_error(react(client_outsider, hidden.pk, "👍"), 404, "not_found")
    assert_error(unreact(client_outsider, hidden.pk, "👍"), 404, "not_found")
    assert not Reaction.objects.exists()
    assert project_seq(project) == 1


def test_deleted_message_is_404_and_a_copy_deleted_under_it_too(
    owner, member, project, message, client_member
):
    stale = get_message(message.pk)
    do_delete_message(get_message(message.pk))
    assert_error(react(client_member, message.pk, "👍"), 404, "not_found")
    assert_error(unreact(client_member, message.pk, "👍"), 404, "not_found")
    with pytest.raises(NotFound):
        reactions.do_add_reaction(member, stale, "👍")
    assert project_seq(project) == 2  # the delete's number only
    assert not Reaction.objects.exists()


def test_delete_removes_the_rows_and_empties_the_summary(
    owner, member, project, message, client_owner
):
    add(owner, message, "👍")
    add(member, message, "🎉")
    assert client_owner.delete(f"/api/messages/{message.pk}").status_code == 204
    row = Message.objects.get(pk=message.pk)
    assert row.reaction_summary == [] and row.deleted_at is not None
    assert not Reaction.objects.filter(message=message).exists()
    item = client_owner.get(f"/api/projects/{project.pk}/messages?after=0").json()["items"][0]
    assert (item["deleted"], item["reactions"]) == (True, [])


# --- the summary -------------------------------------------------------------------------


def test_summary_is_in_order_of_first_use_with_counts(owner, member, make_user, project,
                                                      message):
    third = make_user("third")
    do_join_project(third, project.pk)
    add(owner, message, "🎉")
    add(member, message, "👍")
    add(third, message, "👍")
    add(member, message, "🎉")
    row = Message.objects.get(pk=message.pk)
    assert row.reaction_summary == [
        {"emoji": "🎉", "count": 2, "user_ids": [owner.pk, member.pk]},
        {"emoji": "👍", "count": 2, "user_ids": [member.pk, third.pk]},
    ]
    # The order follows the earliest reaction still there.
    reactions.do_remove_reaction(owner, get_message(message.pk), "🎉")
    assert Message.objects.get(pk=message.pk).reaction_summary == [
        {"emoji": "👍", "count": 2, "user_ids": [member.pk, third.pk]},
        {"emoji": "🎉", "count": 1, "user_ids": [member.pk]},
    ]


def test_summary_lists_the_first_fifty_users_and_counts_all(
    owner, make_user, project, message
):
    users = []
    for i in range(55):
        user = make_user(f"fan{i}")
        do_join_project(user, project.pk)
        users.append(user)
        add(user, message, "❤️")
    add(owner, message, "👍")
    summary = Message.objects.get(pk=message.pk).reaction_summary
    assert summary[0] == {"emoji": "❤️", "count": 55, "user_ids": [u.pk for u in users[:50]]}
    assert summary[1] == {"emoji": "👍", "count": 1, "user_ids": [owner.pk]}
    # The 51st moves up when one of the first fifty leaves.
    reactions.do_remove_reaction(users[0], get_message(message.pk), "❤️")
    summary = Message.objects.get(pk=message.pk).reaction_summary
    assert summary[0]["count"] == 54
    assert summary[0]["user_ids"] == [u.pk for u in users[1:51]]


# --- numbering and delivery -----------------------------------------------------------


def test_a_reaction_takes_the_next_number_and_reaches_after_readers(
    owner, member, project, client_member, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first, second = (do_send_message(owner, project.pk, f"m{i}")[0] for i in range(2))
    with django_capture_on_commit_callbacks(execute=True):
        response = react(client_member, first.pk, "👍")
    assert response.json()["changed_seq"] == 3 == project_seq(project)

    items = client_member.get(f"/api/projects/{project.pk}/messages?after=2").json()["items"]
    assert [(m["id"], m["changed_seq"]) for m in items] == [(first.pk, 3)]
    assert items[0]["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [member.pk]}]
    # The cached first page was rebuilt after the commit and shows it too.
    page = client_member.get(f"/api/projects/{project.pk}/messages").json()["items"]
    assert page[1]["reactions"] == items[0]["reactions"]
    # And the page-numbered history.
    page = client_member.get(f"/api/messages?project_id={project.pk}").json()["items"]
    assert page[1]["reactions"] == items[0]["reactions"]


def test_a_change_is_published_after_commit_and_a_no_op_publishes_nothing(
    member, project, message, published, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        add(member, message, "👍")
    assert published == []  # nothing before commit
    for callback in callbacks:
        callback()
    assert len(published) == 1
    project_id, event = published[0]
    assert project_id == project.pk and event["kind"] == "change"
    assert event["message"]["changed_seq"] == 2
    assert event["message"]["reactions"] == [
        {"emoji": "👍", "count": 1, "user_ids": [member.pk]}
    ]

    published.clear()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert add(member, message, "👍") is False
        assert reactions.do_remove_reaction(member, get_message(message.pk), "🎉") is False
    assert (callbacks, published) == ([], [])


def test_an_edit_of_a_copy_read_before_a_reaction_broadcasts_the_reaction(
    owner, member, project, message, published, django_capture_on_commit_callbacks
):
    stale = get_message(message.pk)
    add(member, message, "👍")
    with django_capture_on_commit_callbacks(execute=True):
        do_edit_message(stale, "edited")
    _, event = published[-1]
    assert event["message"]["content"] == "edited"
    assert event["message"]["reactions"] == [
        {"emoji": "👍", "count": 1, "user_ids": [member.pk]}
    ]


# --- the send limit -------------------------------------------------------------------------


@override_settings(SEND_RATE_PER_USER=2, SEND_RATE_WINDOW_SECONDS=60)
def test_reactions_count_against_the_send_limit_and_no_ops_give_it_back(
    project, message, client_member
):
    assert react(client_member, message.pk, "👍").status_code == 201
    assert react(client_member, message.pk, "👍").status_code == 200  # gives its count back
    assert unreact(client_member, message.pk, "🎉").status_code == 204  # likewise
    assert unreact(client_member, message.pk, "👍").status_code == 204
    response = react(client_member, message.pk, "🎉")
    assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1
    assert project_seq(project) == 3
    assert not Reaction.objects.exists()


# --- reads cost the same with reactions ---------------------------------------------------


@pytest.fixture
def fifty_messages(owner, member, project):
    return [do_send_message(owner, project.pk, f"m{i}")[0] for i in range(50)]


def react_to_all(messages, users):
    for message in messages:
        for i, user in enumerate(users):
            add(user, message, ["👍", "🎉", ":tada:"][i % 3])


def count_queries(client, url):
    from django.core.cache import cache

    cache.clear()
    client.get("/api/auth/me")  # session and user back in the cache: a cache miss of the page
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries), response


READS = {
    # the membership check with its project joined; the page with authors joined
    "cursor": ("/api/projects/{}/messages", 2),
    "cursor_before": ("/api/projects/{}/messages?before=1000", 2),
    "cursor_after": ("/api/projects/{}/messages?after=0", 2),
    # the membership check, COUNT for `total`, the page with authors joined
    "page_numbered": ("/api/messages?project_id={}", 3),
}


@pytest.mark.parametrize("read", list(READS))
def test_a_page_of_fifty_messages_with_reactions_is_a_fixed_number_of_queries(
    owner, member, project, fifty_messages, client_member, read
):
    url, expected = READS[read]
    url = url.format(project.pk)
    without, _ = count_queries(client_member, url)
    react_to_all(fifty_messages, [owner, member])
    with_reactions, response = count_queries(client_member, url)
    assert without == with_reactions == auth_queries() + expected
    items = response.json()["items"]
    assert len(items) == 50
    assert all(len(item["reactions"]) == 2 for item in items)


def test_the_project_page_costs_the_same_with_reactions(
    owner, member, project, fifty_messages
):
    client = login_client(member)
    url = f"/projects/{project.pk}/"
    client.get(url)  # marks the page read: the counted reads below have nothing to mark
    without, _ = count_queries(client, url)
    react_to_all(fifty_messages, [owner, member])
    client.get(url)
    with_reactions, response = count_queries(client, url)
    assert without == with_reactions


# --- admin --------------------------------------------------------------------------------


def test_admin_lists_reactions_read_only(make_user, member, message):
    add(member, message, "👍")
    staff = login_client(make_user("boss", is_staff=True, is_superuser=True))
    listing = staff.get("/admin/chat/reaction/")
    assert listing.status_code == 200 and "👍" in listing.text
    reaction = Reaction.objects.get()
    assert staff.get(f"/admin/chat/reaction/{reaction.pk}/change/").status_code == 200
    assert staff.get("/admin/chat/reaction/add/").status_code == 403
    assert staff.post(f"/admin/chat/reaction/{reaction.pk}/delete/").status_code == 403
    assert Reaction.objects.count() == 1


# --- the socket ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_reaction_arrives_live_and_in_the_replay(member, owner, project):
    from chat.tests.test_consumers import collect_messages, open_socket, receive_type

    message = await sync_to_async(lambda: do_send_message(owner, project.pk, "hi")[0])()
    comm = await open_socket(member, project.pk)
    await sync_to_async(add)(member, message, "👍")
    frame = await receive_type(comm, "message_batch")
    assert [(m["id"], m["changed_seq"]) for m in frame["messages"]] == [(message.pk, 2)]
    assert frame["messages"][0]["reactions"] == [
        {"emoji": "👍", "count": 1, "user_ids": [member.pk]}
    ]
    await comm.disconnect()

    await sync_to_async(add)(owner, message, "🎉")
    replay = await open_socket(member, project.pk, after=2)
    _, messages = await collect_messages(replay, 1)
    assert [(m["id"], m["changed_seq"]) for m in messages] == [(message.pk, 3)]
    assert [r["emoji"] for r in messages[0]["reactions"]] == ["👍", "🎉"]
    await replay.disconnect()


# --- concurrency (PostgreSQL) --------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_adds_of_one_new_emoji_all_succeed(make_user, owner, project, published):
    from chat.tests.test_postgres import run_concurrently

    message = do_send_message(owner, project.pk, "race")[0]
    users = [make_user(f"racer{i}") for i in range(8)]
    for user in users:
        do_join_project(user, project.pk)

    results, errors = run_concurrently(
        8, lambda i: reactions.do_add_reaction(users[i], get_message(message.pk), "🔥")
    )
    assert errors == [] and results == [True] * 8
    summary = Message.objects.get(pk=message.pk).reaction_summary
    assert summary[0]["count"] == 8 and sorted(summary[0]["user_ids"]) == [u.pk for u in users]
    assert project_seq(project) == 9  # one number each, no gap
    assert Message.objects.get(pk=message.pk).changed_seq == 9


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_adds_by_one_user_make_one_row(member, owner, project, published):
    from chat.tests.test_postgres import run_concurrently

    message = do_send_message(owner, project.pk, "race")[0]
    results, errors = run_concurrently(
        6, lambda i: reactions.do_add_reaction(member, get_message(message.pk), "🔥")
    )
    assert errors == [] and sorted(results) == [False] * 5 + [True]
    assert Reaction.objects.filter(message=message).count() == 1
    assert project_seq(project) == 2  # the five no-ops gave their numbers back
