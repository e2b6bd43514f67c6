"""The projects API: listing with unread counts, create, join/leave, members, read."""

import pytest
from django.test import Client

from chat.actions import do_delete_message, do_send_message
from conftest import assert_error, auth_queries, login_client
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project


def post_json(client, path, data=None, **extra):
    return client.post(
        path, data if data is not None else {}, content_type="application/json", **extra
    )


# --- listing ------------------------------------------------------------------------


@pytest.mark.parametrize("n_projects", [3, 40])
def test_project_list_query_count_is_constant(
    n_projects, owner, member, send, django_assert_num_queries
):
    for i in range(n_projects):
        project = do_create_project(owner, name=f"p{i:03d}")
        do_join_project(member, project.pk)
        send(owner, project, 2)
        do_send_message(owner, project.pk, "@member look")
    client = login_client(member)
    # auth (cached); cold here: the caller's memberships by name with `total`
    # as a window count (the skeleton), the page's projects, their message
    # tails with mentions -- one statement each, no query per project
    # (projects.list_cache).
    with django_assert_num_queries(auth_queries() + 3):
        response = client.get("/api/projects?per_page=100")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == n_projects
    assert len(body["items"]) == n_projects
    assert all(item["unread_count"] == 3 for item in body["items"])
    assert all(item["mention_count"] == 1 for item in body["items"])


def test_project_list_shows_only_callers_active_projects(
    owner, member, outsider, project
):
    do_create_project(outsider, name="Elsewhere")
    archived = do_create_project(owner, name="Archived")
    do_join_project(member, archived.pk)
    Project.objects.filter(pk=archived.pk).update(is_active=False)
    body = login_client(member).get("/api/projects").json()
    assert [item["id"] for item in body["items"]] == [project.pk]
    assert body["total"] == 1
    item = body["items"][0]
    assert item["name"] == "General"
    assert item["seq"] == 0
    assert item["unread_count"] == 0
    assert item["role"] == "member"


def test_project_list_is_page_numbered_in_the_guides_shape(owner, member):
    for i in range(5):
        do_join_project(member, do_create_project(owner, name=f"p{i}").pk)
    client = login_client(member)
    first = client.get("/api/projects?page=1&per_page=2").json()
    assert set(first) == {"items", "total", "page", "per_page", "has_next", "has_prev"}
    assert [p["name"] for p in first["items"]] == ["p0", "p1"]
    assert (first["total"], first["page"], first["per_page"]) == (5, 1, 2)
    assert (first["has_next"], first["has_prev"]) == (True, False)
    last = client.get("/api/projects?page=3&per_page=2").json()
    assert [p["name"] for p in last["items"]] == ["p4"]
    assert (last["has_next"], last["has_prev"]) == (False, True)
    beyond = client.get("/api/projects?page=9&per_page=2").json()
    assert beyond["items"] == []


def test_project_list_per_page_defaults_to_50_and_is_clamped_to_100(client_member):
    assert client_member.get("/api/projects").json()["per_page"] == 50
    assert client_member.get("/api/projects?per_page=1000").json()["per_page"] == 100


