"""The messages API: history (page-numbered and cursor), send, edit, delete, search."""

import uuid
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from chat.models import Message
from conftest import assert_error, auth_queries, login_client
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project


def post_message(client, project_id, content, client_msg_id=None, **extra):
    data = {"project_id": project_id, "content": content}
    if client_msg_id is not None:
        data["client_msg_id"] = str(client_msg_id)
    return client.post("/api/messages", data, content_type="application/json", **extra)


def patch_message(client, message_id, content):
    return client.patch(
        f"/api/messages/{message_id}",
        {"content": content},
        content_type="application/json",
    )


def send_alternating(owner, member, project, send, n):
    """n messages, authors alternating, so an N+1 on authors would show."""
    for i in range(n):
        send(owner if i % 2 else member, project, 1, prefix=f"m{i}")


MESSAGE_KEYS = {
    "id",
    "project_id",
    "seq",
    "changed_seq",
    "content_html",
    "reactions",
    "attachments",
    "user",
    "content",
    "created_at",
    "edited_at",
    "deleted",
    "client_msg_id",
}


# --- query counts -------------------------------------------------------------


@pytest.mark.parametrize("n_messages", [3, 40])
def test_page_history_query_count_is_constant(
    n_messages, owner, member, project, send, client_member, django_assert_num_queries
):
    send_alternating(owner, member, project, send, n_messages)
    # auth (session + user); the membership check with its project joined; one
    # COUNT for `total`; one SELECT of the page with authors joined.
    with django_assert_num_queries(auth_queries() + 3):
        response = client_member.get(f"/api/messages?project_id={project.pk}")
    assert response.status_code == 200
    assert len(response.json()["items"]) == n_messages


@pytest.mark.parametrize("n_messages", [3, 40])
@pytest.mark.parametrize("cursor", ["", "before=1000", "after=0"])
def test_cursor_history_query_count_is_constant(
    n_messages,
    cursor,
    owner,
    member,
    project,
    send,
    client_member,
    django_assert_num_queries,
):
    send_alternating(owner, member, project, send, n_messages)
    # auth (session + user); the membership check with its project joined; one
    # SELECT of limit + 1 rows (the extra row answers has_more) with authors
    # joined -- except for the first page, which the last send built again
    # after its commit (chat.history_cache.warm_first_page).
    history_queries = 0 if cursor == "" else 1
    with django_assert_num_queries(auth_queries() + 1 + history_queries):
        response = client_member.get(f"/api/projects/{project.pk}/messages?{cursor}")
    assert response.status_code == 200
    assert len(response.json()["items"]) == n_messages


@pytest.mark.parametrize("n_messages", [3, 40])
def test_send_query_count_is_constant(
    n_messages, owner, member, project, send, client_member, django_assert_num_queries
):
    send_alternating(owner, member, project, send, n_messages)
    client_member.get(f"/api/projects/{project.pk}/messages")  # caches the access entry
    # auth (session + user) and the membership check come from the cache;
    # SAVEPOINT, UPDATE ... RETURNING seq, INSERT, RELEASE SAVEPOINT. The
    # savepoint pair is the test's wrapping transaction; in production these
    # are BEGIN/COMMIT, which Django does not count as queries.
    with django_assert_num_queries(auth_queries() + 4):
        response = post_message(client_member, project.pk, "hi")
    assert response.status_code == 201
    assert response.json()["seq"] == n_messages + 1


@pytest.mark.parametrize("n_members", [2, 40])
def test_send_with_mentions_query_count_is_constant(
    n_members, owner, member, make_user, project, client_member, django_assert_num_queries
):
    for i in range(n_members - 2):
        do_join_project(make_user(f"extra{i}"), project.pk)
    # As a plain send, plus one SELECT of the mentioned members (usernames
    # joined) and one bulk INSERT of their mentions -- not one per member.
    with django_assert_num_queries(auth_queries() + 7):
        response = post_message(client_member, project.pk, "@owner and @all: hi")
    assert response.status_code == 201
    assert response.json()["content"] == "@owner and @all: hi"


