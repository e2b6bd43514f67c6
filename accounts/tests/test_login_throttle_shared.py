"""One sign-in throttle for every login form: POST /api/auth/login, the /login page
and /admin/login/ check and record against the same per-IP and per-username
counters, so no form is a way around the others."""

import types

import pytest
from django.db import OperationalError, connection
from django.test import Client

from accounts import ratelimit
from accounts.models import LoginFailure
from accounts.tests.test_api import login as api_login
from accounts.tests.test_throttle_fallback import DownCache
from conftest import assert_error

FIXED_NOW = 1_700_000_000.0  # 20 s into its minute: a test never straddles a window
ADMIN_PASSWORD = "root-password-1"


@pytest.fixture(autouse=True)
def frozen_throttle_clock(monkeypatch):
    """Freeze the login limiter's clock only (not Django's)."""
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: FIXED_NOW))


@pytest.fixture
def superuser(make_user):
    return make_user("root", password=ADMIN_PASSWORD, is_staff=True, is_superuser=True)


def admin_login(client, username, password, ip="127.0.0.1"):
    return client.post(
        "/admin/login/",
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=ip,
    )




def page_login(client, username, password, ip="127.0.0.1"):
    return client.post("/login", {"username": username, "password": password}, REMOTE_ADDR=ip)


def signed_in(client):
    return "_auth_user_id" in client.session


def test_admin_login_with_the_right_password_signs_in(superuser):
    client = Client()
    response = admin_login(client, "root", ADMIN_PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert signed_in(client)


def test_admin_login_refuses_the_right_password_after_the_failure_limit(superuser, settings):
    client = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        response = admin_login(client, "root", "wrong")
        assert response.status_code == 200  # the form again, with its error
    response = admin_login(client, "root", ADMIN_PASSWORD)
    assert response.status_code == 200
    assert b"Too many failed sign-ins" in response.content
    assert not signed_in(client)


def test_admin_failures_count_toward_the_api_limit(superuser, settings):
    client = Client()
    for i in range(settings.LOGIN_FAILURE_LIMIT):
        # Different IPs: only the per-username counter, shared with the API, can trip.
        assert admin_login(client, "root", "wrong", ip=f"10.7.0.{i + 1}").status_code == 200
    response = api_login(client, "root", ADMIN_PASSWORD, ip="10.7.0.99")
    assert_error(response, 429, "rate_limited")
    assert not signed_in(client)


def test_api_failures_count_toward_the_admin_limit(superuser, settings):
    client = Client()
    for i in range(settings.LOGIN_FAILURE_LIMIT):
        # Different usernames: only the per-IP counter, shared with the admin, can trip.
        assert api_login(client, f"nobody{i}", "wrong", ip="192.0.2.60").status_code == 401
    response = admin_login(client, "root", ADMIN_PASSWORD, ip="192.0.2.60")
    assert b"Too many failed sign-ins" in response.content
    assert not signed_in(client)
    # Another IP is unaffected.
    assert admin_login(Client(), "root", ADMIN_PASSWORD, ip="192.0.2.61").status_code == 302


def test_failures_on_all_three_forms_add_up(superuser):
    client = Client()
    assert api_login(client, "root", "wrong").status_code == 401
    assert api_login(client, "root", "wrong").status_code == 401
    assert page_login(client, "root", "wrong").status_code == 200
    assert page_login(client, "root", "wrong").status_code == 200
    assert admin_login(client, "root", "wrong").status_code == 200
    assert sorted(ratelimit.failure_counts("127.0.0.1", "root").values()) == [5, 5]
    assert_error(api_login(client, "root", ADMIN_PASSWORD), 429, "rate_limited")
    assert b"Too many failed sign-ins" in page_login(client, "root", ADMIN_PASSWORD).content
    assert b"Too many failed sign-ins" in admin_login(client, "root", ADMIN_PASSWORD).content
    assert not signed_in(client)


def test_right_password_of_a_non_staff_user_on_the_admin_is_no_failure(make_user):
    """The admin refuses a non-staff account with the same message as a wrong
    password, but a right password is no guess: it is not counted."""
    make_user("alice", password="alice-password")
    client = Client()
    response = admin_login(client, "alice", "alice-password")
    assert response.status_code == 200
    assert not signed_in(client)
    assert set(ratelimit.failure_counts("127.0.0.1", "alice").values()) == {0}
    assert admin_login(client, "alice", "wrong").status_code == 200
    assert set(ratelimit.failure_counts("127.0.0.1", "alice").values()) == {1}


def test_admin_login_with_the_throttle_unavailable_is_503_with_retry_after(superuser, monkeypatch):
    monkeypatch.setattr(ratelimit, "cache", DownCache())

    def refuse(execute, sql, params, many, context):
        if LoginFailure._meta.db_table in sql:
            raise OperationalError("connection to server at 127.0.0.1:5432 failed")
        return execute(sql, params, many, context)

    client = Client()
    with connection.execute_wrapper(refuse):
        response = admin_login(client, "root", ADMIN_PASSWORD)
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert b"unavailable" in response.content
    assert not signed_in(client)


def test_admin_login_page_still_renders(db):
    response = Client().get("/admin/login/?next=/admin/")
    assert response.status_code == 200
    assert b'name="password"' in response.content
