"""make serve's socket protocol (chatsite/websocket.py, `WS_PROTOCOL`): a browser-like client
that offers permessage-deflate is answered with the small window and no server
context takeover, and messages arrive through it compressed and in order."""

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    login,
    make_live_env,
    post_message,
)

pytestmark = [pytest.mark.live]

PROTOCOL = "chatsite.websocket:SocketProtocol"


@pytest.fixture(scope="module")
def server():
    env, close = make_live_env({"SEND_RATE_PER_USER": "0"})
    started = LiveServer(env, ws=PROTOCOL).start()
    try:
        yield started
    finally:
        started.stop()
        close()


def project_socket(server, session, project_id, compression):
    """A project socket of this session, offering deflate or no extension."""
    return connect(f"{server.ws_url}/ws/projects/{project_id}/", origin=server.url,
                   additional_headers={"Cookie": cookie_header(session)},
                   compression=compression)


def test_deflate_is_agreed_small_and_messages_arrive_in_order(server):
    project_id = create_users_and_project(server.env, ["cws_a"], project_name="Compact")
    session = login(server.url, "cws_a")

    async def run():
        async with project_socket(server, session, project_id, "deflate") as ws:
            agreed = ws.response.headers["Sec-WebSocket-Extensions"]
            assert orjson.loads(await ws.recv())["type"] == "hello"
            sent = [(await asyncio.to_thread(post_message, session, project_id, f"m{i} " * 40)
                     ).json()["id"] for i in range(12)]
            got = []
            while len(got) < len(sent):
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "message_batch":
                    got.extend(m["id"] for m in frame["messages"])
            return agreed, sent, got

    agreed, sent, got = asyncio.run(run())
    assert "permessage-deflate" in agreed
    assert "server_no_context_takeover" in agreed
    assert "server_max_window_bits=10" in agreed and "client_max_window_bits=10" in agreed
    assert got == sent


def test_a_client_without_the_extension_gets_none(server):
    project_id = create_users_and_project(server.env, ["cws_b"], project_name="Plain")
    session = login(server.url, "cws_b")

    async def run():
        async with project_socket(server, session, project_id, None) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(run()) is None
