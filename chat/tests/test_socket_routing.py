"""A socket on a path no route matches is refused cleanly: close 4404, nothing logged."""

import logging

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from chatsite.socket_auth import SocketAuthMiddleware

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://testserver")


def app():
    # chatsite.asgi's websocket stack, without importing the server module.
    return StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))


@pytest.mark.parametrize("path", [
    "/ws/you/", "/ws/projects/abc/", "/ws/projects/1/extra/", "/ws/", "/anything",
])
async def test_an_unknown_socket_path_closes_4404_without_an_error(path, caplog):
    comm = WebsocketCommunicator(app(), path, headers=[ORIGIN])
    with caplog.at_level(logging.DEBUG):
        accepted, _ = await comm.connect()
        closed = await comm.receive_output()
        await comm.disconnect()
    assert accepted
    assert closed == {"type": "websocket.close", "code": 4404}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unknown_path_from_a_foreign_origin_is_still_refused_first():
    comm = WebsocketCommunicator(app(), "/ws/you/", headers=[(b"origin", b"http://evil.example")])
    accepted, _ = await comm.connect()
    await comm.disconnect()
    assert not accepted
