"""Bad input over the WebSocket: hypothesis-generated frame sequences.

Socket frames (random text, binary, arbitrary, deep and large JSON) through
WebsocketCommunicator: after every recoverable error the socket stays open and
answers a ping; a frame over 64 KiB closes it with 1009.

The HTTP API is fuzzed by schemathesis over the OpenAPI schema
(tests/test_schemathesis.py); bodies, query strings, paths and raw HTTP that
are bad on purpose are in tests/test_bad_input.py.

The budget is small (40 frame sequences) so the file runs in seconds; failures
print a reproducible example.
"""

import asyncio
import json
import threading

import orjson
import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from tests import test_access_matrix

world = test_access_matrix.world  # the same users and projects as the access matrix

BIG = 2**70

json_scalars = (st.none() | st.booleans() | st.integers(-BIG, BIG)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))


def _nest(children):
    return st.one_of(st.lists(children, max_size=4),
                     st.dictionaries(st.text(max_size=10), children, max_size=4))


any_json = st.recursive(json_scalars, _nest, max_leaves=12)


# --- socket frames ----------------------------------------------------------------------


class LoopThread:
    """One event loop in a thread for a whole hypothesis run (hubs live per loop)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        async def drain():
            await asyncio.sleep(0.3)  # hubs close after their last socket left

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def socket_app():
    return StrictOriginValidator(URLRouter(websocket_urlpatterns))


def deep(depth, opener="[", closer="]"):
    return opener * depth + closer * depth


json_frame = any_json.map(lambda v: json.dumps(v))
typed_frame = st.fixed_dictionaries(
    {"type": st.sampled_from(["message.send", "typing", "read", "ping", "", "message.sendx",
                              "x" * 500]) | st.text(max_size=20)},
    optional={
        "content": json_scalars | st.text(min_size=1, max_size=50)
        | st.integers(9_990, 10_010).map(lambda n: "c" * n),
        "client_msg_id": json_scalars | st.uuids().map(str),
        "seq": json_scalars | st.integers(-BIG, BIG),
    },
).map(lambda v: json.dumps(v))
frames = st.one_of(
    st.text(max_size=200).map(lambda t: ("text", t)),
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    json_frame.map(lambda t: ("text", t)),
    typed_frame.map(lambda t: ("text", t)),
    typed_frame.map(lambda t: ("text", t)),
    st.integers(1, 30_000).map(lambda d: ("text", deep(d))),
    st.integers(1, 6_000).map(lambda d: ("text", '{"a":' * d + "1" + "}" * d)),
    st.integers(1_000, 60_000).map(
        lambda n: ("text", json.dumps({"type": "ping", "pad": "p" * n}))),
)


async def frames_leave_socket_open(user, project_id, sequence):
    comm = WebsocketCommunicator(socket_app(), f"/ws/projects/{project_id}/",
                                 headers=[(b"origin", b"http://testserver")])
    comm.scope["user"] = user
    try:
        connected, _ = await comm.connect(timeout=5)
        assert connected
        for kind, payload in sequence:
            # send_input, not send_to: an empty frame is a frame too.
            key = "text" if kind == "text" else "bytes"
            await comm.send_input({"type": "websocket.receive", key: payload})
        await comm.send_to(text_data='{"type":"ping"}')
        seen = []
        while True:
            # receive_output re-raises any exception the consumer died of.
            out = await comm.receive_output(timeout=10)
            assert out["type"] == "websocket.send", f"closed after {sequence!r:.300}: {out}"
            frame = orjson.loads(out["text"])
            seen.append(frame["type"])
            if frame["type"] == "pong":
                return seen
    finally:
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
def test_random_frames_never_break_the_socket(world):
    users, ids = world
    loop = LoopThread()
    try:
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(sequence=st.lists(frames, min_size=1, max_size=6))
        def run(sequence):
            seen = loop.run(frames_leave_socket_open(users["member"], ids["pub"], sequence))
            assert seen[0] == "hello"

        run()
    finally:
        loop.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("payload", [
    json.dumps({"type": "message.send", "content": "x" * (1024 * 1024)}),
    deep(40_000),
    "z" * (65_536 + 1),
])
async def test_frame_over_64_kib_closes_1009_without_error(world, payload):
    users, ids = world
    comm = WebsocketCommunicator(socket_app(), f"/ws/projects/{ids['pub']}/",
                                 headers=[(b"origin", b"http://testserver")])
    comm.scope["user"] = users["member"]
    try:
        assert (await comm.connect(timeout=5))[0]
        await comm.send_to(text_data=payload)
        while True:
            out = await comm.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                assert out["code"] == 1009
                break
    finally:
        await comm.disconnect()
