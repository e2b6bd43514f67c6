"""The project page read (one fixed SQL statement): counts, order, paging."""

import orjson
import pytest

from chat.actions import do_delete_message, do_send_message
from projects.actions import do_create_project, do_join_project, do_mark_read
from projects.models import Project
from projects.selectors import get_user_project_page, get_user_projects_body


@pytest.fixture
def projects(owner, member):
    made = {}
    for name in ("beta", "alpha", "gamma", "retired"):
        made[name] = do_create_project(owner, name=name)
        do_join_project(member, made[name].pk)
    do_create_project(owner, name="not mine")
    beta = made["beta"].pk
    kept = [do_send_message(owner, beta, f"b{i}")[0] for i in range(4)]  # seq 1-4
    do_send_message(member, beta, "mine")  # seq 5: own, never unread
    do_send_message(owner, beta, "@member look")  # seq 6: a mention
    gone = do_send_message(owner, beta, "@member gone")[0]  # seq 7
    do_delete_message(gone)  # seq 8: deleted, neither unread nor a mention
    do_mark_read(member, beta, kept[1].seq)  # read up to seq 2
    do_send_message(owner, made["alpha"].pk, "a0")
    Project.objects.filter(pk=made["retired"].pk).update(is_active=False)
    return made


def test_counts_order_and_fields(projects, member):
    page, total = get_user_project_page(member)
    assert total == 3
    assert [p["name"] for p in page] == ["alpha", "beta", "gamma"]
    by_name = {p["name"]: p for p in page}
    # beta: seq 3, 4 and the mention 6 are unread; 5 is the member's own, 7 deleted.
    assert (by_name["beta"]["unread_count"], by_name["beta"]["mention_count"]) == (3, 1)
    assert (by_name["beta"]["last_read_seq"], by_name["beta"]["seq"]) == (2, 8)
    assert (by_name["alpha"]["unread_count"], by_name["alpha"]["mention_count"]) == (1, 0)
    assert (by_name["gamma"]["unread_count"], by_name["gamma"]["seq"]) == (0, 0)
    assert by_name["gamma"]["role"] == "member" and by_name["gamma"]["is_private"] is False
    assert by_name["gamma"]["is_active"] is True
    assert set(by_name["gamma"]) == {
        "id", "name", "kind", "description", "owner_id", "is_private", "is_active",
        "created_at", "seq", "role", "last_read_seq", "unread_count", "mention_count"}
    assert by_name["gamma"]["kind"] == "project"


def test_paging_keeps_the_total(projects, member):
    assert [([p["name"] for p in page], total) for page, total in (
        get_user_project_page(member, offset=0, limit=2),
        get_user_project_page(member, offset=2, limit=2),
        get_user_project_page(member, offset=9, limit=2),
    )] == [(["alpha", "beta"], 3), (["gamma"], 3), ([], 3)]


def test_a_user_with_no_projects(outsider):
    assert get_user_project_page(outsider) == ([], 0)


def test_cached_body_follows_messages_reads_and_memberships(
    projects, owner, member, send, django_assert_num_queries
):
    def unread():
        body = orjson.loads(get_user_projects_body(member, page=1, per_page=50))
        return {p["name"]: p["unread_count"] for p in body["items"]}

    assert unread() == {"alpha": 1, "beta": 3, "gamma": 0}
    with django_assert_num_queries(0):
        assert unread() == {"alpha": 1, "beta": 3, "gamma": 0}  # cached
    send(owner, projects["gamma"], 2)  # bumps gamma's version after commit
    assert unread() == {"alpha": 1, "beta": 3, "gamma": 2}
    do_mark_read(member, projects["beta"].pk, 8)  # bumps the member's version
    assert unread() == {"alpha": 1, "beta": 0, "gamma": 2}
    extra = do_create_project(owner, name="delta")
    do_join_project(member, extra.pk)
    send(owner, extra, 1)
    assert unread() == {"alpha": 1, "beta": 0, "delta": 1, "gamma": 2}
    send(owner, extra, 1)  # the new project's version is followed too
    assert unread()["delta"] == 2


def test_a_message_costs_a_process_two_statements_for_all_members(
    projects, owner, member, make_user, send, monkeypatch, django_assert_num_queries
):
    from django.core.cache import cache

    calls, depth = [], [0]

    def counted(op, real):
        def call(*args, **kwargs):
            if not depth[0]:  # the local-memory cache's get_many calls get per key
                calls.append(op)
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1
        return call

    for op in ("get", "get_many", "set", "add", "incr"):
        monkeypatch.setattr(cache, op, counted(op, getattr(cache, op)))

    other = make_user("other")
    do_join_project(other, projects["gamma"].pk)

    def read(user=member):
        calls.clear()
        return orjson.loads(get_user_projects_body(user, page=1, per_page=50))

    read(other)
    read()  # cold: the skeletons, the projects' cards
    with django_assert_num_queries(0):
        assert read()["total"] == 3
    # The user's version, the skeleton, the projects' versions and reset marks.
    assert calls == ["get_many"]
    send(owner, projects["gamma"], 1)
    # gamma's card is retired: its row and the messages changed since.
    with django_assert_num_queries(2):
        assert {p["name"]: p["unread_count"] for p in read()["items"]}["gamma"] == 1
    assert calls == ["get_many"]  # the cards' reset marks came in the same round trip
    # Every other member's list takes the same card: no statement, no write.
    with django_assert_num_queries(0):
        assert [(p["name"], p["unread_count"]) for p in read(other)["items"]] == [("gamma", 1)]
    assert calls == ["get_many"]
