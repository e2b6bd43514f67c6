"""GET /api/messages without project_id: the caller's newest messages across all
their projects (docs/API.md §7, "All messages"), page-numbered and cached."""

import orjson
import pytest
from django.test import Client

from chat import selectors
from chatsite import cache as chat_cache
from conftest import assert_error, auth_queries, login_client
from projects.actions import (
    do_create_project,
    do_deactivate_projects,
    do_join_project,
    do_remove_member,
)

ALL = "/api/messages"
FIRST_PAGE = "/api/messages?page=1&per_page=50"  # the guide's request


@pytest.fixture
def rooms(owner, member, project):
    """The member's projects General and Second, and Elsewhere without the member."""
    second = do_create_project(owner, name="Second")
    do_join_project(member, second.pk)
    elsewhere = do_create_project(owner, name="Elsewhere")
    return project, second, elsewhere


def contents(response):
    assert response.status_code == 200, response.content
    return [m["content"] for m in response.json()["items"]]


def test_newest_first_across_the_callers_projects_only(
    owner, member, rooms, send, client_member
):
    general, second, elsewhere = rooms
    send(owner, general, 1, prefix="g")
    send(member, second, 1, prefix="s")
    send(owner, elsewhere, 1, prefix="e")  # not the member's: never listed
    send(owner, general, 1, prefix="g-late")

    body = client_member.get(FIRST_PAGE).json()
    assert set(body) == {"items", "total", "page", "per_page", "has_next", "has_prev"}
    assert [(m["content"], m["project_id"]) for m in body["items"]] == [
        ("g-late 0", general.pk), ("s 0", second.pk), ("g 0", general.pk)]
    assert (body["total"], body["page"], body["per_page"]) == (3, 1, 50)
    assert (body["has_next"], body["has_prev"]) == (False, False)
    assert client_member.get(ALL).content == client_member.get(FIRST_PAGE).content


def test_items_are_the_same_message_json_as_the_project_form(
    owner, rooms, send, client_member
):
    general, second, _ = rooms
    send(owner, general, 2)
    send(owner, second, 2)
    everything = client_member.get(ALL).json()["items"]
    for project in (general, second):
        own = client_member.get(f"/api/messages?project_id={project.pk}").json()["items"]
        assert [m for m in everything if m["project_id"] == project.pk] == own


def test_pages_merge_the_projects_in_time_order(owner, rooms, send, client_member):
    general, second, _ = rooms
    # Second's messages are all older than General's: page 2 must reach into it
    # past General's newest, whatever each project's own history holds.
    send(owner, second, 4, prefix="old")
    send(owner, general, 6, prefix="new")
    pages = [client_member.get(f"{ALL}?page={n}&per_page=4").json() for n in (1, 2, 3, 4)]
    assert [m["content"] for m in pages[0]["items"]] == [f"new {i}" for i in (5, 4, 3, 2)]
    assert [m["content"] for m in pages[1]["items"]] == [
        "new 1", "new 0", "old 3", "old 2"]
    assert [m["content"] for m in pages[2]["items"]] == ["old 1", "old 0"]
    assert pages[3]["items"] == [] and pages[3]["total"] == 10  # past the end: 200, empty
    assert [(p["has_next"], p["has_prev"]) for p in pages] == [
        (True, False), (True, True), (False, True), (False, True)]


def test_deleted_messages_stay_as_tombstones_and_count(owner, rooms, send, client_member):
    from chat.actions import do_delete_message

    general, _, _ = rooms
    first, _second = send(owner, general, 2)
    do_delete_message(first)
    body = client_member.get(ALL).json()
    assert body["total"] == 2
    assert [(m["content"], m["deleted"]) for m in body["items"]] == [
        ("hello 1", False), ("", True)]


def test_a_user_without_projects_gets_an_empty_page(make_user):
    client = login_client(make_user("loner"))
    body = client.get(ALL).json()
    assert body == {"items": [], "total": 0, "page": 1, "per_page": 50,
                    "has_next": False, "has_prev": False}


# --- queries ---------------------------------------------------------------------


