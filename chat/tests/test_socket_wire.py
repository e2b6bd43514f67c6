"""The project socket on a server that writes frames itself (chatsite.websocket's
"chat.frames" extension): live frames go straight to the wire, not through ASGI."""

import asyncio

import orjson
import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from chat.realtime import hub as realtime_hub
from chat.tests.test_consumers import ORIGIN, app, receive, send_as
from chatsite.websocket import EXTENSION

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


class FakeWire:
    """The server's side of the extension: records what the socket writes."""

    def __init__(self, buffered=0):
        self.frames, self.closed, self.buffered = [], [], buffered

    def write(self, text):
        self.frames.append(text)
        return self.buffered

    def close(self, code):
        self.closed.append(code)


async def open_wired(user, project_id, wire):
    comm = WebsocketCommunicator(app(), f"/ws/projects/{project_id}/", headers=[ORIGIN])
    comm.scope["user"] = user
    comm.scope["extensions"] = {EXTENSION: {"write": wire.write, "close": wire.close}}
    connected, code = await comm.connect()
    assert connected, code
    # hello and presence go through ASGI, before the socket is live
    assert (await receive(comm))["type"] == "hello"
    assert (await receive(comm))["type"] == "presence"
    return comm


async def wait_for(predicate, timeout=3):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_live_batches_are_written_to_the_wire_not_sent_through_asgi(member, project):
    wire = FakeWire()
    comm = await open_wired(member, project.pk, wire)
    try:
        sent = await send_as(member, project, 3)
        def batches():
            return [orjson.loads(f) for f in wire.frames if '"message_batch"' in f]

        await wait_for(lambda: sum(len(b["messages"]) for b in batches()) >= 3)
        got = [m["changed_seq"] for b in batches() for m in b["messages"]]
        assert got == [m.changed_seq for m in sent]
        assert await comm.receive_nothing(timeout=0.2)
        # The same text object goes to every socket of the hub: one encoding.
        hub = realtime_hub.get_registry().hubs[project.pk]
        assert len(hub.consumers) == 1
    finally:
        await comm.disconnect()


async def test_a_client_whose_buffer_overflows_is_closed_4008_once(member, project):
    with override_settings(WS_SEND_BUFFER_BYTES=1000):
        wire = FakeWire(buffered=1001)
        comm = await open_wired(member, project.pk, wire)
        try:
            await send_as(member, project, 1)
            await wait_for(lambda: wire.closed)
            await send_as(member, project, 2)
            await asyncio.sleep(0.2)
            assert wire.closed == [4008]
            assert len(wire.frames) == 1  # nothing more written once closing
        finally:
            await comm.disconnect()