@pytest.mark.parametrize("n_messages", [3, 40])
def test_send_with_client_msg_id_query_count_is_constant(
    n_messages, owner, member, project, send, client_member, django_assert_num_queries
):
    send_alternating(owner, member, project, send, n_messages)
    client_member.get(f"/api/projects/{project.pk}/messages")  # caches the access entry
    # As a plain send: a first client_msg_id costs no lookup (the unique
    # (author, client_msg_id) constraint catches a repeat).
    with django_assert_num_queries(auth_queries() + 4):
        response = post_message(client_member, project.pk, "hi", uuid.uuid4())
    assert response.status_code == 201


def test_repeated_send_rolls_back_and_answers_the_first_row(
    project, client_member, django_assert_num_queries
):
    key = uuid.uuid4()
    first = post_message(client_member, project.pk, "hi", key)
    # auth (session + user) and the membership check from the cache; SAVEPOINT,
    # UPDATE ... RETURNING seq, the INSERT the unique constraint refuses,
    # ROLLBACK TO and RELEASE SAVEPOINT (the number is given back), then the
    # lookup of (author, client_msg_id) with its author joined.
    with django_assert_num_queries(auth_queries() + 6):
        response = post_message(client_member, project.pk, "hi", key)
    assert response.status_code == 200
    assert response.json()["id"] == first.json()["id"]
    assert Project.objects.get(pk=project.pk).seq == first.json()["seq"]  # no gap


# --- page-numbered history ------------------------------------------------------


def test_page_history_is_newest_first_in_the_guides_shape(
    owner, project, send, client_member
):
    send(owner, project, 5)
    body = client_member.get(f"/api/messages?project_id={project.pk}&per_page=2").json()
    assert set(body) == {"items", "total", "page", "per_page", "has_next", "has_prev"}
    assert [m["seq"] for m in body["items"]] == [5, 4]
    assert (body["total"], body["page"], body["per_page"]) == (5, 1, 2)
    assert (body["has_next"], body["has_prev"]) == (True, False)
    last = client_member.get(
        f"/api/messages?project_id={project.pk}&per_page=2&page=3"
    ).json()
    assert [m["seq"] for m in last["items"]] == [1]
    assert (last["has_next"], last["has_prev"]) == (False, True)


def test_message_json_has_the_specified_fields(owner, project, send, client_member):
    (message,) = send(owner, project, 1)
    item = client_member.get(f"/api/messages?project_id={project.pk}").json()["items"][
        0
    ]
    assert set(item) == MESSAGE_KEYS
    assert item["id"] == message.pk
    assert item["project_id"] == project.pk
    assert item["user"] == {"id": owner.pk, "username": "owner"}
    assert item["content"] == "hello 0"
    assert item["deleted"] is False
    assert item["edited_at"] is None
    assert item["client_msg_id"] is None
    # ISO 8601 in UTC
    created = item["created_at"]
    assert created.endswith(("Z", "+00:00"))
    assert datetime.fromisoformat(created) == message.created_at


def test_page_history_per_page_is_clamped_to_100(owner, project, send, client_member):
    send(owner, project, 105)
    body = client_member.get(
        f"/api/messages?project_id={project.pk}&per_page=500"
    ).json()
    assert body["per_page"] == 100
    assert len(body["items"]) == 100
    assert body["total"] == 105
    assert body["has_next"] is True


def test_page_history_per_page_defaults_to_50(owner, project, send, client_member):
    send(owner, project, 55)
    body = client_member.get(f"/api/messages?project_id={project.pk}").json()
    assert body["per_page"] == 50
    assert len(body["items"]) == 50


@pytest.mark.parametrize(
    "query, field",
    [
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=-1", "page"),
        ("per_page=-1", "per_page"),
        ("per_page=0", "per_page"),
        ("per_page=x", "per_page"),
    ],
)
def test_page_history_bad_page_parameters_are_400(project, client_member, query, field):
    response = client_member.get(f"/api/messages?project_id={project.pk}&{query}")
    error = assert_error(response, 400, "bad_request")
    assert field in error["fields"]