@pytest.mark.parametrize(
    "query, field",
    [
        ("page=0", "page"),
        ("page=-3", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("per_page=0", "per_page"),
        ("per_page=-1", "per_page"),
        ("per_page=lots", "per_page"),
    ],
)
def test_project_list_bad_page_parameters_are_400(client_member, query, field):
    error = assert_error(
        client_member.get(f"/api/projects?{query}"), 400, "bad_request"
    )
    assert field in error["fields"]


def test_project_list_without_session_is_401(db):
    assert_error(Client().get("/api/projects"), 401, "not_authenticated")


# --- unread counts --------------------------------------------------------------


def unread_of(client, project_id):
    items = client.get("/api/projects").json()["items"]
    return {item["id"]: item["unread_count"] for item in items}[project_id]


def test_unread_count_skips_own_and_deleted_messages(
        owner, member, project, send, django_capture_on_commit_callbacks):
    theirs = send(owner, project, 3)
    send(member, project, 2)
    client = login_client(member)
    assert unread_of(client, project.pk) == 3  # own messages are not unread
    with django_capture_on_commit_callbacks(execute=True):  # as after a real commit
        do_delete_message(theirs[0])
    assert unread_of(client, project.pk) == 2  # a tombstone is not unread


def test_unread_count_counts_only_messages_after_last_read(
    owner, member, project, send
):
    send(owner, project, 4)
    client = login_client(member)
    assert (
        post_json(client, f"/api/projects/{project.pk}/read", {"seq": 3}).status_code
        == 200
    )
    assert unread_of(client, project.pk) == 1
    send(owner, project, 2)
    assert unread_of(client, project.pk) == 3


def test_edit_does_not_make_a_message_unread_again(owner, member, project, send):
    (message,) = send(owner, project, 1)
    client = login_client(member)
    post_json(client, f"/api/projects/{project.pk}/read", {"seq": message.seq})
    response = login_client(owner).patch(
        f"/api/messages/{message.pk}",
        {"content": "edited"},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert unread_of(client, project.pk) == 0


# --- mark read ----------------------------------------------------------------------


def test_mark_read_moves_last_read_seq_forward(
    owner, member, project, send, client_member
):
    send(owner, project, 5)
    response = post_json(client_member, f"/api/projects/{project.pk}/read", {"seq": 4})
    assert response.status_code == 200
    assert response.json() == {"project_id": project.pk, "last_read_seq": 4}
    assert Membership.objects.get(user=member, project=project).last_read_seq == 4


def test_mark_read_with_lower_seq_never_moves_back(
    owner, member, project, send, client_member
):
    send(owner, project, 5)
    post_json(client_member, f"/api/projects/{project.pk}/read", {"seq": 5})
    response = post_json(client_member, f"/api/projects/{project.pk}/read", {"seq": 2})
    assert response.status_code == 200
    assert response.json()["last_read_seq"] == 5
    assert Membership.objects.get(user=member, project=project).last_read_seq == 5


def test_mark_read_beyond_project_seq_is_clamped(
    owner, member, project, send, client_member
):
    send(owner, project, 2)
    response = post_json(
        client_member, f"/api/projects/{project.pk}/read", {"seq": 999}
    )
    assert response.json()["last_read_seq"] == 2
    assert Membership.objects.get(user=member, project=project).last_read_seq == 2


def test_mark_read_by_non_member_is_403(project, client_outsider):
    response = post_json(
        client_outsider, f"/api/projects/{project.pk}/read", {"seq": 1}
    )
    assert_error(response, 403, "not_member")


def test_mark_read_with_non_number_seq_is_rejected(project, client_member):
    response = post_json(
        client_member, f"/api/projects/{project.pk}/read", {"seq": "lots"}
    )
    assert_error(response, 422, "invalid")


# --- create and read one --------------------------------------------------------


def test_create_project_makes_caller_owner(client_member, member):
    response = post_json(
        client_member,
        "/api/projects",
        {"name": "  Ops  ", "description": "d", "is_private": True},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Ops"
    assert body["is_private"] is True
    assert body["owner_id"] == member.pk
    assert body["member_count"] == 1
    membership = Membership.objects.get(project_id=body["id"])
    assert (membership.user_id, membership.role) == (member.pk, "owner")


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_create_project_with_bad_name_is_422(client_member, name):
    error = assert_error(post_json(client_member, "/api/projects", {"name": name}), 422)
    assert "name" in error["fields"]
    assert not Project.objects.exists()


def test_create_project_with_malformed_json_is_400(client_member):
    response = client_member.post(
        "/api/projects", "{oops", content_type="application/json"
    )
    assert_error(response, 400, "bad_request")


def test_create_project_without_csrf_token_is_refused(member):
    client = login_client(member, enforce_csrf=True)
    response = post_json(client, "/api/projects", {"name": "Ops"})
    assert_error(response, 403, "csrf_failed")
    assert not Project.objects.exists()


def test_create_project_with_csrf_token_succeeds(member):
    client = login_client(member, enforce_csrf=True)
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    response = post_json(
        client, "/api/projects", {"name": "Ops"}, HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 201, response.content


def test_get_project_reports_member_count(project, client_member):
    response = client_member.get(f"/api/projects/{project.pk}")
    assert response.status_code == 200
    assert response.json()["member_count"] == 2


def test_get_public_project_is_visible_to_non_member(project, client_outsider):
    assert client_outsider.get(f"/api/projects/{project.pk}").status_code == 200


def test_private_project_is_refused_to_non_members_as_if_missing(owner, client_outsider):
    # A refusal says nothing of a private project, not even that it exists.
    private = do_create_project(owner, name="Secret", is_private=True)
    refused = client_outsider.get(f"/api/projects/{private.pk}")
    missing = client_outsider.get("/api/projects/999999")
    assert_error(refused, 404, "not_found")
    assert refused.content == missing.content
    assert b"Secret" not in refused.content


def test_get_unknown_project_is_404(client_member):
    assert_error(client_member.get("/api/projects/999999"), 404, "not_found")


def test_get_inactive_project_is_404(project, client_member):
    Project.objects.filter(pk=project.pk).update(is_active=False)
    assert_error(client_member.get(f"/api/projects/{project.pk}"), 404)


# --- join, leave, members -------------------------------------------------------


def test_join_public_project_makes_caller_member(project, outsider, client_outsider):
    response = post_json(client_outsider, f"/api/projects/{project.pk}/join")
    assert response.status_code == 200
    assert response.json()["role"] == "member"
    assert Membership.objects.filter(user=outsider, project=project).exists()


def test_join_twice_keeps_one_membership(project, outsider, client_outsider):
    post_json(client_outsider, f"/api/projects/{project.pk}/join")
    assert (
        post_json(client_outsider, f"/api/projects/{project.pk}/join").status_code
        == 200
    )
    assert Membership.objects.filter(user=outsider, project=project).count() == 1


def test_join_private_project_is_refused_as_missing(owner, outsider, client_outsider):
    private = do_create_project(owner, name="Secret", is_private=True)
    refused = post_json(client_outsider, f"/api/projects/{private.pk}/join")
    assert_error(refused, 404, "not_found")
    assert refused.content == post_json(client_outsider, "/api/projects/999999/join").content
    assert not Membership.objects.filter(user=outsider, project=private).exists()


def test_join_unknown_project_is_404(client_outsider):
    assert_error(post_json(client_outsider, "/api/projects/999999/join"), 404)


def test_owner_adds_member_to_private_project(owner, outsider, client_owner):
    private = do_create_project(owner, name="Secret", is_private=True)
    response = post_json(
        client_owner, f"/api/projects/{private.pk}/members", {"username": "outsider"}
    )
    assert response.status_code == 201, response.content
    assert response.json()["user"] == {"id": outsider.pk, "username": "outsider"}
    assert Membership.objects.get(user=outsider, project=private).role == "member"
    # Adding again changes nothing and says so.
    again = post_json(
        client_owner, f"/api/projects/{private.pk}/members", {"username": "outsider"}
    )
    assert again.status_code == 200
    assert Membership.objects.filter(user=outsider, project=private).count() == 1


def test_admin_adds_member(project, member, outsider):
    Membership.objects.filter(user=member, project=project).update(role="admin")
    response = post_json(
        login_client(member),
        f"/api/projects/{project.pk}/members",
        {"username": "outsider"},
    )
    assert response.status_code == 201
    assert Membership.objects.filter(user=outsider, project=project).exists()


def test_plain_member_cannot_add_member(project, outsider, client_member):
    response = post_json(
        client_member, f"/api/projects/{project.pk}/members", {"username": "outsider"}
    )
    assert_error(response, 403)
    assert not Membership.objects.filter(user=outsider, project=project).exists()


def test_non_member_cannot_add_member(project, make_user, client_outsider):
    make_user("dave")
    response = post_json(
        client_outsider, f"/api/projects/{project.pk}/members", {"username": "dave"}
    )
    assert_error(response, 403)


def test_add_unknown_username_is_404(project, client_owner):
    response = post_json(
        client_owner, f"/api/projects/{project.pk}/members", {"username": "ghost"}
    )
    error = assert_error(response, 404)
    assert error["fields"] == {"username": "unknown"}


def test_leave_removes_membership_and_access(project, member, client_member):
    response = post_json(client_member, f"/api/projects/{project.pk}/leave")
    assert response.status_code == 204
    assert not Membership.objects.filter(user=member, project=project).exists()
    assert_error(client_member.get(f"/api/projects/{project.pk}/messages"), 403)


def test_leave_by_non_member_is_403(project, client_outsider):
    assert_error(post_json(client_outsider, f"/api/projects/{project.pk}/leave"), 403)


def test_last_owner_cannot_leave(project, owner, client_owner):
    assert_error(
        post_json(client_owner, f"/api/projects/{project.pk}/leave"), 409, "conflict"
    )
    assert Membership.objects.filter(user=owner, project=project).exists()