@pytest.mark.parametrize("n_projects", [1, 6])
def test_query_count_does_not_grow_with_projects_or_messages(
    n_projects, owner, member, send, client_member, django_assert_num_queries
):
    for i in range(n_projects):
        room = do_create_project(owner, name=f"Room {i}")
        do_join_project(member, room.pk)
        send(owner, room, 3)
    # auth; the member's project ids (cached under the user's version); the page
    # with its total, in one statement.
    with django_assert_num_queries(auth_queries() + 2):
        body = client_member.get(ALL).json()
    assert body["total"] == 3 * n_projects
    # Warm: the user's version, the entry and its projects' versions are
    # current, in one cache round trip.
    with django_assert_num_queries(0):
        client_member.get(ALL)
    # Past the end: the page (no rows), then one COUNT for the total; not cached.
    with django_assert_num_queries(auth_queries() + 2):
        assert client_member.get(f"{ALL}?page=99").json()["total"] == 3 * n_projects


def test_a_send_costs_the_next_read_one_query(
    owner, rooms, send, client_member, django_assert_num_queries
):
    general, _, _ = rooms
    send(owner, general, 2)
    client_member.get(ALL)
    send(owner, general, 1, prefix="fresh")
    # The membership ids are still current (same user version): only the page.
    with django_assert_num_queries(auth_queries() + 1):
        assert contents(client_member.get(ALL))[0] == "fresh 0"


def test_one_cache_round_trip_answers_a_warm_read(
    owner, rooms, send, member, client_member, monkeypatch
):
    general, second, _ = rooms
    send(owner, general, 1)
    send(owner, second, 1)
    client_member.get(ALL)  # builds the entry and remembers its projects
    calls = []
    real = chat_cache.cache

    class Counting:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if callable(attr):
                def counted(*args, **kwargs):
                    calls.append(name)
                    return attr(*args, **kwargs)
                return counted
            return attr

    monkeypatch.setattr(chat_cache, "cache", Counting())
    body = selectors.get_all_messages_body(member, page=1, per_page=50)
    assert [m["content"] for m in orjson.loads(body)["items"]] == ["hello 0", "hello 0"]
    assert calls == ["get_many"]


# --- invalidation: every change in any of the caller's projects --------------------


def test_sends_edits_deletes_and_reactions_in_any_project_show_at_once(
    owner, member, rooms, send, client_member, django_capture_on_commit_callbacks
):
    from chat.actions import do_delete_message, do_edit_message
    from chat.reactions import check_add_reaction

    general, second, _ = rooms
    (in_general,) = send(owner, general, 1, prefix="g")
    (in_second,) = send(owner, second, 1, prefix="s")
    assert contents(client_member.get(ALL)) == ["s 0", "g 0"]

    send(owner, second, 1, prefix="s-new")
    assert contents(client_member.get(ALL)) == ["s-new 0", "s 0", "g 0"]
    with django_capture_on_commit_callbacks(execute=True):  # the bumps run after commit
        do_edit_message(in_general, "g edited")
    assert contents(client_member.get(ALL)) == ["s-new 0", "s 0", "g edited"]
    with django_capture_on_commit_callbacks(execute=True):
        check_add_reaction(owner, in_second.pk, "👍")
    item = client_member.get(ALL).json()["items"][1]
    assert item["reactions"] == [{"emoji": "👍", "count": 1, "user_ids": [owner.pk]}]
    with django_capture_on_commit_callbacks(execute=True):
        do_delete_message(in_second)
    item = client_member.get(ALL).json()["items"][1]
    assert (item["id"], item["deleted"], item["content"]) == (in_second.pk, True, "")


def test_a_removed_member_loses_the_projects_messages_at_once(
    owner, member, rooms, send, client_member, django_capture_on_commit_callbacks
):
    general, second, _ = rooms
    send(owner, general, 1, prefix="g")
    send(owner, second, 1, prefix="s")
    assert contents(client_member.get(ALL)) == ["s 0", "g 0"]
    with django_capture_on_commit_callbacks(execute=True):
        do_remove_member(owner, second.pk, member.pk)
    body = client_member.get(ALL).json()
    assert [m["content"] for m in body["items"]] == ["g 0"] and body["total"] == 1