# Without project_id (or with it empty) the answer is the caller's messages across
# all their projects: chat/tests/test_all_messages.py.
@pytest.mark.parametrize("query", ["project_id=abc", "project_id=0", "project_id=-3"])
def test_page_history_with_an_invalid_project_id_is_400(client_member, query):
    error = assert_error(
        client_member.get(f"/api/messages?{query}"), 400, "bad_request"
    )
    assert "project_id" in error["fields"]


def test_page_history_by_non_member_is_403(project, client_outsider):
    response = client_outsider.get(f"/api/messages?project_id={project.pk}")
    assert_error(response, 403, "not_member")


def test_page_history_of_unknown_project_is_404(client_member):
    assert_error(client_member.get("/api/messages?project_id=999999"), 404, "not_found")


def test_history_without_session_is_401(project):
    assert_error(Client().get(f"/api/messages?project_id={project.pk}"), 401)
    assert_error(Client().get(f"/api/projects/{project.pk}/messages"), 401)


# --- cursor history ---------------------------------------------------------------


def test_cursor_before_pages_back_newest_first(owner, project, send, client_member):
    send(owner, project, 7)
    url = f"/api/projects/{project.pk}/messages"
    first = client_member.get(f"{url}?limit=3").json()
    assert set(first) == {"items", "has_more", "next_cursor"}
    assert [m["seq"] for m in first["items"]] == [7, 6, 5]
    assert (first["has_more"], first["next_cursor"]) == (True, 5)
    second = client_member.get(f"{url}?limit=3&before={first['next_cursor']}").json()
    assert [m["seq"] for m in second["items"]] == [4, 3, 2]
    assert (second["has_more"], second["next_cursor"]) == (True, 2)
    last = client_member.get(f"{url}?limit=3&before={second['next_cursor']}").json()
    assert [m["seq"] for m in last["items"]] == [1]
    assert (last["has_more"], last["next_cursor"]) == (False, None)


def test_cursor_page_that_exactly_fits_has_no_more(owner, project, send, client_member):
    send(owner, project, 3)
    body = client_member.get(f"/api/projects/{project.pk}/messages?limit=3").json()
    assert len(body["items"]) == 3
    assert (body["has_more"], body["next_cursor"]) == (False, None)


def test_cursor_after_returns_changes_oldest_first_with_edits_and_deletes(
    owner, member, project, send, client_member
):
    _, m2, m3, _, m5 = send(member, project, 5)
    assert patch_message(client_member, m2.pk, "second, edited").status_code == 200
    assert client_member.delete(f"/api/messages/{m3.pk}").status_code == 204
    body = client_member.get(f"/api/projects/{project.pk}/messages?after=4").json()
    items = body["items"]
    # m5 was created at 5, m2 edited at 6, m3 deleted at 7.
    assert [(m["id"], m["changed_seq"]) for m in items] == [
        (m5.pk, 5),
        (m2.pk, 6),
        (m3.pk, 7),
    ]
    assert [m["seq"] for m in items] == [5, 2, 3]  # each keeps its place in history
    edited, deleted = items[1], items[2]
    assert edited["content"] == "second, edited"
    assert edited["edited_at"] is not None
    assert (deleted["content"], deleted["deleted"]) == ("", True)
    assert (body["has_more"], body["next_cursor"]) == (False, None)


def test_cursor_after_pages_forward_by_changed_seq(owner, project, send, client_member):
    send(owner, project, 5)
    url = f"/api/projects/{project.pk}/messages"
    first = client_member.get(f"{url}?after=0&limit=2").json()
    assert [m["changed_seq"] for m in first["items"]] == [1, 2]
    assert (first["has_more"], first["next_cursor"]) == (True, 2)
    rest = client_member.get(f"{url}?after={first['next_cursor']}&limit=10").json()
    assert [m["changed_seq"] for m in rest["items"]] == [3, 4, 5]
    assert rest["has_more"] is False
    caught_up = client_member.get(f"{url}?after=5").json()
    assert caught_up == {"items": [], "has_more": False, "next_cursor": None}


