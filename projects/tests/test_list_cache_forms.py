"""The project list caches only the forms clients read: a caller looping over
pages or sizes stores nothing (docs/RELIABILITY.md, "Threat model", 9)."""

from chat.tests.test_cache_forms import written  # noqa: F401 - the recording fixture
from conftest import login_client


def list_keys(keys):
    """The list's own entries: the user's skeleton (projects.list_cache)."""
    return [k for k in keys if k.startswith("plskel:")]


def test_other_pages_and_sizes_store_nothing(member, project, written):  # noqa: F811
    client = login_client(member)
    for query in ("page=6", "page=999", "per_page=7", "page=2&per_page=33"):
        assert client.get(f"/api/projects?{query}").status_code == 200
    assert list_keys(written) == []


def test_the_first_page_is_cached(member, project, written,  # noqa: F811
                                  django_assert_num_queries):
    client = login_client(member)
    assert client.get("/api/projects").status_code == 200
    assert len(list_keys(written)) == 1
    with django_assert_num_queries(0):
        assert client.get("/api/projects").status_code == 200
