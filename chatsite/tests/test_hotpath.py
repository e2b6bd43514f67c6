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
    with django_assert_num_queries(2):  # cold: the membership ids and the list, no Django
        first = list_answer(hot, warm)
    with django_assert_num_queries(0):  # current entry: no query
        second = list_answer(hot, warm)
    assert served() == before + 2
    assert first == second == list_answer(plain, warm)
    assert first[0] == 200 and unread(first[2]) == {project.pk: 0}
    send(owner, project, 2)  # retires the entry
    with django_assert_num_queries(1):  # the list's one statement
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

    from projects import selectors

    def down(*args, **kwargs):
        raise OperationalError("the database is down")

    monkeypatch.setattr(selectors, "build_project_list_body", down)
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