def test_cursor_limit_is_clamped_to_200(owner, project, send, client_member):
    send(owner, project, 205)
    url = f"/api/projects/{project.pk}/messages"
    back = client_member.get(f"{url}?limit=1000").json()
    assert len(back["items"]) == 200
    assert back["has_more"] is True
    forward = client_member.get(f"{url}?after=0&limit=1000").json()
    assert len(forward["items"]) == 200
    assert forward["has_more"] is True


def test_cursor_limit_defaults_to_50(owner, project, send, client_member):
    send(owner, project, 55)
    body = client_member.get(f"/api/projects/{project.pk}/messages").json()
    assert len(body["items"]) == 50


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("before=abc", "before"),
        ("before=0", "before"),
        ("after=-1", "after"),
        ("after=x", "after"),
        ("before=5&after=1", "before"),
    ],
)
def test_cursor_bad_parameters_are_400(project, client_member, query, field):
    response = client_member.get(f"/api/projects/{project.pk}/messages?{query}")
    error = assert_error(response, 400, "bad_request")
    assert field in error["fields"]


@pytest.mark.parametrize("cursor", ["", "?before=5", "?after=0"])
def test_cursor_history_by_non_member_is_403(project, client_outsider, cursor):
    response = client_outsider.get(f"/api/projects/{project.pk}/messages{cursor}")
    assert_error(response, 403, "not_member")


def test_cursor_history_of_unknown_project_is_404(client_member):
    assert_error(client_member.get("/api/projects/999999/messages"), 404, "not_found")


def test_cursor_history_of_private_project_after_leaving_is_404(
    owner, member, client_member
):
    private = do_create_project(owner, name="Secret", is_private=True)
    Membership.objects.create(user=member, project=private)
    assert client_member.get(f"/api/projects/{private.pk}/messages").status_code == 200
    client_member.post(f"/api/projects/{private.pk}/leave")
    # Refused as a missing project: a private project says nothing to outsiders.
    assert_error(client_member.get(f"/api/projects/{private.pk}/messages"), 404)


# --- send ---------------------------------------------------------------------------


def test_send_creates_message_with_next_seq(member, project, send, client_member):
    send(member, project, 2)
    key = uuid.uuid4()
    response = post_message(client_member, project.pk, "  hi there  ", key)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == MESSAGE_KEYS
    assert body["content"] == "hi there"  # stripped
    assert (body["seq"], body["changed_seq"]) == (3, 3)
    assert body["client_msg_id"] == str(key)
    assert body["user"] == {"id": member.pk, "username": "member"}
    assert Message.objects.get(pk=body["id"]).content == "hi there"
    assert Project.objects.get(pk=project.pk).seq == 3


def test_repeated_client_msg_id_returns_first_message_and_creates_nothing(
    project, client_member
):
    key = uuid.uuid4()
    first = post_message(client_member, project.pk, "original", key)
    assert first.status_code == 201
    rows = Message.objects.count()
    seq = Project.objects.get(pk=project.pk).seq
    again = post_message(client_member, project.pk, "a retry with other text", key)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert Message.objects.count() == rows
    assert Project.objects.get(pk=project.pk).seq == seq


def test_same_client_msg_id_from_another_author_is_a_new_message(
    project, client_member, client_owner
):
    key = uuid.uuid4()
    assert post_message(client_member, project.pk, "a", key).status_code == 201
    assert post_message(client_owner, project.pk, "b", key).status_code == 201
    assert Message.objects.count() == 2


def test_client_msg_id_reused_in_another_project_is_409(
    owner, member, project, client_member
):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    key = uuid.uuid4()
    post_message(client_member, project.pk, "a", key)
    assert_error(post_message(client_member, other.pk, "a", key), 409, "conflict")
    assert Message.objects.count() == 1


