"""Delivery through real server processes: complete, in order, once (docs/REALTIME.md; docs/PROTOCOL.md §5-§6)."""

import asyncio
import random
import threading
import uuid

import orjson
import pytest
import websockets
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


@pytest.fixture(scope="module")
def live_env():
    env, close = make_live_env()
    yield env
    close()


class SocketClient:
    """Records every change it is sent; reconnects with after = last changed_seq."""

    def __init__(self, server, project_id, session):
        self.server, self.project_id, self.session = server, project_id, session
        self.seqs = []
        self.last = 0
        self.ws = None
        self.connected = asyncio.Event()
        self.acks = {}

    async def open(self):
        url = f"{self.server.ws_url}/ws/projects/{self.project_id}/"
        if self.last:
            url += f"?after={self.last}"
        self.ws = await connect(
            url, origin=self.server.url, additional_headers={"Cookie": cookie_header(self.session)},
            max_size=2**24,
        )
        hello = orjson.loads(await self.ws.recv())
        assert hello["type"] == "hello"
        self.connected.set()

    async def read_until_closed(self):
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                if frame["type"] == "message_batch":
                    for m in frame["messages"]:
                        self.seqs.append(m["changed_seq"])
                        self.last = max(self.last, m["changed_seq"])
                elif frame["type"] == "ack":
                    self.acks[frame["client_msg_id"]] = frame["message"]
                elif frame["type"] == "resync_required":
                    raise AssertionError("resync_required in a delivery test")
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connected.clear()

    async def wait_for(self, seq, timeout=60):
        deadline = asyncio.get_running_loop().time() + timeout
        while self.last < seq:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"reached {self.last} of {seq}")
            await asyncio.sleep(0.05)


async def send_over_socket(client, count, prefix):
    for i in range(count):
        cid = str(uuid.uuid4())
        await client.ws.send(orjson.dumps(
            {"type": "message.send", "content": f"{prefix}{i}", "client_msg_id": cid}).decode())
        await asyncio.sleep(0.12)  # under the per-connection rate limit


def test_fifty_clients_one_flapping_get_every_message_once_in_order(live_env):
    users = [f"d{i}" for i in range(50)]
    project_id = create_users_and_project(live_env, users, "Delivery")
    # 950 sends from five users in seconds: far over the per-user send limit,
    # which this test is not about.
    server = LiveServer(live_env, extra_env={"SEND_RATE_PER_USER": "0"}).start()
    try:
        sessions = [login(server.url, u) for u in users]
        total_http, senders, socket_count = 950, 5, 50

        async def main():
            clients = [SocketClient(server, project_id, s) for s in sessions]
            for c in clients:
                await c.open()
            readers = [asyncio.create_task(c.read_until_closed()) for c in clients]
            flapper = clients[-1]
            stop = asyncio.Event()

            async def flap():
                rng = random.Random(7)
                while not stop.is_set():
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    await flapper.ws.close()
                    await readers[-1]
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    await flapper.open()
                    readers[-1] = asyncio.create_task(flapper.read_until_closed())

            def http_sender(k):
                for i in range(total_http // senders):
                    r = post_message(sessions[k], project_id, f"s{k}-{i}", str(uuid.uuid4()))
                    assert r.status_code == 201, r.text

            flap_task = asyncio.create_task(flap())
            threads = [threading.Thread(target=http_sender, args=(k,)) for k in range(senders)]
            for t in threads:
                t.start()
            await send_over_socket(clients[10], socket_count, "ws")
            await asyncio.to_thread(lambda: [t.join() for t in threads])
            stop.set()
            await flap_task
            total = total_http + socket_count
            for c in clients:
                await c.wait_for(total)
            for c in clients:
                await c.ws.close()
            await asyncio.gather(*readers)
            return clients, total

        clients, total = asyncio.run(main())
        expected = list(range(1, total + 1))
        for i, c in enumerate(clients):
            assert c.seqs == expected, f"client {i}: {len(c.seqs)} frames, first bad at " + str(
                next((j for j, (a, b) in enumerate(zip(c.seqs, expected)) if a != b), None))
        assert len(clients[10].acks) == socket_count
    finally:
        server.stop()


@pytest.mark.redis
def test_client_on_one_process_receives_what_another_process_takes(live_env):
    users = ["pa", "pb"]
    project_id = create_users_and_project(live_env, users, "TwoProcesses")
    a = LiveServer(live_env).start()
    b = LiveServer(live_env).start()
    try:
        session_a, session_b = login(a.url, "pa"), login(b.url, "pb")

        async def main():
            listener = SocketClient(a, project_id, session_a)
            await listener.open()
            reader = asyncio.create_task(listener.read_until_closed())
            sender = SocketClient(b, project_id, session_b)
            await sender.open()
            sender_reader = asyncio.create_task(sender.read_until_closed())
            for i in range(30):
                r = await asyncio.to_thread(post_message, session_b, project_id, f"http{i}")
                assert r.status_code == 201
            await send_over_socket(sender, 20, "ws")
            await listener.wait_for(50, timeout=30)
            await listener.ws.close()
            await sender.ws.close()
            await asyncio.gather(reader, sender_reader)
            return listener

        listener = asyncio.run(main())
        assert listener.seqs == list(range(1, 51))
    finally:
        a.stop()
        b.stop()
