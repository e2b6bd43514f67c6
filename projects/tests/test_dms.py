"""Direct messages (projects.dms; docs/API.md "Direct messages"): one conversation per
set of people, named per viewer, fixed members, and otherwise a project like any other."""

import re

import orjson
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.actions import do_send_message
from chat.tests.test_postgres import run_concurrently
from conftest import assert_error, auth_queries, login_client
from projects import dms
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project


def post_json(client, path, data=None):
    return client.post(path, orjson.dumps(data if data is not None else {}),
                       content_type="application/json")


def open_dm(client, *usernames):
    return post_json(client, "/api/dms", {"usernames": list(usernames)})


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def carol(make_user):
    return make_user("carol", display_name="Carol Zed")


@pytest.fixture
def as_alice(alice):
    return login_client(alice)


@pytest.fixture
def as_bob(bob):
    return login_client(bob)


# --- POST /api/dms ---------------------------------------------------------------------


def test_opening_a_dm_creates_it_once_then_finds_it_from_either_side(
    alice, bob, as_alice, as_bob
):
    first = open_dm(as_alice, "bob")
    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["kind"], body["name"], body["is_private"]) == ("dm", "bob", True)
    assert (body["member_count"], body["role"], body["owner_id"]) == (2, "member", alice.pk)

    again = open_dm(as_alice, "bob")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    from_bob = open_dm(as_bob, "alice")
    assert from_bob.status_code == 200
    assert (from_bob.json()["id"], from_bob.json()["name"]) == (body["id"], "alice")

    project = Project.objects.get(pk=body["id"])
    assert project.dm_key == f"{min(alice.pk, bob.pk)},{max(alice.pk, bob.pk)}"
    assert project.kind == Project.Kind.DM
    roles = dict(Membership.objects.filter(project=project).values_list("user_id", "role"))
    assert roles == {alice.pk: "member", bob.pk: "member"}
    assert Project.objects.count() == 1


def test_the_caller_counts_once_listed_or_not_and_duplicates_collapse(alice, bob, as_alice):
    created = open_dm(as_alice, "bob").json()["id"]
    for usernames in (["alice", "bob"], ["bob", "bob"], [" bob ", "alice", "alice"]):
        response = open_dm(as_alice, *usernames)
        assert response.status_code == 200, usernames
        assert response.json()["id"] == created
    assert Project.objects.count() == 1


def test_a_group_dm_is_named_per_viewer_from_the_others_sorted(
    alice, bob, carol, make_user
):
    dave = make_user("Dave")
    body = open_dm(login_client(alice), "carol", "bob", "Dave").json()
    assert body["name"] == "bob, Carol Zed, Dave"  # sorted ignoring case
    assert body["member_count"] == 4
    seen_by = {u.username: login_client(u).get(f"/api/projects/{body['id']}").json()["name"]
               for u in (bob, carol, dave)}
    assert seen_by == {"bob": "alice, Carol Zed, Dave", "carol": "alice, bob, Dave",
                       "Dave": "alice, bob, Carol Zed"}
    # Another set of people is another conversation.
    pair = open_dm(login_client(alice), "bob")
    assert pair.status_code == 201 and pair.json()["id"] != body["id"]


def test_eight_people_is_the_most(alice, as_alice, make_user):
    names = [make_user(f"p{i}").username for i in range(8)]
    error = assert_error(open_dm(as_alice, *names), 422, "invalid")
    assert error["fields"] == {"usernames": "too_many"}
    assert "at most 8" in error["message"]
    assert open_dm(as_alice, *names[:7]).status_code == 201  # 8 with alice


@pytest.mark.parametrize("body, field", [
    ({"usernames": []}, "too_few"),
    ({"usernames": ["alice"]}, "too_few"),
    ({"usernames": ["", "  "]}, "too_few"),
])
def test_fewer_than_two_people_is_422(alice, as_alice, body, field):
    error = assert_error(post_json(as_alice, "/api/dms", body), 422, "invalid")
    assert error["fields"] == {"usernames": field}
    assert Project.objects.count() == 0


