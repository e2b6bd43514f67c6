"""The login throttle fails closed (issue #7): while the cache (Redis) is
unreachable the failure counters live in the database, and when neither can be
consulted sign-in answers 503 with Retry-After instead of letting anyone through."""

import logging
import types

import pytest
from django.db import OperationalError, connection
from django.test import Client

from accounts import ratelimit
from accounts.models import LoginFailure
from chatsite.cache import CACHE_ERRORS
from conftest import assert_error

FIXED_NOW = 1_700_000_000.0  # 20 s into its minute: a test never straddles a window
WINDOW = int(FIXED_NOW // 60)


@pytest.fixture
def clock(monkeypatch):
    now = {"t": FIXED_NOW}
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: now["t"]))
    return now


class DownCache:
    """A cache whose every call fails as a Redis client does when Redis is gone."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            self.calls += 1
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return fail


@pytest.fixture
def cache_down(monkeypatch):
    down = DownCache()
    monkeypatch.setattr(ratelimit, "cache", down)
    return down


@pytest.fixture
def real_unreachable_redis(monkeypatch):
    """A real django-redis client pointed at a port nobody listens on: the
    exceptions are the library's own (ConnectionInterrupted), not our mock's."""
    from django_redis.cache import RedisCache

    from tests.live import free_port

    unreachable = RedisCache(f"redis://127.0.0.1:{free_port()}/0", {
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2}})
    monkeypatch.setattr(ratelimit, "cache", unreachable)
    return unreachable


@pytest.fixture
def throttle_table_down():
    """The database refuses every statement on the throttle's table (as it would
    when PostgreSQL is down), while the rest of the database still works, so a
    503 can only come from the throttle refusing, not from the sign-in itself."""

    def refuse(execute, sql, params, many, context):
        if LoginFailure._meta.db_table in sql:
            raise OperationalError("connection to server at 127.0.0.1:5432 failed")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield


def login(client, username, password, ip="127.0.0.1"):
    return client.post(
        "/api/auth/login", {"username": username, "password": password},
        content_type="application/json", REMOTE_ADDR=ip,
    )


def db_counts():
    return dict(LoginFailure.objects.filter(window=WINDOW).values_list("key", "count"))


# --- cache down: the database counts ------------------------------------------------


@pytest.mark.parametrize("outage", ["cache_down", "real_unreachable_redis"])
def test_cache_down_still_blocks_the_sixth_attempt(make_user, clock, outage, request, caplog):
    request.getfixturevalue(outage)
    make_user("alice", password="right-password")
    errors_before = CACHE_ERRORS.labels("login_throttle_write")._value.get()
    client = Client()
    with caplog.at_level(logging.WARNING, logger="accounts.ratelimit"):
        for i in range(5):
            # Different IPs: only the per-username counter can trip.
            assert login(client, "alice", "wrong", ip=f"10.9.0.{i + 1}").status_code == 401
    assert sorted(db_counts().values()) == [1, 1, 1, 1, 1, 5]
    # The sixth attempt is refused even with the right password.
    response = login(client, "alice", "right-password", ip="10.9.0.99")
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert "sessionid" not in client.cookies
    # The fallback is logged and counted.
    assert "event=login_throttle_fallback" in caplog.text
    assert CACHE_ERRORS.labels("login_throttle_write")._value.get() == errors_before + 5


def test_cache_down_per_ip_limit_holds_too(make_user, clock, cache_down):
    make_user("carol", password="carol-password")
    client = Client()
    for i in range(5):
        assert login(client, f"nobody{i}", "wrong", ip="192.0.2.50").status_code == 401
    assert_error(login(client, "carol", "carol-password", ip="192.0.2.50"), 429, "rate_limited")
    # Another IP is unaffected: sign-in works during the outage.
    assert login(client, "carol", "carol-password", ip="192.0.2.51").status_code == 200


def test_cache_down_sign_in_works_and_counts_nothing(make_user, clock, cache_down):
    make_user("alice", password="right-password")
    assert login(Client(), "alice", "right-password").status_code == 200
    assert cache_down.calls >= 1  # the cache was asked (and failed)
    assert db_counts() == {}


def test_failures_counted_during_an_outage_still_count_after_it(
    make_user, clock, monkeypatch
):
    make_user("alice", password="right-password")
    client = Client()
    down = DownCache()
    healthy = ratelimit.cache
    monkeypatch.setattr(ratelimit, "cache", down)
    for _ in range(3):
        assert login(client, "alice", "wrong").status_code == 401
    monkeypatch.setattr(ratelimit, "cache", healthy)  # Redis is back
    for _ in range(2):
        assert login(client, "alice", "wrong").status_code == 401
    assert_error(login(client, "alice", "right-password"), 429, "rate_limited")


def test_database_rows_of_old_minutes_are_pruned_on_write(make_user, clock, cache_down):
    LoginFailure.objects.create(key="ip:old", window=WINDOW - 5, count=3)
    LoginFailure.objects.create(key="ip:recent", window=WINDOW - 1, count=3)
    assert login(Client(), "nobody", "wrong").status_code == 401
    assert not LoginFailure.objects.filter(key="ip:old").exists()
    assert LoginFailure.objects.filter(key="ip:recent").exists()
    # A new minute starts from zero.
    clock["t"] += 60
    for _ in range(5):
        assert login(Client(), "nobody", "wrong").status_code == 401
    assert login(Client(), "nobody", "wrong").status_code == 429


# --- cache and database down: refuse -------------------------------------------------


def test_cache_and_database_down_is_503_with_retry_after(
    make_user, clock, cache_down, throttle_table_down
):
    make_user("alice", password="right-password")
    client = Client()
    for password in ("right-password", "wrong"):
        response = login(client, "alice", password)
        assert_error(response, 503, "unavailable")
        assert int(response["Retry-After"]) >= 1
    assert "sessionid" not in client.cookies
    assert_error(client.get("/api/auth/me"), 401)


def test_failure_that_can_be_recorded_nowhere_is_503_not_401(make_user, clock, monkeypatch):
    """The check could read the cache, but the failure cannot be written to either
    store: answering 401 would be a guess that is never counted."""
    make_user("alice", password="right-password")

    class WriteDown:
        get_many = staticmethod(lambda keys: {})

        def __getattr__(self, name):
            raise ConnectionError("Redis went away")

    monkeypatch.setattr(ratelimit, "cache", WriteDown())

    def refuse_writes(execute, sql, params, many, context):
        if LoginFailure._meta.db_table in sql and not sql.lstrip().upper().startswith("SELECT"):
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_writes):
        response = login(Client(), "alice", "wrong")
    assert_error(response, 503, "unavailable")
    assert "Retry-After" in response


def test_database_down_alone_keeps_the_cache_limit(make_user, clock, throttle_table_down):
    make_user("alice", password="right-password")
    client = Client()
    for _ in range(5):
        assert login(client, "alice", "wrong").status_code == 401
    assert_error(login(client, "alice", "right-password"), 429, "rate_limited")


# --- the sign-in page ------------------------------------------------------------------


def post_page(client, username, password, ip="127.0.0.1"):
    return client.post("/login", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_page_with_cache_down_blocks_the_sixth_attempt(make_user, clock, cache_down):
    make_user("alice", password="right-password")
    client = Client()
    for _ in range(5):
        assert post_page(client, "alice", "wrong").status_code == 200  # form error
    response = post_page(client, "alice", "right-password")
    assert response.status_code == 200
    assert b"Too many failed sign-ins" in response.content
    assert "sessionid" not in client.cookies


def test_page_with_cache_and_database_down_is_503(
    make_user, clock, cache_down, throttle_table_down
):
    make_user("alice", password="right-password")
    client = Client()
    response = post_page(client, "alice", "right-password")
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert b"unavailable" in response.content
    assert "sessionid" not in client.cookies


# --- healthy cache: unchanged -----------------------------------------------------------


def test_healthy_cache_keeps_counters_out_of_the_database(make_user, clock):
    make_user("alice", password="right-password")
    client = Client()
    for _ in range(5):
        assert login(client, "alice", "wrong").status_code == 401
    response = login(client, "alice", "right-password")
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert LoginFailure.objects.count() == 0
    assert sorted(ratelimit.failure_counts("127.0.0.1", "alice").values()) == [5, 5]
