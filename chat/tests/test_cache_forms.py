"""Only the history forms the clients read are cached: a member varying before=,
after=, limit=, page= or per_page= reads the database and stores nothing."""

import pytest

from chatsite import cache as chat_cache


class RecordingCache:
    """The cache, recording every key written through chatsite.cache."""

    def __init__(self, real):
        self.real, self.written = real, []

    def set(self, key, *args, **kwargs):
        self.written.append(key)
        return self.real.set(key, *args, **kwargs)

    def add(self, key, *args, **kwargs):
        self.written.append(key)
        return self.real.add(key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def written(monkeypatch):
    recording = RecordingCache(chat_cache.cache)
    monkeypatch.setattr(chat_cache, "cache", recording)
    return recording.written


def history_keys(keys):
    return [k for k in keys if k.split(":", 1)[0] in ("hist", "page", "lock")]


def test_distinct_cursors_limits_and_pages_store_no_cache_entries(
    owner, project, send, client_member, written
):
    send(owner, project, 12)
    url = f"/api/projects/{project.pk}/messages"
    for query in ("", "limit=50"):  # the first page, cached by the last send
        assert client_member.get(f"{url}?{query}").status_code == 200
    written.clear()

    for n in range(1, 11):
        for query in (f"before={n + 1}", f"after={n}", f"limit={n}",
                      f"before={n + 1}&limit={n}", f"after={n}&limit=200"):
            assert client_member.get(f"{url}?{query}").status_code == 200, query
        for query in (f"page={n + 1}", f"per_page={n}", f"page={n}&per_page=3"):
            response = client_member.get(f"/api/messages?project_id={project.pk}&{query}")
            assert response.status_code == 200, query

    assert history_keys(written) == []


@pytest.mark.parametrize("path", [
    "/api/projects/{id}/messages",
    "/api/projects/{id}/messages?limit=50",
    "/api/messages?project_id={id}",
    "/api/messages?project_id={id}&page=1&per_page=50",
])
def test_the_clients_first_pages_are_still_cached(
    path, owner, project, send, client_member, django_assert_num_queries
):
    send(owner, project, 3)
    url = path.format(id=project.pk)
    first = client_member.get(url)
    with django_assert_num_queries(0):
        assert client_member.get(url).content == first.content


def test_an_uncached_form_is_one_query_once_access_is_cached(
    owner, project, send, client_member, django_assert_num_queries
):
    send(owner, project, 3)
    client_member.get(f"/api/projects/{project.pk}/messages")  # caches the access entry
    for query in ("before=3", "before=3"):
        # the page with its authors joined, every time: nothing is cached
        with django_assert_num_queries(1):
            items = client_member.get(
                f"/api/projects/{project.pk}/messages?{query}").json()["items"]
        assert [m["seq"] for m in items] == [2, 1]