def test_client_msg_id_that_is_not_a_uuid_is_422(project, client_member):
    error = assert_error(
        post_message(client_member, project.pk, "a", "not-a-uuid"), 422
    )
    assert "client_msg_id" in error["fields"]
    assert not Message.objects.exists()


@pytest.mark.parametrize("content", ["", "   ", " \n\t "])
def test_send_empty_or_blank_content_is_422(project, client_member, content):
    error = assert_error(
        post_message(client_member, project.pk, content), 422, "invalid"
    )
    assert error["fields"] == {"content": "empty"}
    assert not Message.objects.exists()
    assert Project.objects.get(pk=project.pk).seq == 0


def test_send_over_max_length_is_422(project, client_member, settings):
    settings.MESSAGE_MAX_LENGTH = 10
    error = assert_error(
        post_message(client_member, project.pk, "x" * 11), 422, "invalid"
    )
    assert error["fields"] == {"content": "too_long"}
    assert not Message.objects.exists()


def test_send_at_max_length_after_stripping_is_accepted(
    project, client_member, settings
):
    settings.MESSAGE_MAX_LENGTH = 10
    response = post_message(client_member, project.pk, "   " + "x" * 10 + "   ")
    assert response.status_code == 201
    assert response.json()["content"] == "x" * 10


def test_send_non_string_content_is_422(project, client_member):
    response = client_member.post(
        "/api/messages",
        {"project_id": project.pk, "content": 5},
        content_type="application/json",
    )
    assert_error(response, 422, "invalid")


def test_send_by_non_member_is_403(project, client_outsider):
    assert_error(post_message(client_outsider, project.pk, "hi"), 403, "not_member")
    assert not Message.objects.exists()


def test_send_to_unknown_project_is_404(client_member):
    assert_error(post_message(client_member, 999999, "hi"), 404, "not_found")


def test_send_to_inactive_project_is_404(project, client_member):
    Project.objects.filter(pk=project.pk).update(is_active=False)
    assert_error(post_message(client_member, project.pk, "hi"), 404)


@pytest.mark.parametrize(
    "body", ["{not json", '{"project_id": 1, "content": "a"', "\xff"]
)
def test_send_malformed_json_is_400(project, client_member, body):
    response = client_member.post(
        "/api/messages", body, content_type="application/json"
    )
    assert_error(response, 400, "bad_request")
    assert not Message.objects.exists()


def test_send_without_session_is_401(project):
    assert_error(post_message(Client(), project.pk, "hi"), 401, "not_authenticated")


def test_send_without_csrf_token_is_refused(member, project):
    client = login_client(member, enforce_csrf=True)
    assert_error(post_message(client, project.pk, "hi"), 403, "csrf_failed")
    assert not Message.objects.exists()


def test_send_with_wrong_csrf_token_is_refused(member, project):
    client = login_client(member, enforce_csrf=True)
    client.get("/api/auth/csrf")
    response = post_message(client, project.pk, "hi", HTTP_X_CSRFTOKEN="x" * 64)
    assert_error(response, 403, "csrf_failed")


