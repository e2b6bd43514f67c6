"""`make serve`'s layout: HTTP on granian (WSGI), sockets on uvicorn, one Redis bus.

The HTTP server never holds a socket: a message sent through it reaches the
socket server's clients only through Redis pub/sub, and the page it renders
tells the browser where the socket server is (WS_PUBLIC_URL).
"""

import asyncio
import json
import re

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    free_port,
    login,
    make_live_env,
    post_message,
)

pytestmark = [pytest.mark.live, pytest.mark.redis]


@pytest.fixture(scope="module")
def split():
    env, close = make_live_env()
    page_port = free_port()
    # The socket server accepts the pages' origin, on another port, only when
    # told it (chatsite.origin).
    sockets = LiveServer(env, workers=1, extra_env={
        "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{page_port}"}).start()
    http = LiveServer(env, port=page_port, workers=2, http="granian",
                      extra_env={"WS_PUBLIC_URL": sockets.ws_url}).start()
    yield env, http, sockets
    http.stop()
    sockets.stop()
    close()


def test_page_points_the_browser_at_the_socket_server(split):
    env, http, sockets = split
    pid = create_users_and_project(env, ["sp_page"], project_name="Split page")
    session = login(http.url, "sp_page")
    html = session.get(f"{http.url}/projects/{pid}/", timeout=10).text
    state = json.loads(re.search(r'<script id="chat-state" type="application/json">(.*?)</script>',
                                 html, re.S).group(1))
    assert state["wsBase"] == sockets.ws_url
    assert state["projectId"] == pid


def test_message_sent_over_granian_reaches_a_socket_on_uvicorn(split):
    env, http, sockets = split
    pid = create_users_and_project(env, ["sp_a", "sp_b"], project_name="Split delivery")
    sender = login(http.url, "sp_a")
    reader = login(http.url, "sp_b")  # the session cookie works on either port

    async def scenario():
        # The browser's Origin is the page's (the HTTP server's), not the socket's.
        async with connect(f"{sockets.ws_url}/ws/projects/{pid}/", origin=http.url,
                           additional_headers={"Cookie": cookie_header(reader)}) as ws:
            hello = orjson.loads(await ws.recv())
            assert hello["type"] == "hello"
            sent = []
            for i in range(5):
                r = await asyncio.to_thread(post_message, sender, pid, f"split {i}")
                assert r.status_code == 201, r.text
                sent.append(r.json()["id"])
            got = []
            while len(got) < len(sent):
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "message_batch":
                    got.extend(m["id"] for m in frame["messages"])
            return sent, got

    sent, got = asyncio.run(scenario())
    assert got == sent  # every message, once, in order

    # The cached history read on the HTTP server shows them, newest first.
    body = reader.get(f"{http.url}/api/projects/{pid}/messages?limit=5", timeout=10).json()
    assert [m["id"] for m in body["items"]] == sent[::-1]
