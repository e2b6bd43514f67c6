"""Hot reads from the cache: zero queries when warm, retired by writes, shared safely."""

import threading
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.actions import do_send_message
from chatsite import cache as chat_cache
from conftest import login_client
from projects.actions import do_create_project, do_join_project

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", [
    "/api/projects/{id}/messages",
    "/api/projects/{id}/messages?limit=50",  # the clients' form; other limits are uncached
    "/api/messages?project_id={id}",
    "/api/projects",
])
def test_second_read_is_served_without_touching_the_database(
    path, owner, project, send, client_member, django_assert_num_queries
):
    send(owner, project, 3)
    url = path.format(id=project.pk)
    first = client_member.get(url)
    assert first.status_code == 200
    with django_assert_num_queries(0):
        second = client_member.get(url)
    assert second.content == first.content


def test_send_retires_only_the_affected_projects_entries(
    owner, member, project, send, client_member, django_capture_on_commit_callbacks
):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    send(owner, project, 2)
    send(owner, other, 2)
    url, other_url = (f"/api/projects/{p.pk}/messages" for p in (project, other))
    client_member.get(url)
    client_member.get(other_url)
    with django_capture_on_commit_callbacks(execute=True):  # the bump runs after commit
        do_send_message(owner, project.pk, "fresh")
    items = client_member.get(url).json()["items"]
    assert items[0]["content"] == "fresh"
    with CaptureQueriesContext(connection) as queries:
        client_member.get(other_url)
    assert len(queries) == 0  # the other project's entry is still served


def test_edit_and_delete_retire_the_cached_page(
        owner, project, send, client_member, django_capture_on_commit_callbacks):
    from chat.actions import do_delete_message, do_edit_message

    first, second = send(owner, project, 2)
    client_member.get(f"/api/projects/{project.pk}/messages")
    with django_capture_on_commit_callbacks(execute=True):  # the bumps run after commit
        do_edit_message(first, "changed")
        do_delete_message(second)
    items = client_member.get(f"/api/projects/{project.pk}/messages").json()["items"]
    assert [(m["content"], m["deleted"]) for m in items] == [("", True), ("changed", False)]


def test_unread_counts_in_the_cached_project_list_follow_new_messages_and_reads(
    owner, project, send, client_member
):
    send(owner, project, 2)
    assert client_member.get("/api/projects").json()["items"][0]["unread_count"] == 2
    send(owner, project, 1)
    assert client_member.get("/api/projects").json()["items"][0]["unread_count"] == 3
    client_member.post(f"/api/projects/{project.pk}/read", {"seq": 3},
                       content_type="application/json")
    assert client_member.get("/api/projects").json()["items"][0]["unread_count"] == 0


def test_a_cached_page_never_reaches_a_user_outside_the_project(
    owner, project, send, client_member, client_outsider
):
    send(owner, project, 2)
    assert client_member.get(f"/api/projects/{project.pk}/messages").status_code == 200
    response = client_outsider.get(f"/api/projects/{project.pk}/messages")
    assert response.status_code == 403
    assert b"hello" not in response.content


def test_leaving_drops_access_at_once(owner, member, project, send, client_member):
    send(owner, project, 1)
    assert client_member.get(f"/api/projects/{project.pk}/messages").status_code == 200
    client_member.post(f"/api/projects/{project.pk}/leave")
    assert client_member.get(f"/api/projects/{project.pk}/messages").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_concurrent_cold_reads_build_once():
    calls = []
    start = threading.Barrier(8)

    def build():
        calls.append(1)
        time.sleep(0.2)
        return b"body"

    results = []

    def read():
        start.wait()
        results.append(chat_cache.get_or_build("test:cold-burst", build))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"body"] * 8
    assert len(calls) == 1


def test_cache_result_keys_on_arguments():
    calls = []

    @chat_cache.cache_result(60)
    def square(n, *, plus=0):
        calls.append(n)
        return n * n + plus

    assert square(3) == 9 and square(3) == 9
    assert square(4) == 16
    assert square(3, plus=1) == 10
    assert calls == [3, 4, 3]


def test_make_key_hashes_unsafe_parts():
    key = chat_cache.make_key("x", "a b", "\n" * 3)
    assert " " not in key and "\n" not in key and key.startswith("x:")


DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.redis
def test_reads_and_sends_succeed_with_redis_down(settings, owner, member, project, send):
    send(owner, project, 2)
    client = login_client(member)
    base = settings.CACHES["default"]
    settings.CACHES = {
        "default": {**base, "LOCATION": DEAD_REDIS},
        "sessions": {**settings.CACHES["sessions"], "LOCATION": DEAD_REDIS},
    }
    errors_before = chat_cache.CACHE_ERRORS.labels("get")._value.get()
    for url in (f"/api/projects/{project.pk}/messages", f"/api/messages?project_id={project.pk}",
                "/api/projects", f"/api/projects/{project.pk}"):
        assert client.get(url).status_code == 200, url
    response = client.post("/api/messages", {"project_id": project.pk, "content": "still here"},
                           content_type="application/json")
    assert response.status_code == 201
    assert client.get(f"/api/projects/{project.pk}/messages").json()["items"][0][
        "content"] == "still here"
    assert chat_cache.CACHE_ERRORS.labels("get")._value.get() > errors_before


def test_redis_cache_backends_of_one_cache_share_one_client():
    # Django builds a backend per async context; each socket's task had its own
    # django-redis client (a redis-py client with its own command table).
    from chatsite.cache import SharedClientRedisCache

    params = {"OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"}}
    first = SharedClientRedisCache("redis://127.0.0.1:6379/13", dict(params))
    second = SharedClientRedisCache("redis://127.0.0.1:6379/13", dict(params))
    other = SharedClientRedisCache("redis://127.0.0.1:6379/12", dict(params))
    assert first is not second
    assert first.client is second.client
    assert other.client is not first.client


def test_the_production_caches_take_one_round_trip_paths(settings, monkeypatch):
    # settings.CACHES names chatsite.cache.SharedClientRedisCache: it must still
    # count as django-redis's, or the hot path reads the session and its keys in
    # two trips and the send limiter counts in two.
    from chatsite import cache as chat_cache
    from chatsite import hotpath
    from chatsite.scaleout import redis_client

    if not settings.CACHES["default"]["BACKEND"].startswith("chatsite.cache."):
        pytest.skip("needs the production caches: set REDIS_URL=redis://...")
    assert chat_cache.is_redis_cache("default") and chat_cache.is_redis_cache("sessions")
    trips = []
    real_multi_get = redis_client.multi_get

    def counted(client, keys):
        trips.append(len(keys))
        return real_multi_get(client, keys)

    monkeypatch.setattr(redis_client, "multi_get", counted)
    assert hotpath.fetch([("sessions", "s"), ("default", "a"), ("default", "b")]) == [
        None, None, None]
    assert trips == [3]
    pipelines = []
    real_add = chat_cache._add_in_redis
    monkeypatch.setattr(chat_cache, "_add_in_redis",
                        lambda *args: pipelines.append(args) or real_add(*args))
    assert chat_cache.count_in_window("probe", 10)[0] == 1
    assert len(pipelines) == 1