def test_a_deactivated_project_leaves_and_a_joined_one_comes_in(
    owner, member, rooms, send, client_member, django_capture_on_commit_callbacks
):
    general, second, elsewhere = rooms
    send(owner, general, 1, prefix="g")
    send(owner, second, 1, prefix="s")
    send(owner, elsewhere, 1, prefix="e")
    assert contents(client_member.get(ALL)) == ["s 0", "g 0"]
    with django_capture_on_commit_callbacks(execute=True):
        do_deactivate_projects([second.pk])
    assert contents(client_member.get(ALL)) == ["g 0"]
    with django_capture_on_commit_callbacks(execute=True):
        do_join_project(member, elsewhere.pk)
    assert contents(client_member.get(ALL)) == ["e 0", "g 0"]


def test_each_user_reads_only_their_own_entry(owner, member, rooms, send):
    general, _, elsewhere = rooms
    send(owner, general, 1, prefix="g")
    send(owner, elsewhere, 1, prefix="e")
    owner_client, member_client = login_client(owner), login_client(member)
    assert contents(member_client.get(ALL)) == ["g 0"]
    assert contents(owner_client.get(ALL)) == ["e 0", "g 0"]
    assert contents(member_client.get(ALL)) == ["g 0"]


def test_only_the_first_page_at_the_default_size_is_cached(
    owner, member, rooms, send, client_member, monkeypatch
):
    general, _, _ = rooms
    send(owner, general, 3)
    written = []
    real_set = chat_cache.safe_set
    monkeypatch.setattr(chat_cache, "safe_set",
                        lambda key, *a, **k: (written.append(key), real_set(key, *a, **k)))
    for query in ("page=2", "per_page=10", "page=3&per_page=2", "per_page=100"):
        assert client_member.get(f"{ALL}?{query}").status_code == 200
    assert [k for k in written if k.startswith("allmsg:")] == []
    client_member.get(ALL)
    assert [k for k in written if k.startswith("allmsg:")] == [f"allmsg:{member.pk}:1:50"]


# --- parameters and refusals ----------------------------------------------------------


def test_per_page_is_clamped_to_100(owner, rooms, send, client_member):
    general, second, _ = rooms
    send(owner, general, 60)
    send(owner, second, 45)
    body = client_member.get(f"{ALL}?per_page=500").json()
    assert (body["per_page"], len(body["items"]), body["total"]) == (100, 100, 105)
    assert body["has_next"] is True


@pytest.mark.parametrize(("query", "field"), [
    ("page=0", "page"), ("page=abc", "page"), ("per_page=0", "per_page"),
    ("per_page=x", "per_page"), ("project_id=abc", "project_id"),
    ("project_id=0", "project_id"),
])
def test_bad_parameters_are_400(client_member, query, field):
    error = assert_error(client_member.get(f"{ALL}?{query}"), 400, "bad_request")
    assert field in error["fields"]


def test_an_empty_project_id_counts_as_absent(owner, rooms, send, client_member):
    general, _, _ = rooms
    send(owner, general, 1)
    assert client_member.get(f"{ALL}?project_id=").content == client_member.get(ALL).content


def test_without_a_session_it_is_401():
    assert_error(Client().get(ALL), 401)


def test_the_project_form_is_unchanged(owner, project, send, client_member, client_outsider):
    send(owner, project, 3)
    body = client_member.get(f"{ALL}?project_id={project.pk}&per_page=2").json()
    assert [m["seq"] for m in body["items"]] == [3, 2] and body["total"] == 3
    assert_error(client_outsider.get(f"{ALL}?project_id={project.pk}"), 403, "not_member")


def test_openapi_no_longer_requires_project_id(client_member):
    schema = client_member.get("/api/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/messages"]["get"]["parameters"]}
    assert parameters["project_id"]["required"] is False
    assert {"page", "per_page"} <= set(parameters)