@pytest.mark.parametrize("body", [
    {"usernames": "bob"}, {"usernames": [1]}, {"usernames": ["bob", None]},
    {"usernames": {"bob": 1}}, {}, {"usernames": None},
])
def test_anything_but_a_list_of_names_is_422(alice, bob, as_alice, body):
    error = assert_error(post_json(as_alice, "/api/dms", body), 422, "invalid")
    assert any(name.startswith("usernames") for name in error["fields"])
    assert Project.objects.count() == 0


def test_unknown_or_inactive_names_are_404_naming_them(alice, bob, make_user, as_alice):
    make_user("gone", is_active=False)
    error = assert_error(open_dm(as_alice, "bob", "ghost", "gone", "nul\x00"), 404,
                         "not_found")
    assert error["fields"] == {"usernames": "unknown"}
    assert "'ghost'" in error["message"] and "'gone'" in error["message"]
    assert "'bob'" not in error["message"]
    assert Project.objects.count() == 0


def test_a_dm_closed_by_an_administrator_is_not_reopened(alice, bob, as_alice):
    pk = open_dm(as_alice, "bob").json()["id"]
    Project.objects.filter(pk=pk).update(is_active=False)
    assert_error(open_dm(as_alice, "bob"), 409, "dm_closed")
    assert Project.objects.count() == 1


def test_opening_needs_sign_in_and_the_csrf_token(alice, bob):
    assert_error(open_dm(Client(), "bob"), 401)
    strict = login_client(alice, enforce_csrf=True)
    assert_error(open_dm(strict, "bob"), 403, "csrf_failed")
    assert Project.objects.count() == 0


# --- fixed members ----------------------------------------------------------------------


def test_join_add_and_leave_on_a_dm_are_422_for_members_and_404_for_others(
    alice, bob, carol, as_alice, as_bob
):
    pk = open_dm(as_alice, "bob").json()["id"]
    for client, path, body in (
        (as_alice, f"/api/projects/{pk}/join", {}),
        (as_bob, f"/api/projects/{pk}/leave", {}),
        (as_alice, f"/api/projects/{pk}/members", {"username": "carol"}),
    ):
        error = assert_error(post_json(client, path, body), 422, "dm_members_fixed")
        assert "fixed" in error["message"]
    outsider = login_client(carol)
    for path, body in ((f"/api/projects/{pk}/join", {}), (f"/api/projects/{pk}/leave", {}),
                       (f"/api/projects/{pk}/members", {"username": "carol"})):
        error = assert_error(post_json(outsider, path, body), 404, "not_found")
        assert "alice" not in error["message"]
    assert_error(outsider.get(f"/api/projects/{pk}"), 404)
    assert_error(outsider.get(f"/api/projects/{pk}/messages"), 404)
    assert sorted(Membership.objects.filter(project_id=pk).values_list("user_id", flat=True)
                  ) == sorted([alice.pk, bob.pk])


def test_the_page_forms_refuse_join_and_leave_on_a_dm(alice, bob, as_alice, carol):
    pk = open_dm(as_alice, "bob").json()["id"]
    left = as_alice.post(f"/projects/{pk}/leave")
    assert (left.status_code, left["Location"]) == (302, f"/projects/{pk}/")
    joined = as_alice.post(f"/projects/{pk}/join")
    assert (joined.status_code, joined["Location"]) == (302, f"/projects/{pk}/")
    assert login_client(carol).post(f"/projects/{pk}/join").status_code == 404
    assert Membership.objects.filter(project_id=pk).count() == 2


