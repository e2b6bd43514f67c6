"""Idempotent send under concurrency (docs/API.md §7, "Send"): one client_msg_id, twenty senders at once.

Against two live server processes sharing PostgreSQL and Redis, the same author
sends the same client_msg_id twenty times at the same moment: ten over HTTP and
ten over sockets, spread over both processes. Exactly one row exists afterwards,
every answer (HTTP 200/201 body, socket ack) carries that row's id, at most one
answer says "created", and every socket sees the message exactly once.
"""

import asyncio
import collections
import threading
import uuid

import orjson
import pytest
import requests
from websockets.asyncio.client import connect

from tests.live import LiveServer, cookie_header, create_users_and_project, login, make_live_env

pytestmark = [pytest.mark.live, pytest.mark.postgres]

ROUNDS = 5
HTTP_SENDERS = 10
SOCKET_SENDERS = 10


@pytest.fixture(scope="module")
def live_env():
    env, close = make_live_env()
    yield env
    close()


def clone(session):
    copy = requests.Session()
    copy.cookies.update(session.cookies)
    copy.csrf, copy.base_url = session.csrf, session.base_url
    return copy


class Socket:
    def __init__(self, server, project_id, session):
        self.server, self.project_id, self.session = server, project_id, session
        self.acks = collections.defaultdict(list)  # client_msg_id -> [message id]
        self.errors = []
        self.delivered = collections.Counter()  # message id -> times seen

    async def open(self):
        self.ws = await connect(
            f"{self.server.ws_url}/ws/projects/{self.project_id}/", origin=self.server.url,
            additional_headers={"Cookie": cookie_header(self.session)})
        assert orjson.loads(await self.ws.recv())["type"] == "hello"
        self.reader = asyncio.create_task(self.read())

    async def read(self):
        async for raw in self.ws:
            frame = orjson.loads(raw)
            if frame["type"] == "ack":
                self.acks[frame["client_msg_id"]].append(frame["message"]["id"])
            elif frame["type"] == "error":
                self.errors.append(frame)
            elif frame["type"] == "message_batch":
                for m in frame["messages"]:
                    self.delivered[m["id"]] += 1

    async def send(self, cid, content):
        await self.ws.send(orjson.dumps(
            {"type": "message.send", "content": content, "client_msg_id": cid}).decode())

    async def close(self):
        await self.ws.close()
        await self.reader


def http_send(session, project_id, cid, content, go):
    go.wait(10)
    r = session.post(session.base_url + "/api/messages",
                     json={"project_id": project_id, "content": content, "client_msg_id": cid},
                     headers={"X-CSRFToken": session.csrf, "Referer": session.base_url + "/"},
                     timeout=30)
    return r.status_code, r.json()


def rows_with(session, project_id, cid):
    r = session.get(f"{session.base_url}/api/projects/{project_id}/messages",
                    params={"after": 0, "limit": 200}, timeout=15)
    r.raise_for_status()
    return [m for m in r.json()["items"] if m["client_msg_id"] == cid]


def test_same_client_msg_id_twenty_times_at_once_makes_one_row(live_env):
    project_id = create_users_and_project(live_env, ["idem", "watcher"], "Idempotent")
    a = LiveServer(live_env).start()
    b = LiveServer(live_env).start()
    try:
        base = {a: login(a.url, "idem"), b: login(b.url, "idem")}
        http_sessions = [clone(base[(a, b)[i % 2]]) for i in range(HTTP_SENDERS)]

        async def main():
            sockets = [Socket((a, b)[i % 2], project_id, base[(a, b)[i % 2]])
                       for i in range(SOCKET_SENDERS)]
            for s in sockets:
                await s.open()
            outcomes = []
            for round_ in range(ROUNDS):
                cid = str(uuid.uuid4())
                content = f"once {round_}"
                go = threading.Event()
                http = [asyncio.create_task(asyncio.to_thread(
                    http_send, s, project_id, cid, content, go)) for s in http_sessions]
                await asyncio.sleep(0.2)  # every HTTP thread waits at the gate
                go.set()
                await asyncio.gather(*(s.send(cid, content) for s in sockets))
                answers = await asyncio.gather(*http)
                deadline = asyncio.get_running_loop().time() + 20
                while (any(not s.acks[cid] for s in sockets)
                       and asyncio.get_running_loop().time() < deadline):
                    if any(s.errors for s in sockets):
                        break
                    await asyncio.sleep(0.05)
                outcomes.append((cid, answers))
            await asyncio.sleep(1.0)  # the last broadcasts reach every socket
            for s in sockets:
                await s.close()
            return sockets, outcomes

        sockets, outcomes = asyncio.run(main())
        assert [e for s in sockets for e in s.errors] == []
        for cid, answers in outcomes:
            rows = rows_with(base[a], project_id, cid)
            assert len(rows) == 1, f"{len(rows)} rows for one client_msg_id"
            row_id = rows[0]["id"]
            statuses = collections.Counter(status for status, _ in answers)
            assert set(statuses) <= {200, 201}, statuses
            assert statuses[201] <= 1
            assert {body["id"] for _, body in answers} == {row_id}
            socket_ids = [s.acks[cid] for s in sockets]
            assert all(ids == [row_id] for ids in socket_ids), socket_ids
            # The one row was broadcast once: each socket saw it exactly once.
            assert [s.delivered[row_id] for s in sockets] == [1] * SOCKET_SENDERS
        total = len(rows_with(base[a], project_id, None)) + sum(
            len(rows_with(base[a], project_id, cid)) for cid, _ in outcomes)
        assert total == ROUNDS  # no other message was created by the retries
    finally:
        a.stop()
        b.stop()