def test_send_with_csrf_token_from_csrf_endpoint_succeeds(member, project):
    client = login_client(member, enforce_csrf=True)
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    response = post_message(client, project.pk, "hi", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content


def test_edit_and_delete_without_csrf_token_are_refused(member, project, send):
    (message,) = send(member, project, 1)
    client = login_client(member, enforce_csrf=True)
    assert_error(patch_message(client, message.pk, "changed"), 403, "csrf_failed")
    assert_error(client.delete(f"/api/messages/{message.pk}"), 403, "csrf_failed")
    message.refresh_from_db()
    assert (message.content, message.deleted_at) == ("hello 0", None)


# --- edit -----------------------------------------------------------------------------


def test_author_edits_message_under_next_seq(member, project, send, client_member):
    (message,) = send(member, project, 1)
    response = patch_message(client_member, message.pk, "  fixed  ")
    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "fixed"
    assert (body["seq"], body["changed_seq"]) == (1, 2)
    assert body["edited_at"] is not None
    assert Project.objects.get(pk=project.pk).seq == 2


def test_edit_by_non_author_is_403(owner, project, send, client_member):
    (message,) = send(owner, project, 1)
    assert_error(patch_message(client_member, message.pk, "hijack"), 403, "forbidden")
    message.refresh_from_db()
    assert message.content == "hello 0"


def test_edit_by_project_admin_who_is_not_author_is_403(
    member, project, send, client_owner
):
    (message,) = send(member, project, 1)
    assert_error(patch_message(client_owner, message.pk, "moderated"), 403)


def test_edit_after_window_is_403_with_clear_message(
    member, project, send, client_member
):
    (message,) = send(member, project, 1)
    Message.objects.filter(pk=message.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.EDIT_WINDOW_SECONDS + 60)
    )
    error = assert_error(
        patch_message(client_member, message.pk, "late"), 403, "edit_window_closed"
    )
    assert "24 hours" in error["message"]
    message.refresh_from_db()
    assert message.content == "hello 0"
    assert Project.objects.get(pk=project.pk).seq == 1


def test_edit_window_message_names_a_short_window_in_minutes(
    member, project, send, client_member, settings
):
    settings.EDIT_WINDOW_SECONDS = 15 * 60
    (message,) = send(member, project, 1)
    Message.objects.filter(pk=message.pk).update(
        created_at=timezone.now() - timedelta(minutes=20)
    )
    error = assert_error(patch_message(client_member, message.pk, "late"), 403)
    assert "15 minutes" in error["message"]


def test_edit_with_blank_content_is_422(member, project, send, client_member):
    (message,) = send(member, project, 1)
    assert_error(patch_message(client_member, message.pk, "   "), 422, "invalid")


def test_edit_of_deleted_message_is_404(member, project, send, client_member):
    (message,) = send(member, project, 1)
    client_member.delete(f"/api/messages/{message.pk}")
    assert_error(patch_message(client_member, message.pk, "revive"), 404)


def test_edit_of_unknown_message_is_404(client_member):
    assert_error(patch_message(client_member, 999999, "x"), 404, "not_found")


def test_edit_by_author_who_left_is_403(member, project, send, client_member):
    (message,) = send(member, project, 1)
    Membership.objects.filter(user=member, project=project).delete()
    assert_error(patch_message(client_member, message.pk, "x"), 403)


# --- delete ---------------------------------------------------------------------------


def test_delete_leaves_a_tombstone(
    member, project, send, client_member, django_capture_on_commit_callbacks
):
    (message,) = send(member, project, 1)
    with django_capture_on_commit_callbacks(execute=True):  # as after a real commit
        response = client_member.delete(f"/api/messages/{message.pk}")
    assert response.status_code == 204
    assert response.content == b""
    assert Message.objects.filter(pk=message.pk).exists()  # a tombstone, not a hole
    item = client_member.get(f"/api/projects/{project.pk}/messages").json()["items"][0]
    assert item["id"] == message.pk
    assert (item["content"], item["deleted"]) == ("", True)
    assert (item["seq"], item["changed_seq"]) == (1, 2)
    page = client_member.get(f"/api/messages?project_id={project.pk}").json()
    assert (page["items"][0]["content"], page["items"][0]["deleted"]) == ("", True)


def test_delete_twice_takes_one_number(member, project, send, client_member):
    (message,) = send(member, project, 1)
    client_member.delete(f"/api/messages/{message.pk}")
    assert client_member.delete(f"/api/messages/{message.pk}").status_code == 204
    assert Project.objects.get(pk=project.pk).seq == 2


def test_project_owner_deletes_a_members_message(member, project, send, client_owner):
    (message,) = send(member, project, 1)
    assert client_owner.delete(f"/api/messages/{message.pk}").status_code == 204
    message.refresh_from_db()
    assert message.deleted_at is not None


