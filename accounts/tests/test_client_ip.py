"""The address sign-in failures are counted against (TRUSTED_PROXY_COUNT): behind
trusted proxies each client has its own counter, and no client can pick it."""

import types

import pytest
from django.conf import settings as django_settings
from django.test import Client, RequestFactory

from accounts import ratelimit
from accounts.ratelimit import client_ip
from conftest import assert_error

FIXED_NOW = 1_700_000_000.0  # 20 s into its minute: a test never straddles a window
PROXY = "10.0.0.2"  # REMOTE_ADDR of every request that came through the proxy


@pytest.fixture
def frozen_throttle_clock(monkeypatch):
    """Freeze the login limiter's clock only (not Django's)."""
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: FIXED_NOW))


def request(forwarded_for=None, remote_addr=PROXY):
    headers = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return RequestFactory().post("/api/auth/login", **headers)


def login(client, username, password, forwarded_for):
    return client.post(
        "/api/auth/login",
        {"username": username, "password": password},
        content_type="application/json",
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )


# --- which address ------------------------------------------------------------------


def test_default_trusts_no_proxy_and_ignores_a_spoofed_header():
    assert django_settings.TRUSTED_PROXY_COUNT == 0
    assert client_ip(request("198.51.100.66")) == PROXY


@pytest.mark.parametrize("proxies,forwarded_for,expected", [
    # One proxy: the rightmost entry is the client.
    (1, "203.0.113.9", "203.0.113.9"),
    # The client sent "X-Forwarded-For: 198.51.100.66, 192.0.2.1"; the proxy
    # appended the address it saw: prepending cannot pick the address.
    (1, "198.51.100.66, 192.0.2.1, 203.0.113.9", "203.0.113.9"),
    # client -> CDN (appends the client) -> TLS proxy (appends the CDN) -> app
    (2, "198.51.100.66, 203.0.113.9, 192.0.2.10", "203.0.113.9"),
    # IPv6 entries are normalised.
    (1, "2001:DB8:0:0::1", "2001:db8::1"),
])
def test_the_client_is_the_address_the_outermost_trusted_proxy_saw(
        settings, proxies, forwarded_for, expected):
    settings.TRUSTED_PROXY_COUNT = proxies
    assert client_ip(request(forwarded_for)) == expected


@pytest.mark.parametrize(
    "forwarded_for",
    [
        None,  # no header at all
        "",
        "not-an-address",
        "203.0.113.9:51234",  # address with a port
        "[2001:db8::1]",
        "203.0.113.9, ",  # an empty last entry
        "unknown",
    ],
)
def test_malformed_or_missing_header_falls_back_to_remote_addr(settings, forwarded_for):
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(request("203.0.113.9")) == "203.0.113.9"  # a good header is used
    assert client_ip(request(forwarded_for)) == PROXY


def test_header_with_fewer_entries_than_proxies_falls_back_to_remote_addr(settings):
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(request("203.0.113.9, 192.0.2.10")) == "203.0.113.9"
    assert client_ip(request("192.0.2.10")) == PROXY


# --- the throttle behind a proxy --------------------------------------------------------


def fail_sign_ins(settings, forwarded_for):
    """Fail the limit's worth of sign-ins with different usernames (only the
    per-IP counter can trip); `forwarded_for(i)` is each attempt's header."""
    client = Client()
    for i in range(settings.LOGIN_FAILURE_LIMIT):
        assert login(client, f"nobody{i}", "wrong", forwarded_for(i)).status_code == 401
    return client


@pytest.fixture
def bob(make_user):
    return make_user("bob", password="bob-password")


def test_two_clients_behind_the_proxy_do_not_lock_each_other_out(
    bob, settings, frozen_throttle_clock
):
    settings.TRUSTED_PROXY_COUNT = 1
    client = fail_sign_ins(settings, lambda i: "203.0.113.9")
    assert_error(login(client, "bob", "bob-password", "203.0.113.9"), 429, "rate_limited")
    # Another client through the same proxy (same REMOTE_ADDR) still signs in.
    assert login(Client(), "bob", "bob-password", "203.0.113.10").status_code == 200


def test_a_locked_out_client_cannot_escape_by_prepending_entries(
    bob, settings, frozen_throttle_clock
):
    settings.TRUSTED_PROXY_COUNT = 1
    client = fail_sign_ins(settings, lambda i: "203.0.113.9")
    # It sends "X-Forwarded-For: 198.51.100.7"; the proxy appends its real address.
    response = login(client, "bob", "bob-password", "198.51.100.7, 203.0.113.9")
    assert_error(response, 429, "rate_limited")
    # Only the entry the proxy appended counts, so a real other client is fine.
    assert login(Client(), "bob", "bob-password", "203.0.113.10").status_code == 200


def test_with_no_trusted_proxy_a_rotating_header_does_not_escape_the_limit(
    bob, settings, frozen_throttle_clock
):
    settings.TRUSTED_PROXY_COUNT = 0
    client = fail_sign_ins(settings, lambda i: f"198.51.100.{i}")
    assert_error(login(client, "bob", "bob-password", "198.51.100.99"), 429, "rate_limited")
