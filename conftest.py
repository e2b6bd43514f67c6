"""Shared fixtures, built through the project's own actions.

Tests that need PostgreSQL, Redis or a browser skip with a reason when those
are absent, and fail instead when REQUIRE_SERVICES=1 (CI sets it).
"""

import os
import shutil

import pytest

os.environ.setdefault("FAST_PASSWORD_HASHER", "1")

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def _missing(item):
    from django.conf import settings
    from django.db import connection

    if item.get_closest_marker("postgres") and connection.vendor != "postgresql":
        return "needs PostgreSQL: set DATABASE_URL=postgres://..."
    if item.get_closest_marker("redis") and not settings.REDIS_URL:
        return "needs Redis: set REDIS_URL=redis://..."
    if item.get_closest_marker("browser"):
        if not os.path.exists("/usr/bin/chromium"):
            return "needs Chromium at /usr/bin/chromium (apt-get install chromium)"
        try:
            import playwright  # noqa: F401
        except ImportError:
            return "needs the playwright package"
    if item.get_closest_marker("live") and not shutil.which("uvicorn", path=os.path.dirname(
        os.path.abspath(__import__("sys").executable))):
        return "needs uvicorn in the virtualenv"
    return None


def pytest_runtest_setup(item):
    reason = _missing(item)
    if reason:
        if REQUIRE_SERVICES:
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def _media_root(tmp_path_factory):
    """Uploads made by any test (the API fuzzers included) go to a temporary
    MEDIA_ROOT, never into the checkout's media/."""
    from django.conf import settings

    settings.MEDIA_ROOT = str(tmp_path_factory.mktemp("media"))
    yield


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    from projects.list_cache import forget_cards

    cache.clear()
    forget_cards()  # the list's cards of projects whose ids the next test reuses
    yield


@pytest.fixture
def make_user(db):
    from accounts.models import User

    counter = {"n": 0}

    def make(username=None, password="pw-secret-1", **extra):
        counter["n"] += 1
        username = username or f"user{counter['n']}"
        return User.objects.create_user(
            username=username, email=f"{username}@example.com", password=password, **extra
        )

    return make


@pytest.fixture
def owner(make_user):
    return make_user("owner")


@pytest.fixture
def member(make_user):
    return make_user("member")


@pytest.fixture
def outsider(make_user):
    return make_user("outsider")


@pytest.fixture
def project(owner, member):
    from projects.actions import do_create_project, do_join_project

    project = do_create_project(owner, name="General", description="talk")
    do_join_project(member, project.pk)
    return project


@pytest.fixture
def send(db, django_capture_on_commit_callbacks):
    """Send messages through the real action, each with its on-commit work run as
    after a real commit (cache version bump, broadcast); returns the messages."""
    from chat.actions import do_send_message

    def send(user, project, n=1, prefix="hello"):
        sent = []
        for i in range(n):
            with django_capture_on_commit_callbacks(execute=True):
                sent.append(do_send_message(user, project.pk, f"{prefix} {i}")[0])
        return sent

    return send


@pytest.fixture
def api_client(client):
    """A Django test client that enforces CSRF like a browser."""
    from django.test import Client

    return Client(enforce_csrf_checks=True)


def login_client(user, enforce_csrf=False):
    from django.test import Client

    c = Client(enforce_csrf_checks=enforce_csrf)
    c.force_login(user)
    c.get("/api/auth/me")  # warms the cached session and user, as a browser's first page would
    return c


@pytest.fixture
def client_member(member):
    return login_client(member)


@pytest.fixture
def client_owner(owner):
    return login_client(owner)


@pytest.fixture
def client_outsider(outsider):
    return login_client(outsider)


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hasher():
    """Log-in cost is not what the tests measure (settings load before conftest).

    Unit tests also run without collectstatic: plain static storage, whatever a
    live test left in staticfiles/ (hashed names are checked against a live
    server in tests/test_live_static.py). override_settings resets the storages.
    """
    from django.conf import settings
    from django.test.utils import override_settings

    override = override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        STORAGES={
            **settings.STORAGES,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
    )
    override.enable()
    yield
    override.disable()


def auth_queries():
    """Queries a signed-in request spends before the view runs: none.

    The session comes from the cache (cached_db sessions) and the user from the
    cache (accounts.backends.CachedModelBackend), warmed by the client fixtures.
    """
    return 0


def assert_error(response, status, code=None):
    """Assert the single error shape of docs/API.md §3 and return its inner object."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.fixture
def published(monkeypatch):
    """Record what reaches the bus (from any thread), decoded, instead of publishing it."""
    import orjson

    from chat.realtime import notify

    events = []  # list.append is atomic: safe from concurrent sender threads
    monkeypatch.setattr(
        notify, "publish",
        lambda project_id, data: events.append((project_id, orjson.loads(data))),
    )
    return events
