"""The socket Origin check compares whole origins: scheme, host and port."""

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from chatsite.socket_auth import SocketAuthMiddleware

pytestmark = pytest.mark.django_db(transaction=True)


def app():
    # chatsite.asgi's websocket stack, without importing the server module.
    return StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))


async def handshake(origin, host="127.0.0.1:8000", scheme="ws", extra=()):
    """Return True when the socket got past the Origin check (it was accepted)."""
    headers = [(b"host", host.encode())] if host is not None else []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers.extend(extra)
    comm = WebsocketCommunicator(app(), "/ws/projects/1/", headers=headers)
    comm.scope["scheme"] = scheme
    accepted, _ = await comm.connect()
    await comm.disconnect()
    return accepted


@pytest.mark.parametrize("origin, accepted", [
    ("http://127.0.0.1:8000", True),           # the page the socket was opened from
    ("http://127.0.0.1:6666", False),          # another port of the same host
    ("https://127.0.0.1:8000", False),         # the other scheme
    ("http://localhost:6666", False),
    ("http://evil.example.com:8000", False),
    ("null", False),
    (None, False),
])
async def test_one_server_accepts_only_its_own_origin(origin, accepted):
    assert await handshake(origin) is accepted


async def test_a_host_outside_allowed_hosts_is_refused_even_as_its_own_origin():
    assert await handshake("http://evil.example:8000", host="evil.example:8000") is False


@override_settings(ALLOWED_HOSTS=["chat.example.com"])
async def test_a_secure_socket_takes_https_pages_only():
    assert await handshake("https://chat.example.com", host="chat.example.com",
                           scheme="wss") is True
    assert await handshake("http://chat.example.com", host="chat.example.com",
                           scheme="wss") is False
    assert await handshake("https://chat.example.com:8443", host="chat.example.com",
                           scheme="wss") is False


@override_settings(ALLOWED_HOSTS=["chat.example.com"],
                   SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
async def test_a_tls_proxy_header_makes_the_page_https():
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert await handshake("https://chat.example.com", host="chat.example.com",
                           extra=forwarded) is True
    assert await handshake("http://chat.example.com", host="chat.example.com",
                           extra=forwarded) is False


async def test_make_serve_layout_needs_the_page_origin_trusted():
    # Pages on PORT (8000), sockets on PORT+1: the socket's Host is :8001.
    assert await handshake("http://127.0.0.1:8000", host="127.0.0.1:8001") is False
    with override_settings(CSRF_TRUSTED_ORIGINS=["http://127.0.0.1:8000"]):
        assert await handshake("http://127.0.0.1:8000", host="127.0.0.1:8001") is True
        assert await handshake("http://127.0.0.1:6666", host="127.0.0.1:8001") is False
        assert await handshake("https://127.0.0.1:8000", host="127.0.0.1:8001") is False


@override_settings(CSRF_TRUSTED_ORIGINS=["https://*.example.com"])
async def test_trusted_origins_match_subdomains_as_django_does():
    assert await handshake("https://chat.example.com", host="127.0.0.1:8001") is True
    assert await handshake("https://chat.example.com:8443", host="127.0.0.1:8001") is False
    assert await handshake("http://chat.example.com", host="127.0.0.1:8001") is False
    assert await handshake("https://example.org", host="127.0.0.1:8001") is False


async def test_without_a_host_header_the_default_port_is_assumed():
    # Only in-process tests make such a handshake; "testserver" is an allowed host.
    assert await handshake("http://testserver", host=None) is True
    assert await handshake("http://testserver:6666", host=None) is False
    assert await handshake("https://testserver", host=None) is False
