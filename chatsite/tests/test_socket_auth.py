"""The socket server's sign-in layer: the session cookie's user, else nobody."""

import asyncio

import pytest
from django.conf import settings

from chatsite.socket_auth import SocketAuthMiddleware
from conftest import login_client

pytestmark = pytest.mark.django_db(transaction=True)


def scope_seen(cookie=None):
    """The scope the app behind the layer gets for a handshake with this cookie."""
    seen = {}

    async def inner(scope, receive, send):
        seen.update(scope)

    headers = [(b"origin", b"http://testserver")]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    scope = {"type": "websocket", "path": "/ws/me/", "headers": headers}
    asyncio.run(SocketAuthMiddleware(inner)(scope, None, None))
    return seen


def test_the_session_cookie_signs_the_socket_in(member):
    key = login_client(member).cookies[settings.SESSION_COOKIE_NAME].value
    seen = scope_seen(f"other=1; {settings.SESSION_COOKIE_NAME}={key}")
    assert seen["user"].pk == member.pk and seen["user"].is_authenticated
    assert seen["session"].session_key == key
    assert seen["cookies"]["other"] == "1"


@pytest.mark.parametrize("cookie", [None, "", f"{settings.SESSION_COOKIE_NAME}=forged"])
def test_without_a_valid_session_nobody_is_signed_in(cookie, member):
    seen = scope_seen(cookie)
    assert not seen["user"].is_authenticated


def test_a_signed_out_session_signs_nobody_in(member):
    client = login_client(member)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    client.logout()
    assert not scope_seen(f"{settings.SESSION_COOKIE_NAME}={key}")["user"].is_authenticated