def test_delete_by_plain_member_who_is_not_author_is_403(
    owner, project, send, client_member
):
    (message,) = send(owner, project, 1)
    assert_error(client_member.delete(f"/api/messages/{message.pk}"), 403)
    message.refresh_from_db()
    assert message.deleted_at is None


def test_delete_by_non_member_is_403(owner, project, send, client_outsider):
    (message,) = send(owner, project, 1)
    assert_error(client_outsider.delete(f"/api/messages/{message.pk}"), 403)


# --- search ---------------------------------------------------------------------------


def test_search_never_returns_messages_from_other_projects(
    owner, member, outsider, project, send, client_member
):
    elsewhere = do_create_project(outsider, name="Elsewhere")
    send(outsider, elsewhere, 2, prefix="banana secret")
    send(owner, project, 1, prefix="banana public")
    body = client_member.get("/api/search?q=banana").json()
    assert [m["project_id"] for m in body["items"]] == [project.pk]
    assert body["items"][0]["content"] == "banana public 0"


def test_search_in_a_project_of_someone_else_is_403(outsider, send, client_member):
    elsewhere = do_create_project(outsider, name="Elsewhere")
    send(outsider, elsewhere, 1, prefix="banana")
    response = client_member.get(f"/api/search?q=banana&project_id={elsewhere.pk}")
    assert_error(response, 403)


def test_search_skips_deleted_messages_and_is_newest_first(
    owner, project, send, client_member
):
    first, second, third = send(owner, project, 3, prefix="banana")
    login_client(owner).delete(f"/api/messages/{second.pk}")
    body = client_member.get(f"/api/search?q=banana&project_id={project.pk}").json()
    assert [m["id"] for m in body["items"]] == [third.pk, first.pk]


def test_search_after_leaving_finds_nothing_there(
    member, owner, project, send, client_member
):
    send(owner, project, 1, prefix="banana")
    Membership.objects.filter(user=member, project=project).delete()
    assert client_member.get("/api/search?q=banana").json()["items"] == []


def test_search_without_query_is_400(client_member):
    assert_error(client_member.get("/api/search?q=%20"), 400, "bad_request")


# --- schema and error shape -------------------------------------------------------


def test_openapi_schema_is_served_and_lists_the_endpoints(db):
    response = Client().get("/api/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/api/auth/csrf": {"get"},
        "/api/auth/login": {"post"},
        "/api/auth/logout": {"post"},
        "/api/auth/me": {"get"},
        "/api/projects": {"get", "post"},
        "/api/projects/{project_id}": {"get"},
        "/api/projects/{project_id}/join": {"post"},
        "/api/projects/{project_id}/leave": {"post"},
        "/api/projects/{project_id}/members": {"post"},
        "/api/projects/{project_id}/read": {"post"},
        "/api/projects/{project_id}/messages": {"get"},
        "/api/messages": {"get", "post"},
        "/api/messages/{message_id}": {"patch", "delete"},
        "/api/search": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path


def test_unknown_api_path_answers_in_the_error_shape(client_member):
    assert_error(client_member.get("/api/nonexistent"), 404, "not_found")


def test_non_numeric_path_id_answers_in_the_error_shape(client_member):
    response = client_member.get("/api/projects/abc/messages")
    assert response["Content-Type"].startswith("application/json")


def test_wrong_method_answers_in_the_error_shape(client_member):
    response = client_member.put("/api/messages", "{}", content_type="application/json")
    assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize("query", [
    "page=1180591620717411303424", "per_page=1180591620717411303424",
    "before=99999999999999999999",
])
def test_numbers_too_large_for_the_database_are_400(project, client_member, query):
    if query.startswith("before"):
        url = f"/api/projects/{project.pk}/messages?{query}"
    else:
        url = f"/api/messages?project_id={project.pk}&{query}"
    assert_error(client_member.get(url), 400, "bad_request")
    if query.startswith("page"):
        assert_error(client_member.get(f"/api/projects?{query}"), 400, "bad_request")
