"""The project list caches only the forms clients read: a caller looping over
pages or sizes stores nothing (docs/RELIABILITY.md, "Threat model", 9)."""

from django.core.cache import cache

from conftest import login_client


def plist_keys():
    return [k for k in cache._cache if ":plist:" in k]  # locmem: every stored key


def test_other_pages_and_sizes_store_nothing(member, project):
    client = login_client(member)
    for query in ("page=6", "page=999", "per_page=7", "page=2&per_page=33"):
        assert client.get(f"/api/projects?{query}").status_code == 200
    assert plist_keys() == []


def test_the_first_page_is_cached(member, project, django_assert_num_queries):
    client = login_client(member)
    assert client.get("/api/projects").status_code == 200
    assert len(plist_keys()) == 1
    with django_assert_num_queries(0):
        assert client.get("/api/projects").status_code == 200
