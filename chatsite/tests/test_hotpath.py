"""The hot path (chatsite/hotpath.py) answers exactly what Django would, or declines.

Each test drives the WSGI application as a server would: the hot path in front
of Django's handler, and Django's handler alone for the reference answer.
"""

import gzip
import io
import sys

import brotli
import orjson
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from prometheus_client import REGISTRY

from chat.actions import do_send_message
from chatsite.hotpath import HotReads
from conftest import login_client


def environ(path, client=None, *, query="", host="testserver", headers=None):
    cookie = "; ".join(f"{k}={m.value}" for k, m in client.cookies.items()) if client else ""
    env = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "HTTP_HOST": host,
        "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if cookie:
        env["HTTP_COOKIE"] = cookie
    for name, value in (headers or {}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def call(app, env):
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = headers

    # As django.test.Client does: the test's transaction keeps its connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = app(env, start_response)
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return seen["status"], dict(seen["headers"]), body


def served():
    return REGISTRY.get_sample_value("chat_hot_path_total", {"result": "served"}) or 0


def declined(reason):
    return REGISTRY.get_sample_value("chat_hot_path_total", {"result": reason}) or 0


@pytest.fixture
def apps():
    django_app = WSGIHandler()
    return HotReads(django_app), django_app


@pytest.fixture
def warm(project, member, send):
    """A member whose first history page, access entry, session and user are cached."""
    send(member, project, 3)
    client = login_client(member)
    assert client.get(f"/api/projects/{project.pk}/messages").status_code == 200
    return client


def messages_path(project):
    return f"/api/projects/{project.pk}/messages"


def test_cached_page_is_served_with_no_query_and_the_same_answer_as_django(
        apps, warm, project, django_assert_num_queries):
    hot, plain = apps
    env = environ(messages_path(project), warm)
    labels = {"method": "GET", "endpoint": "/api/projects/{project_id}/messages",
              "status": "200"}
    before, counted = served(), REGISTRY.get_sample_value("http_requests_total", labels) or 0
    with django_assert_num_queries(0):
        status, headers, body = call(hot, env)
    assert served() == before + 1
    # Counted in the guide's request metrics like any other request.
    assert REGISTRY.get_sample_value("http_requests_total", labels) == counted + 1
    ref_status, ref_headers, ref_body = call(plain, environ(messages_path(project), warm))
    assert (status, body) == (ref_status, ref_body) == (200, ref_body)
    assert [m["content"] for m in orjson.loads(body)["items"]] == [
        "hello 2", "hello 1", "hello 0"]
    for h in (headers, ref_headers):
        h.pop("X-Request-ID")
    assert headers == ref_headers


@pytest.mark.parametrize("accept", ["br", "gzip", "gzip, deflate, br", ""])
def test_compression_matches_django(apps, project, member, send, accept):
    send(member, project, 40, prefix="a fairly long message to pass the threshold")
    client = login_client(member)
    client.get(messages_path(project))
    hot, plain = apps
    before = served()
    status, headers, body = call(hot, environ(messages_path(project), client,
                                              headers={"Accept-Encoding": accept}))
    assert served() == before + 1
    _, ref_headers, ref_body = call(plain, environ(messages_path(project), client,
                                                  headers={"Accept-Encoding": accept}))
    assert headers.get("Content-Encoding") == ref_headers.get("Content-Encoding")
    assert headers["Vary"] == ref_headers["Vary"] == "Cookie, Accept-Encoding"
    decode = {"br": brotli.decompress, "gzip": gzip.decompress, None: lambda b: b}
    encoding = headers.get("Content-Encoding")
    assert encoding == ("br" if "br" in accept else "gzip" if accept else None)
    assert orjson.loads(decode[encoding](body)) == orjson.loads(decode[encoding](ref_body))
    assert int(headers["Content-Length"]) == len(body)


def test_limit_query_is_served_and_other_queries_go_to_django(apps, warm, project):
    hot, _ = apps
    before = served()
    status, _, body = call(hot, environ(messages_path(project), warm, query="limit=50"))
    assert (status, served()) == (200, before + 1)
    status, _, body = call(hot, environ(messages_path(project), warm, query="limit=2"))
    assert status == 200 and len(orjson.loads(body)["items"]) == 2  # Django filled it
    status, _, body = call(hot, environ(messages_path(project), warm, query="before=3"))
    assert status == 200 and [m["seq"] for m in orjson.loads(body)["items"]] == [2, 1]
    assert served() == before + 1


def test_anonymous_and_outsider_get_djangos_refusals(apps, warm, project, outsider):
    hot, _ = apps
    status, _, body = call(hot, environ(messages_path(project)))
    assert status == 401 and orjson.loads(body)["error"]["code"] == "not_authenticated"
    stranger = login_client(outsider)
    before = served()
    for _ in range(2):  # the second time the access entry is cached: still refused
        status, _, body = call(hot, environ(messages_path(project), stranger))
        assert status == 403
    assert served() == before


def test_signed_out_session_is_refused_at_once(apps, warm, project):
    hot, _ = apps
    assert call(hot, environ(messages_path(project), warm))[0] == 200  # learns the session
    env = environ(messages_path(project), warm)
    warm.post("/api/auth/logout")
    before = served()
    status, _, _ = call(hot, env)  # the old cookie
    assert status == 401 and served() == before


def test_changed_password_invalidates_the_session(apps, warm, project, member):
    hot, _ = apps
    env = environ(messages_path(project), warm)
    assert call(hot, env)[0] == 200
    member.set_password("another-secret-9")
    member.save()
    before = served()
    assert call(hot, environ(messages_path(project), warm))[0] == 401
    assert served() == before


def test_deactivated_user_and_removed_member_are_refused(apps, warm, project, member):
    from projects.models import Membership

    hot, _ = apps
    assert call(hot, environ(messages_path(project), warm))[0] == 200
    Membership.objects.filter(user=member, project=project).delete()
    assert call(hot, environ(messages_path(project), warm))[0] == 403
    member.is_active = False
    member.save()
    assert call(hot, environ(messages_path(project), warm))[0] == 401


def test_a_send_rebuilds_the_cached_first_page(
    apps, warm, project, member, send, django_assert_num_queries
):
    hot, _ = apps
    call(hot, environ(messages_path(project), warm))
    send(member, project, 1, prefix="fresh")  # runs its after-commit work
    before, before_stale = served(), declined("stale")
    with django_assert_num_queries(0):
        status, _, body = call(hot, environ(messages_path(project), warm))
    assert (status, served(), declined("stale")) == (200, before + 1, before_stale)
    assert orjson.loads(body)["items"][0]["content"] == "fresh 0"


def test_a_change_without_its_rebuild_is_declined_as_stale(apps, warm, project, member):
    from chatsite.cache import bump_version

    hot, _ = apps
    call(hot, environ(messages_path(project), warm))
    do_send_message(member, project.pk, "fresh")  # its after-commit work never ran
    bump_version("project", project.pk)  # another process's bump, before its rebuild
    before_stale = declined("stale")
    status, _, body = call(hot, environ(messages_path(project), warm))
    assert declined("stale") == before_stale + 1  # Django rebuilt it
    assert orjson.loads(body)["items"][0]["content"] == "fresh"
    before = served()
    status, _, body = call(hot, environ(messages_path(project), warm))
    assert served() == before + 1 and orjson.loads(body)["items"][0]["content"] == "fresh"


def test_disallowed_host_gets_djangos_400(apps, warm, project):
    hot, _ = apps
    before = served()
    status, _, _ = call(hot, environ(messages_path(project), warm, host="evil.example"))
    assert status == 400 and served() == before


def test_cache_outage_falls_back_to_django(apps, warm, project, monkeypatch):
    import django_redis
    from django.core.cache import caches

    hot, _ = apps

    class Down:
        def mget(self, keys):
            raise ConnectionError("redis is down")

    def down(*args, **kwargs):
        raise ConnectionError("cache is down")

    monkeypatch.setattr(django_redis, "get_redis_connection", lambda alias: Down())
    monkeypatch.setattr(caches["default"], "get_many", down)
    before, errors = served(), declined("cache_error")
    status, _, body = call(hot, environ(messages_path(project), warm))
    assert status == 200 and len(orjson.loads(body)["items"]) == 3  # from the database
    assert served() == before and declined("cache_error") == errors + 1


def test_off_switch(apps, warm, project, settings):
    settings.CACHE_HOT_READS = False
    hot, _ = apps
    before = served()
    assert call(hot, environ(messages_path(project), warm))[0] == 200
    assert served() == before


def test_left_out_when_sessions_are_not_in_the_cache(settings):
    from chatsite.hotpath import wrap

    app = WSGIHandler()
    assert isinstance(wrap(app), HotReads)
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    assert wrap(app) is app
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    settings.HOT_PATH = False
    assert wrap(app) is app


@pytest.mark.parametrize("forwarded", ["https", "http"])
def test_behind_a_tls_proxy_the_answer_matches_django_hsts_included(
        warm, project, settings, forwarded):
    # Production shape: a TLS proxy in front sets X-Forwarded-Proto.
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    plain = WSGIHandler()  # built after the settings: SecurityMiddleware reads them once
    hot = HotReads(plain)
    headers_in = {"X-Forwarded-Proto": forwarded}
    before = served()
    status, headers, body = call(hot, environ(messages_path(project), warm, headers=headers_in))
    assert served() == before + 1
    ref_status, ref_headers, ref_body = call(
        plain, environ(messages_path(project), warm, headers=headers_in))
    assert (status, body) == (ref_status, ref_body)
    for h in (headers, ref_headers):
        h.pop("X-Request-ID")
    assert headers == ref_headers
    assert ("Strict-Transport-Security" in headers) == (forwarded == "https")


def test_ssl_redirect_is_left_to_django(warm, project, settings):
    settings.SECURE_SSL_REDIRECT = True
    hot = HotReads(WSGIHandler())
    before = served()
    status, headers, _ = call(hot, environ(messages_path(project), warm))
    assert status == 301 and headers["Location"].startswith("https://")
    assert served() == before


# --- the guide's page-numbered history: /api/messages?project_id= ------------------------


MESSAGE_PAGE = "/api/messages"


def page_answer(app, client, query, headers=None):
    status, headers, body = call(app, environ(MESSAGE_PAGE, client, query=query,
                                              headers=headers))
    headers.pop("X-Request-ID", None)
    return status, headers, body


@pytest.fixture
def warm_page(warm, project):
    """`warm`, with the project's page-numbered first page cached too."""
    assert warm.get(f"{MESSAGE_PAGE}?project_id={project.pk}").status_code == 200
    return warm


def test_page_numbered_first_page_is_served_with_no_query_and_djangos_answer(
        apps, warm_page, project, django_assert_num_queries):
    hot, plain = apps
    query = f"project_id={project.pk}"
    labels = {"method": "GET", "endpoint": MESSAGE_PAGE, "status": "200"}
    hits = {"name": "message_page", "result": "hit"}
    before = served()
    counted = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    hit = REGISTRY.get_sample_value("chat_cache_lookups_total", hits) or 0
    with django_assert_num_queries(0):
        answer = page_answer(hot, warm_page, query)
    assert served() == before + 1
    # Counted as Django counts this route: the request, and the cache hit.
    assert REGISTRY.get_sample_value("http_requests_total", labels) == counted + 1
    assert REGISTRY.get_sample_value("chat_cache_lookups_total", hits) == hit + 1
    assert answer == page_answer(plain, warm_page, query)
    page = orjson.loads(answer[2])
    assert [m["content"] for m in page["items"]] == ["hello 2", "hello 1", "hello 0"]
    assert {k: page[k] for k in ("total", "page", "per_page", "has_next", "has_prev")} == {
        "total": 3, "page": 1, "per_page": 50, "has_next": False, "has_prev": False}


def test_page_numbered_forms_of_the_cached_slot_are_served_the_rest_go_to_django(
        apps, warm_page, project, member, send):
    hot, plain = apps
    pid = project.pk
    # The query forms whose body is the cached slot: page 1 at the default size.
    for query in (f"project_id={pid}", f"project_id={pid}&page=1",
                  f"per_page=50&project_id={pid}", f"page=1&per_page=50&project_id={pid}"):
        before = served()
        answer = page_answer(hot, warm_page, query)
        assert served() == before + 1, query
        assert answer == page_answer(plain, warm_page, query), query
    # Everything else is Django's, which answers as it always does: the
    # all-messages view (no project_id), other pages and sizes, bad values,
    # repeated or extra parameters, numbers not in their plain form.
    send(member, project, 1, prefix="another")  # the all-messages view is cached per user
    for query in ("", "page=1&per_page=50", "project_id=", f"project_id={pid}&page=2",
                  f"project_id={pid}&per_page=2", f"project_id={pid}&per_page=500",
                  f"project_id={pid}&per_page=100", "project_id=0", "project_id=x",
                  f"project_id={pid}&project_id={pid}", f"project_id={pid}&",
                  f"project_id={pid}&sort=seq", f"project_id=0{pid}",
                  f"project_id={pid}&page=01", f"project_id={pid}&page=0",
                  f"project_id={pid}&per_page=50.0", "project_id=1" + "0" * 18):
        before = served()
        answer = page_answer(hot, warm_page, query)
        assert served() == before, query  # Django answered
        assert answer == page_answer(plain, warm_page, query), query
    assert page_answer(hot, warm_page, "project_id=x")[0] == 400
    assert page_answer(hot, warm_page, f"project_id={pid}&page=0")[0] == 400
    assert orjson.loads(page_answer(hot, warm_page, "")[2])["total"] == 4  # all messages
    assert [m["seq"] for m in orjson.loads(
        page_answer(hot, warm_page, f"project_id={pid}&per_page=2")[2])["items"]] == [4, 3]


def test_page_numbered_refusals_are_djangos(apps, warm_page, project, owner, outsider):
    from projects.actions import do_create_project

    hot, plain = apps
    query = f"project_id={project.pk}"
    before = served()
    status, _, body = page_answer(hot, None, query)
    assert status == 401 and orjson.loads(body)["error"]["code"] == "not_authenticated"
    stranger = login_client(outsider)
    hidden = do_create_project(owner, name="Hidden", is_private=True)
    for target, code in ((project.pk, 403), (hidden.pk, 404), (10**9, 404)):
        # The second time the access entry is cached: still Django's refusal.
        for _ in range(2):
            answer = page_answer(hot, stranger, f"project_id={target}")
            assert answer[0] == code, target
            assert answer == page_answer(plain, stranger, f"project_id={target}")
    warm_page.post("/api/auth/logout")
    assert page_answer(hot, warm_page, query)[0] == 401
    assert served() == before


def test_page_numbered_page_after_a_send_edit_and_delete_equals_djangos(
        apps, warm_page, project, member, send, django_capture_on_commit_callbacks,
        django_assert_num_queries):
    from chat.actions import do_delete_message, do_edit_message

    hot, plain = apps
    query = f"project_id={project.pk}"
    assert orjson.loads(page_answer(hot, warm_page, query)[2])["total"] == 3
    (fresh,) = send(member, project, 1, prefix="fresh")  # bumps the project's version
    stale = declined("stale")
    answer = page_answer(hot, warm_page, query)  # retired: Django reads it again
    assert declined("stale") == stale + 1
    page = orjson.loads(answer[2])
    assert (page["total"], page["items"][0]["content"]) == (4, "fresh 0")
    before = served()
    with django_assert_num_queries(0):
        again = page_answer(hot, warm_page, query)
    assert served() == before + 1
    assert again == answer == page_answer(plain, warm_page, query)
    for change, content in ((lambda: do_edit_message(fresh, "edited"), "edited"),
                            (lambda: do_delete_message(fresh), "")):
        with django_capture_on_commit_callbacks(execute=True):
            change()
        page_answer(hot, warm_page, query)  # stale: Django rebuilds the slot
        before = served()
        answer = page_answer(hot, warm_page, query)
        assert served() == before + 1
        assert answer == page_answer(plain, warm_page, query)
        page = orjson.loads(answer[2])
        assert (page["total"], page["items"][0]["content"]) == (4, content)  # tombstones count


@pytest.mark.parametrize("accept", ["br", "gzip", "identity", ""])
def test_page_numbered_compression_matches_django(apps, project, member, send, accept):
    send(member, project, 40, prefix="a fairly long message to pass the threshold")
    client = login_client(member)
    query = f"project_id={project.pk}"
    client.get(f"{MESSAGE_PAGE}?{query}")
    hot, plain = apps
    for _ in range(2):  # the second answer is the kept compressed form
        before = served()
        answer = page_answer(hot, client, query, headers={"Accept-Encoding": accept})
        assert served() == before + 1
        assert answer == page_answer(plain, client, query, headers={"Accept-Encoding": accept})
    status, headers, body = answer
    encoding = headers.get("Content-Encoding")
    assert encoding == {"br": "br", "gzip": "gzip"}.get(accept)
    assert headers["Vary"] == "Cookie, Accept-Encoding"
    decode = {"br": brotli.decompress, "gzip": gzip.decompress, None: lambda b: b}
    assert orjson.loads(decode[encoding](body))["total"] == 40
    assert int(headers["Content-Length"]) == len(body)


def test_an_owed_version_bump_sends_cached_pages_to_django(apps, warm_page, project,
                                                           monkeypatch):
    """While this process owes the project a version bump (the cache refused one),
    its cached pages may be behind: Django reads them from the database."""
    from chatsite import cache

    hot, _ = apps
    monkeypatch.setattr(cache, "is_bump_owed", lambda scope, ident: True)
    before, owed = served(), declined("owed")
    for path, query in ((messages_path(project), ""),
                        (MESSAGE_PAGE, f"project_id={project.pk}")):
        assert call(hot, environ(path, warm_page, query=query))[0] == 200
    assert (served(), declined("owed")) == (before, owed + 2)


# --- the project list ------------------------------------------------------------------


LIST = "/api/projects"


def list_answer(app, client, query="", headers=None):
    status, headers, body = call(app, environ(LIST, client, query=query, headers=headers))
    headers.pop("X-Request-ID", None)
    return status, headers, body


def unread(body):
    return {p["id"]: p["unread_count"] for p in orjson.loads(body)["items"]}


def test_project_list_is_served_with_djangos_answer(apps, warm, project, owner, send,
                                                    django_assert_num_queries):
    hot, plain = apps
    before = served()
    with django_assert_num_queries(3):  # cold: skeleton, project, tail; no Django
        first = list_answer(hot, warm)
    with django_assert_num_queries(0):  # current entry: no query
        second = list_answer(hot, warm)
    assert served() == before + 2
    assert first == second == list_answer(plain, warm)
    assert first[0] == 200 and unread(first[2]) == {project.pk: 0}
    send(owner, project, 2)  # retires the project's card
    with django_assert_num_queries(2):  # the project's row and its changes since
        status, _, body = list_answer(hot, warm)
    assert (status, unread(body), served()) == (200, {project.pk: 2}, before + 3)


def test_project_list_query_forms(apps, warm, project):
    hot, plain = apps
    for query in ("page=1&per_page=50", "per_page=500&page=1", "page=2"):
        before = served()
        answer = list_answer(hot, warm, query)
        assert served() == before + 1, query
        assert answer == list_answer(plain, warm, query), query
    assert orjson.loads(list_answer(hot, warm, "per_page=500")[2])["per_page"] == 100
    # Malformed or other queries, and forms the list does not cache (other sizes,
    # later pages: projects.selectors.is_cached_list_form), are Django's.
    for query in ("page=0", "page=x", "page=1&page=2", "per_page=10.0", "sort=name",
                  "page=1&", "page=1234567890", "page=1&per_page=2", "page=6"):
        before = served()
        answer = list_answer(hot, warm, query)
        assert served() == before, query  # Django answered
        assert answer == list_answer(plain, warm, query), query
    assert list_answer(hot, warm, "page=0")[0] == 400


def test_project_list_refuses_like_django(apps, warm, member):
    hot, _ = apps
    before = served()
    status, _, body = list_answer(hot, None)
    assert status == 401 and orjson.loads(body)["error"]["code"] == "not_authenticated"
    warm.post("/api/auth/logout")
    assert list_answer(hot, warm)[0] == 401
    assert served() == before


def test_project_list_compression_matches_django(apps, owner, member):
    from projects.actions import do_create_project, do_join_project

    for i in range(12):
        project = do_create_project(owner, name=f"room {i}", description="a long description " * 4)
        do_join_project(member, project.pk)
    client = login_client(member)
    hot, plain = apps
    for accept in ("br", "gzip", ""):
        status, headers, body = list_answer(hot, client, headers={"Accept-Encoding": accept})
        assert (status, headers, body) == list_answer(plain, client,
                                                      headers={"Accept-Encoding": accept})
        assert headers.get("Content-Encoding") == (accept or None)
        assert headers["Vary"] == "Cookie, Accept-Encoding"


def test_project_list_database_outage_gets_djangos_503(apps, warm, monkeypatch):
    from django.db import OperationalError

    from projects import list_cache

    def down(*args, **kwargs):
        raise OperationalError("the database is down")

    monkeypatch.setattr(list_cache, "read_skeleton", down)
    hot, plain = apps
    before = served()
    answer = list_answer(hot, warm)
    assert served() == before + 1
    assert answer == list_answer(plain, warm)
    status, headers, body = answer
    assert (status, headers["Retry-After"]) == (503, "5")
    assert orjson.loads(body)["error"]["code"] == "unavailable"


def test_a_current_list_is_answered_without_djangos_request_signals(apps, warm, project,
                                                                     member, send):
    """A hit needs no database, so no connection to hand back: no signals (they
    were 18 % of a hot list read's profile). A miss reads the database inside them."""
    hot, _ = apps
    sent = []

    def count(sender, **kwargs):
        sent.append(sender)

    list_answer(hot, warm)  # the entry and the remembered project ids are current
    request_started.connect(count)
    try:
        assert list_answer(hot, warm)[0] == 200
        assert sent == []
        send(member, project, 1)  # retires the entry
        assert list_answer(hot, warm)[0] == 200
        assert len(sent) == 1
    finally:
        request_started.disconnect(count)
