"""The auth API: CSRF token, sign in (with throttling), sign out, who am I."""

import types

import pytest
from django.test import Client

from accounts import ratelimit
from conftest import assert_error

# A fixed instant inside one throttling window, so that a run never straddles
# the minute boundary (the limiter counts per calendar minute).
FIXED_NOW = 1_700_000_000.0  # 20 s into its minute


@pytest.fixture
def frozen_throttle_clock(monkeypatch):
    """Freeze the login limiter's clock only (not Django's)."""
    monkeypatch.setattr(
        ratelimit, "time", types.SimpleNamespace(time=lambda: FIXED_NOW)
    )


def login(client, username, password, ip="127.0.0.1"):
    return client.post(
        "/api/auth/login",
        {"username": username, "password": password},
        content_type="application/json",
        REMOTE_ADDR=ip,
    )


# --- CSRF -------------------------------------------------------------------------


def test_csrf_endpoint_returns_token_and_sets_cookie(db):
    client = Client(enforce_csrf_checks=True)
    response = client.get("/api/auth/csrf")
    assert response.status_code == 200
    token = response.json()["csrf_token"]
    assert token
    assert "csrftoken" in response.cookies


def test_login_without_csrf_token_is_refused(make_user):
    make_user("alice", password="right-password")
    client = Client(enforce_csrf_checks=True)
    error = assert_error(login(client, "alice", "right-password"), 403, "csrf_failed")
    assert "X-CSRFToken" in error["message"]
    assert "sessionid" not in client.cookies


def test_login_with_csrf_token_from_csrf_endpoint_succeeds(make_user):
    make_user("alice", password="right-password")
    client = Client(enforce_csrf_checks=True)
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    response = client.post(
        "/api/auth/login",
        {"username": "alice", "password": "right-password"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200, response.content
    assert response.json()["user"]["username"] == "alice"


# --- sign in --------------------------------------------------------------------


def test_login_with_right_credentials_returns_user_and_starts_session(make_user):
    user = make_user("alice", password="right-password")
    client = Client()
    response = login(client, "alice", "right-password")
    assert response.status_code == 200
    assert response.json() == {"user": {"id": user.pk, "username": "alice"}}
    assert response.cookies["sessionid"].value
    me = client.get("/api/auth/me")
    assert me.status_code == 200
    assert me.json()["user"]["username"] == "alice"


def test_login_with_wrong_password_is_401_and_starts_no_session(make_user):
    make_user("alice", password="right-password")
    client = Client()
    error = assert_error(login(client, "alice", "wrong"), 401, "bad_credentials")
    assert "sessionid" not in client.cookies
    assert error["message"] == "Wrong username or password."
    assert_error(client.get("/api/auth/me"), 401, "not_authenticated")


def test_login_with_unknown_username_is_401_like_a_wrong_password(db):
    assert_error(login(Client(), "nobody", "whatever"), 401, "bad_credentials")


def test_login_with_missing_field_is_422(db):
    response = Client().post(
        "/api/auth/login", {"username": "alice"}, content_type="application/json"
    )
    error = assert_error(response, 422, "invalid")
    assert "password" in error["fields"]


def test_login_with_malformed_json_is_400(db):
    response = Client().post(
        "/api/auth/login", "{not json", content_type="application/json"
    )
    assert_error(response, 400, "bad_request")


# --- throttling -----------------------------------------------------------------


def test_sixth_failure_for_one_username_is_429_with_retry_after(
    make_user, frozen_throttle_clock
):
    make_user("alice", password="right-password")
    client = Client()
    # Each attempt from a different IP: only the per-username counter can trip.
    for i in range(5):
        assert login(client, "alice", "wrong", ip=f"10.0.0.{i + 1}").status_code == 401
    response = login(client, "alice", "wrong", ip="10.0.0.99")
    assert_error(response, 429, "rate_limited")
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 60
    # Blocked means blocked: the right password does not get through either.
    assert login(client, "alice", "right-password", ip="10.0.0.100").status_code == 429
    # Another username from a fresh IP is unaffected.
    make_user("bob", password="bob-password")
    assert login(client, "bob", "bob-password", ip="10.0.0.101").status_code == 200


def test_throttled_username_is_matched_case_insensitively(
    make_user, frozen_throttle_clock
):
    make_user("alice", password="right-password")
    client = Client()
    for i, name in enumerate(["alice", "ALICE", "Alice", "aLiCe", "alicE"]):
        assert login(client, name, "wrong", ip=f"10.0.1.{i + 1}").status_code == 401
    assert login(client, "alice", "wrong", ip="10.0.1.99").status_code == 429


def test_sixth_failure_from_one_ip_is_429_with_retry_after(
    make_user, frozen_throttle_clock
):
    make_user("carol", password="carol-password")
    client = Client()
    # Each attempt for a different username: only the per-IP counter can trip.
    for i in range(5):
        assert login(client, f"nobody{i}", "wrong", ip="192.0.2.7").status_code == 401
    response = login(client, "carol", "carol-password", ip="192.0.2.7")
    assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    # The same user from another IP still signs in.
    assert login(client, "carol", "carol-password", ip="192.0.2.8").status_code == 200


def test_five_failures_do_not_block_yet(make_user, frozen_throttle_clock):
    make_user("alice", password="right-password")
    client = Client()
    for _ in range(4):
        assert login(client, "alice", "wrong").status_code == 401
    assert login(client, "alice", "wrong").status_code == 401  # the 5th is still judged
    assert login(client, "alice", "wrong").status_code == 429  # the 6th is refused


def test_throttling_ends_with_the_minute(make_user, monkeypatch):
    make_user("alice", password="right-password")
    now = {"t": FIXED_NOW}
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: now["t"]))
    client = Client()
    for _ in range(5):
        login(client, "alice", "wrong")
    assert login(client, "alice", "right-password").status_code == 429
    now["t"] += 60
    assert login(client, "alice", "right-password").status_code == 200


# --- me and sign out ---------------------------------------------------------


def test_me_returns_signed_in_user(client_member, member):
    response = client_member.get("/api/auth/me")
    assert response.status_code == 200
    assert response.json() == {"user": {"id": member.pk, "username": "member"}}


def test_me_without_session_is_401(db):
    assert_error(Client().get("/api/auth/me"), 401, "not_authenticated")


def test_logout_is_204_and_ends_the_session(client_member):
    response = client_member.post("/api/auth/logout")
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client_member.get("/api/auth/me"), 401)


def test_logout_without_csrf_token_is_refused(member):
    from conftest import assert_error, login_client

    client = login_client(member, enforce_csrf=True)
    assert_error(client.post("/api/auth/logout"), 403, "csrf_failed")
    assert client.get("/api/auth/me").status_code == 200


def test_logout_without_session_is_401(db):
    assert_error(Client().post("/api/auth/logout"), 401)
