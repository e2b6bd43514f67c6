"""A send whose cache-version bump fails (a Redis blip) is still in the next reads:
through Django's API and through the hot path (chatsite.hotpath)."""

import orjson
import pytest
from django.core.handlers.wsgi import WSGIHandler

from chatsite import cache as chat_cache
from chatsite.hotpath import HotReads
from chatsite.tests.test_hotpath import call, environ, served
from conftest import login_client


class FlakyCache:
    """The cache, with its next `failures` version bumps failing as a Redis blip does."""

    def __init__(self, real, failures):
        self.real, self.failures, self.incr_calls = real, failures, 0

    def incr(self, key, *args, **kwargs):
        if key.startswith("v:"):  # a version key, not the send-rate counter
            self.incr_calls += 1
            if self.failures:
                self.failures -= 1
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return self.real.incr(key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def flaky(monkeypatch):
    """Make the next version bumps fail; the owed bumps are forgotten afterwards."""
    def make(failures):
        flaky_cache = FlakyCache(chat_cache.cache, failures)
        monkeypatch.setattr(chat_cache, "cache", flaky_cache)
        return flaky_cache

    yield make
    with chat_cache._owed_guard:
        chat_cache._owed.clear()
        chat_cache._owed_state["next_try"] = 0.0


@pytest.fixture
def reader(project, member, owner, send):
    """A member whose first history page is cached (hot path and Django agree on it)."""
    send(owner, project, 3)
    client = login_client(member)
    assert client.get(f"/api/projects/{project.pk}/messages").status_code == 200
    hot = HotReads(WSGIHandler())
    before = served()
    assert call(hot, environ(f"/api/projects/{project.pk}/messages", client))[0] == 200
    assert served() == before + 1  # answered from the cache
    return client, hot


def post(owner, project, content, capture):
    author = login_client(owner)
    with capture(execute=True):  # the after-commit work (bump, warm) runs
        response = author.post("/api/messages", {"project_id": project.pk, "content": content},
                               content_type="application/json")
    assert response.status_code == 201
    return response.json()


def newest(body):
    return orjson.loads(body)["items"][0]["content"]


def hot_read(hot, client, project):
    status, _, body = call(hot, environ(f"/api/projects/{project.pk}/messages", client))
    assert status == 200
    return newest(body)


def test_a_send_whose_bump_failed_once_is_in_the_next_reads(
    reader, owner, project, flaky, django_capture_on_commit_callbacks
):
    client, hot = reader
    blip = flaky(1)
    post(owner, project, "acknowledged", django_capture_on_commit_callbacks)
    assert blip.incr_calls == 2  # failed, tried again at once
    assert not chat_cache.is_bump_owed("project", project.pk)

    assert hot_read(hot, client, project) == "acknowledged"
    assert newest(client.get(f"/api/projects/{project.pk}/messages").content) == "acknowledged"


def test_a_bump_that_failed_twice_is_paid_by_the_next_read(
    reader, owner, project, flaky, django_capture_on_commit_callbacks
):
    client, hot = reader
    flaky(2)
    post(owner, project, "acknowledged", django_capture_on_commit_callbacks)
    assert chat_cache.is_bump_owed("project", project.pk)

    assert newest(client.get(f"/api/projects/{project.pk}/messages").content) == "acknowledged"
    assert not chat_cache.is_bump_owed("project", project.pk)
    before = served()
    assert hot_read(hot, client, project) == "acknowledged"
    assert served() == before + 1  # the Django read cached the page again


def test_an_owed_bump_is_paid_by_the_retry_thread_before_any_read(
    reader, owner, project, flaky, django_capture_on_commit_callbacks
):
    client, hot = reader
    flaky(2)
    post(owner, project, "acknowledged", django_capture_on_commit_callbacks)

    chat_cache.pay_owed_bumps(force=True)  # what the retry thread runs once a second

    assert not chat_cache.is_bump_owed("project", project.pk)
    assert hot_read(hot, client, project) == "acknowledged"  # stale: declined to Django
    assert newest(client.get(f"/api/projects/{project.pk}/messages").content) == "acknowledged"


def test_while_the_bump_is_owed_django_reads_the_project_from_the_database(
    reader, owner, project, flaky, django_capture_on_commit_callbacks,
    django_assert_num_queries
):
    client, _ = reader
    down = flaky(10**6)  # incr keeps failing: the bump stays owed
    post(owner, project, "acknowledged", django_capture_on_commit_callbacks)
    assert chat_cache.is_bump_owed("project", project.pk)

    for _ in range(2):
        # the access entry is cached; one SELECT of the page: nothing is served
        # from, or stored in, the cache while the project's bump is owed
        with django_assert_num_queries(1):
            body = client.get(f"/api/projects/{project.pk}/messages").content
        assert newest(body) == "acknowledged"
    assert chat_cache.is_bump_owed("project", project.pk)
    assert down.incr_calls >= 2