def test_a_dm_works_like_any_project(
    alice, bob, carol, as_alice, as_bob, published, django_capture_on_commit_callbacks
):
    pk = open_dm(as_alice, "bob").json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        sent = post_json(as_alice, "/api/messages",
                         {"project_id": pk, "content": "psst @bob, the **plan**"})
    assert sent.status_code == 201, sent.content
    message = sent.json()
    # Sent live through the project's hub, as in any project.
    assert [(project_id, event["kind"], event["message"]["id"])
            for project_id, event in published] == [(pk, "change", message["id"])]
    assert f'data-user-id="{bob.pk}"' in message["content_html"]

    history = as_bob.get(f"/api/projects/{pk}/messages").json()["items"]
    assert [m["id"] for m in history] == [message["id"]]
    listed = {p["id"]: p for p in as_bob.get("/api/projects").json()["items"]}
    assert (listed[pk]["unread_count"], listed[pk]["mention_count"]) == (1, 1)
    hits = as_bob.get("/api/search", {"q": "plan"}).json()["items"]
    assert [m["id"] for m in hits] == [message["id"]]
    reacted = post_json(as_bob, f"/api/messages/{message['id']}/reactions", {"emoji": "👍"})
    assert reacted.status_code == 201
    assert reacted.json()["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [bob.pk]}]
    # Nobody else sees any of it.
    outsider = login_client(carol)
    assert outsider.get("/api/search", {"q": "plan"}).json()["items"] == []
    assert_error(post_json(outsider, f"/api/messages/{message['id']}/reactions",
                           {"emoji": "👍"}), 404)


# --- listing ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_dms", [1, 12])
def test_project_list_names_dms_in_its_one_query(
    n_dms, alice, carol, make_user, django_assert_num_queries
):
    general = do_create_project(carol, name="General")
    do_join_project(alice, general.pk)
    for i in range(n_dms):
        other = make_user(f"friend{i:02d}", display_name=f"Friend {i:02d}")
        project, _ = dms.do_open_dm(other, [alice, carol])
        do_send_message(other, project.pk, "hi")
    client = login_client(alice)
    # auth (cached); cold here: the caller's memberships (the skeleton), the
    # page's projects with their DM members' names, their message tails -- one
    # statement each, whatever the number of DMs (projects.list_cache).
    with django_assert_num_queries(auth_queries() + 3):
        body = client.get("/api/projects?per_page=100").json()
    kinds = {item["name"]: item["kind"] for item in body["items"]}
    assert kinds.pop("General") == "project"
    assert kinds == {f"Carol Zed, Friend {i:02d}": "dm" for i in range(n_dms)}
    assert all(item["unread_count"] == 1 for item in body["items"] if item["kind"] == "dm")


def test_a_new_display_name_reaches_cached_lists_through_forget_dm_names_of(
    alice, bob, as_alice, settings
):
    settings.CACHE_HOT_READS = True
    open_dm(as_alice, "bob")
    assert [p["name"] for p in as_alice.get("/api/projects").json()["items"]] == ["bob"]
    type(bob).objects.filter(pk=bob.pk).update(display_name="Robert")
    assert dms.forget_dm_names_of(bob.pk) == 1
    assert [p["name"] for p in as_alice.get("/api/projects").json()["items"]] == ["Robert"]


# --- pages -------------------------------------------------------------------------------


def test_message_button_opens_the_dm_and_lands_on_its_page(alice, bob, carol):
    room = do_create_project(alice, name="Room")
    do_join_project(bob, room.pk)
    do_send_message(bob, room.pk, "from bob")
    do_send_message(alice, room.pk, "from alice")
    as_alice = login_client(alice)
    page = as_alice.get(f"/projects/{room.pk}/").content.decode()
    buttons = re.findall(r'<button[^>]*class="link-button msg-dm"[^>]*>', page)
    assert len(buttons) == 1  # bob's message only, never my own
    assert 'formaction="/dm/bob"' in buttons[0] and 'form="dm-open"' in buttons[0]
    assert re.search(r'<form id="dm-open" method="post"[^>]*>\s*<input type="hidden" '
                     r'name="csrfmiddlewaretoken"', page)

    response = as_alice.post("/dm/bob")
    dm = Project.objects.get(kind=Project.Kind.DM)
    assert (response.status_code, response["Location"]) == (302, f"/projects/{dm.pk}/")
    assert as_alice.post("/dm/bob")["Location"] == f"/projects/{dm.pk}/"  # the same one
    assert Project.objects.filter(kind=Project.Kind.DM).count() == 1

    dm_page = as_alice.get(f"/projects/{dm.pk}/").content.decode()
    assert "<h1>bob</h1>" in dm_page and "<title>bob" in dm_page
    assert "msg-dm" not in dm_page  # a two-person DM offers no button to itself
    assert f'action="/projects/{dm.pk}/leave"' not in dm_page
    assert "<h1>alice</h1>" in login_client(bob).get(f"/projects/{dm.pk}/").content.decode()
    assert login_client(carol).get(f"/projects/{dm.pk}/").status_code == 404


def test_message_form_refuses_unknown_people_yourself_and_missing_csrf(alice):
    as_alice = login_client(alice)
    assert as_alice.post("/dm/nobody").status_code == 404
    yourself = as_alice.post("/dm/alice")
    assert (yourself.status_code, yourself["Location"]) == (302, "/")
    assert as_alice.get("/dm/alice").status_code == 405
    strict = login_client(alice, enforce_csrf=True)
    assert strict.post("/dm/alice").status_code == 403
    assert Project.objects.count() == 0


def test_home_page_lists_dms_in_their_own_section(alice, bob, carol):
    do_create_project(alice, name="Design")
    dms.do_open_dm(bob, [alice, carol])
    page = login_client(alice).get("/").content.decode()
    home = page[page.index('<div class="home">'):]  # not the sidebar, which lists both
    projects, direct = home.split('id="dm-heading"')
    assert "Design" in projects and "Carol Zed" not in projects
    assert "bob, Carol Zed" in direct and "Design" not in direct


# --- admin ------------------------------------------------------------------------------


@pytest.fixture
def as_staff(make_user):
    return login_client(make_user("boss", is_staff=True, is_superuser=True))


def test_admin_filters_dms_and_shows_their_members_read_only(alice, bob, as_staff):
    do_create_project(alice, name="Ordinary")
    dm, _ = dms.do_open_dm(alice, [bob])
    listing = as_staff.get("/admin/projects/project/?kind__exact=dm").content.decode()
    assert f"/admin/projects/project/{dm.pk}/change/" in listing
    assert "Ordinary" not in listing

    change = as_staff.get(f"/admin/projects/project/{dm.pk}/change/").content.decode()
    # Both members listed, none editable, removable or addable.
    assert 'name="memberships-MAX_NUM_FORMS" value="0"' in change
    assert ">alice</a>" in change and ">bob</a>" in change
    assert 'name="memberships-0-role"' not in change
    assert "memberships-0-DELETE" not in change
    assert 'name="owner"' not in change  # read-only for a DM

    membership = Membership.objects.get(project=dm, user=bob)
    page = as_staff.get(f"/admin/projects/membership/{membership.pk}/change/")
    assert page.status_code == 200 and 'name="role"' not in page.content.decode()
    assert as_staff.post(f"/admin/projects/membership/{membership.pk}/delete/",
                         {"post": "yes"}).status_code == 403
    added = as_staff.post("/admin/projects/membership/add/", {
        "user": as_staff_user_id(), "project": dm.pk, "role": "member",
        "last_read_seq": 0})
    assert added.status_code == 200 and "are fixed" in added.content.decode()
    assert Membership.objects.filter(project=dm).count() == 2


def as_staff_user_id():
    from accounts.models import User

    return User.objects.get(username="boss").pk


# --- the race ---------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_people_opening_the_same_dm_at_once_get_one_conversation(alice, bob, carol):
    people = [alice, bob, carol]

    def work(i):
        me = people[i % 3]
        project, created = dms.do_open_dm(me, [p for p in people if p is not me])
        return project.pk, created

    results, errors = run_concurrently(12, work)
    assert errors == []
    assert len({pk for pk, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert Project.objects.filter(kind=Project.Kind.DM).count() == 1
    assert Membership.objects.count() == 3


def test_the_list_sql_reads_dm_names_with_the_backends_json_aggregate(alice, bob, as_alice):
    open_dm(as_alice, "bob")
    with CaptureQueriesContext(connection) as captured:
        as_alice.get("/api/projects")
    sql = " ".join(q["sql"] for q in captured.captured_queries)
    expected = "json_agg(" if connection.vendor == "postgresql" else "json_group_array("
    assert expected in sql
