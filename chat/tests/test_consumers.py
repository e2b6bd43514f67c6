"""The project socket, frame by frame (docs/PROTOCOL.md), through WebsocketCommunicator."""

import asyncio
import math
import uuid

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from chat.models import Message
from chat.realtime import frames
from chat.realtime import hub as realtime_hub
from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://testserver")


def app():
    return StrictOriginValidator(URLRouter(websocket_urlpatterns))


async def open_socket(user, project_id, after=None, origin=True, expect_hello=True):
    path = f"/ws/projects/{project_id}/"
    if after is not None:
        path += f"?after={after}"
    headers = [ORIGIN] if origin else []
    comm = WebsocketCommunicator(app(), path, headers=headers)
    comm.scope["user"] = user
    connected, code = await comm.connect()
    assert connected, code
    if expect_hello:
        hello = await receive(comm)
        assert hello["type"] == "hello"
        comm.hello = hello
    return comm


async def receive(comm, timeout=2):
    return orjson.loads(await comm.receive_from(timeout=timeout))


async def receive_type(comm, kind, timeout=2):
    """Receive frames until one of the given type (skipping presence updates)."""
    while True:
        frame = await receive(comm, timeout)
        if frame["type"] == kind:
            return frame
        assert frame["type"] in ("presence", "typing"), frame


async def receive_each(comm, kinds, timeout=2):
    """Receive until one frame of each kind arrived (in any order); return them by kind."""
    got = {}
    while set(got) != set(kinds):
        frame = await receive(comm, timeout)
        if frame["type"] in kinds:
            got[frame["type"]] = frame
    return got


async def collect_messages(comm, count, timeout=3):
    """Receive message_batch frames until `count` messages arrived; return (frames, msgs)."""
    frames, messages = [], []
    while len(messages) < count:
        frame = await receive(comm, timeout)
        if frame["type"] != "message_batch":
            continue
        frames.append(frame)
        messages.extend(frame["messages"])
    return frames, messages


async def send_as(user, project, n, prefix="m"):
    from chat.actions import do_send_message

    @sync_to_async
    def run():
        return [do_send_message(user, project.pk, f"{prefix}{i}")[0] for i in range(n)]

    return await run()


async def closed_with(comm, code):
    out = await comm.receive_output(timeout=2)
    while out["type"] == "websocket.send":
        out = await comm.receive_output(timeout=2)
    assert out == {"type": "websocket.close", "code": code}


# --- connect and refusals ---------------------------------------------------------


async def test_hello_carries_project_number(member, project, send):
    await send_as(member, project, 3)
    comm = await open_socket(member, project.pk)
    assert comm.hello == {"type": "hello", "project_id": project.pk, "seq": 3}
    await comm.disconnect()


async def test_anonymous_is_closed_4401(project):
    from django.contrib.auth.models import AnonymousUser

    comm = WebsocketCommunicator(app(), f"/ws/projects/{project.pk}/", headers=[ORIGIN])
    comm.scope["user"] = AnonymousUser()
    connected, _ = await comm.connect()
    assert connected
    await closed_with(comm, 4401)
    await comm.disconnect()


async def test_non_member_is_closed_4403(outsider, project):
    comm = WebsocketCommunicator(app(), f"/ws/projects/{project.pk}/", headers=[ORIGIN])
    comm.scope["user"] = outsider
    await comm.connect()
    await closed_with(comm, 4403)
    await comm.disconnect()


async def test_unknown_project_is_closed_4404(member, project):
    comm = WebsocketCommunicator(app(), "/ws/projects/999999/", headers=[ORIGIN])
    comm.scope["user"] = member
    await comm.connect()
    await closed_with(comm, 4404)
    await comm.disconnect()


async def test_inactive_project_is_closed_4404(member, project):
    from projects.models import Project

    await sync_to_async(Project.objects.filter(pk=project.pk).update)(is_active=False)
    comm = WebsocketCommunicator(app(), f"/ws/projects/{project.pk}/", headers=[ORIGIN])
    comm.scope["user"] = member
    await comm.connect()
    await closed_with(comm, 4404)
    await comm.disconnect()


@pytest.mark.parametrize("origin", [None, b"http://evil.example.com"])
async def test_foreign_or_missing_origin_is_refused(member, project, origin):
    headers = [(b"origin", origin)] if origin else []
    comm = WebsocketCommunicator(app(), f"/ws/projects/{project.pk}/", headers=headers)
    comm.scope["user"] = member
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


# --- live delivery and batching -----------------------------------------------------


@override_settings(CHANNEL_LAYERS={
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
async def test_a_socket_opens_no_channel_layer_channel(member, owner, project, monkeypatch):
    """Even with a channel layer configured (the service configures none), a
    socket asks it for nothing: changes come through the project hub."""
    from channels.layers import get_channel_layer

    def no_channel(*args, **kwargs):
        raise AssertionError("a socket asked the channel layer for a channel")

    monkeypatch.setattr(get_channel_layer(), "new_channel", no_channel, raising=False)
    comm = await open_socket(member, project.pk)
    await send_as(owner, project, 1, prefix="hub")
    frame = await receive_type(comm, "message_batch")
    assert [m["content"] for m in frame["messages"]] == ["hub0"]
    await comm.disconnect()


async def test_message_sent_over_http_action_arrives_live(member, owner, project):
    comm = await open_socket(member, project.pk)
    await send_as(owner, project, 1, prefix="live")
    frame = await receive_type(comm, "message_batch")
    assert [m["content"] for m in frame["messages"]] == ["live0"]
    assert frame["messages"][0]["user"] == {"id": owner.pk, "username": "owner"}
    await comm.disconnect()


async def test_single_message_after_quiet_period_is_not_held(member, owner, project):
    # A window far longer than the receive timeout: the first change after a
    # quiet period must still arrive at once.
    with override_settings(BROADCAST_MAX_WAIT_MS=60000):
        comm = await open_socket(member, project.pk)
        await send_as(owner, project, 1)
        frame = await receive_type(comm, "message_batch", timeout=1)
        assert len(frame["messages"]) == 1
        await comm.disconnect()


async def test_hundred_messages_in_one_window_come_in_few_frames(member, owner, project):
    # A window long enough that all 100 sends fall inside it on a slow machine.
    with override_settings(BROADCAST_MAX_WAIT_MS=3000, BROADCAST_LINGER_MS=3000,
                           BROADCAST_LINGER_MIN_WRITES=0):
        comm = await open_socket(member, project.pk)
        await send_as(owner, project, 100)
        frames, messages = await collect_messages(comm, 100, timeout=5)
    assert len(frames) <= math.ceil(100 / 10) + 1
    assert all(len(f["messages"]) <= 10 for f in frames)
    assert [m["changed_seq"] for m in messages] == list(range(1, 101))
    await comm.disconnect()


async def test_changes_in_a_window_wait_at_most_the_linger(member, owner, project):
    # A window of a minute but a linger of 50 ms: the second change (inside the
    # window) still goes out within the linger, not after the window.
    with override_settings(BROADCAST_MAX_WAIT_MS=60000, BROADCAST_LINGER_MS=50,
                           BROADCAST_LINGER_MIN_WRITES=0):
        comm = await open_socket(member, project.pk)
        await send_as(owner, project, 2)
        _, messages = await collect_messages(comm, 2, timeout=1)
        assert [m["seq"] for m in messages] == [1, 2]
        await comm.disconnect()


async def test_a_change_a_linger_after_the_previous_one_is_not_held(member, owner, project):
    # Inside the window but no sooner than a linger after the change before:
    # a change at a few per second goes at once instead of waiting for company.
    with override_settings(BROADCAST_MAX_WAIT_MS=60000, BROADCAST_LINGER_MS=2000):
        comm = await open_socket(member, project.pk)
        await send_as(owner, project, 1)
        await receive_type(comm, "message_batch", timeout=1)
        await asyncio.sleep(2.1)
        await send_as(owner, project, 1, prefix="later")
        frame = await receive_type(comm, "message_batch", timeout=1)
        assert [m["content"] for m in frame["messages"]] == ["later0"]
        await comm.disconnect()


async def test_a_close_change_for_few_sockets_is_not_held(member, owner, project):
    # Two changes 50 ms apart, one socket: sending the second alone costs 20
    # writes a second at that pace, so it does not wait the (here 2 s) linger
    # for company; with the threshold at 0 the same second change waits for it.
    async def second_change_delay(min_writes):
        with override_settings(BROADCAST_MAX_WAIT_MS=60000, BROADCAST_LINGER_MS=2000,
                               BROADCAST_LINGER_MIN_WRITES=min_writes):
            comm = await open_socket(member, project.pk)
            await send_as(owner, project, 1, prefix=f"w{min_writes}-first")
            await asyncio.sleep(0.05)
            await send_as(owner, project, 1, prefix=f"w{min_writes}-second")
            started = asyncio.get_running_loop().time()
            _, messages = await collect_messages(comm, 2, timeout=5)
            waited = asyncio.get_running_loop().time() - started
            await comm.disconnect()
        assert [m["content"] for m in messages] == [f"w{min_writes}-first0",
                                                    f"w{min_writes}-second0"]
        return waited

    assert await second_change_delay(5000) < 1.0
    assert await second_change_delay(0) >= 1.0


async def test_batch_is_encoded_once_for_all_recipients(member, owner, project, monkeypatch):
    calls = []
    original = frames.encode_frame

    def counting(payload):
        if payload.get("type") == "message_batch":
            calls.append(payload)
        return original(payload)

    monkeypatch.setattr(frames, "encode_frame", counting)
    sockets = [await open_socket(u, project.pk) for u in (member, owner, member)]
    await send_as(owner, project, 1)
    for comm in sockets:
        await receive_type(comm, "message_batch")
    assert len(calls) == 1
    for comm in sockets:
        await comm.disconnect()


async def test_out_of_order_publishes_are_delivered_in_changed_seq_order(member, project):
    comm = await open_socket(member, project.pk)
    hub = realtime_hub.get_registry().hubs[project.pk]
    base = hub.last_seq

    def msg(cs):
        return {"id": cs, "project_id": project.pk, "seq": cs, "changed_seq": cs,
                "user": {"id": 1, "username": "x"}, "content": f"c{cs}",
                "created_at": None, "edited_at": None, "deleted": False,
                "client_msg_id": None}

    for cs in (base + 3, base + 1, base + 2):
        hub.feed_raw(orjson.dumps({"kind": "change", "message": msg(cs)}))
    _, messages = await collect_messages(comm, 3)
    assert [m["changed_seq"] for m in messages] == [base + 1, base + 2, base + 3]
    await comm.disconnect()


async def test_gap_is_filled_from_the_database(member, owner, project):
    comm = await open_socket(member, project.pk)
    hub = realtime_hub.get_registry().hubs[project.pk]
    real_feed = hub.feed_raw
    dropped = []

    def lossy(data):
        event = orjson.loads(data)
        if event.get("kind") == "change" and event["message"]["changed_seq"] == 2:
            dropped.append(data)  # the bus lost this publish
            return
        real_feed(data)

    hub.feed_raw = lossy
    await send_as(owner, project, 3)
    _, messages = await collect_messages(comm, 3)
    assert dropped
    assert [m["changed_seq"] for m in messages] == [1, 2, 3]
    await comm.disconnect()


async def test_one_poll_reads_every_hub_and_finds_a_lost_last_publish(
    member, owner, project, monkeypatch
):
    # A lost publish with no later change leaves no gap for the hub to see: the
    # process's poll finds it, with one query for all of the loop's hubs.
    from projects.actions import do_create_project, do_join_project

    other = await sync_to_async(do_create_project)(owner, name="Other")
    await sync_to_async(do_join_project)(member, other.pk)
    monkeypatch.setattr(realtime_hub, "POLL_SECONDS", 0.05)
    reads = []
    real_read = realtime_hub._read_project_seqs

    async def counted(project_ids):
        reads.append(sorted(project_ids))
        return await real_read(project_ids)

    monkeypatch.setattr(realtime_hub, "_read_project_seqs", counted)
    first = await open_socket(member, project.pk)
    second = await open_socket(member, other.pk)
    realtime_hub.get_registry().hubs[project.pk].feed_raw = lambda data: None  # lost
    await send_as(owner, project, 1)
    _, messages = await collect_messages(first, 1, timeout=5)
    assert [m["changed_seq"] for m in messages] == [1]
    assert reads and all(ids == sorted([project.pk, other.pk]) for ids in reads[-2:])
    await first.disconnect()
    await second.disconnect()


async def test_large_catch_up_comes_in_few_frames_and_closes_no_socket(member, owner, project):
    # A bus that lost 30 publishes (a Redis outage): the hub fills the gap from
    # the database. In batches of one that is 30 frames in one loop turn, ten
    # times this socket's queue; catch-up frames carry up to CATCH_UP_FRAME.
    with override_settings(WS_SEND_QUEUE_FRAMES=3):
        comm = await open_socket(member, project.pk)
    hub = realtime_hub.get_registry().hubs[project.pk]
    hub.feed_raw = lambda data: None  # the bus is down
    with override_settings(BROADCAST_MAX_BATCH=1):
        await send_as(owner, project, 30)
        hub.request_catch_up()
        frames, messages = await collect_messages(comm, 30, timeout=10)
    assert [m["changed_seq"] for m in messages] == list(range(1, 31))
    assert len(frames) == 1
    await comm.disconnect()


# --- replay --------------------------------------------------------------------------


async def test_reconnect_with_after_replays_missed_changes_first(member, owner, project):
    await send_as(owner, project, 5)
    comm = await open_socket(member, project.pk, after=2)
    frames, messages = await collect_messages(comm, 3)
    assert [m["seq"] for m in messages] == [3, 4, 5]
    await send_as(owner, project, 1)
    frame = await receive_type(comm, "message_batch")
    assert [m["seq"] for m in frame["messages"]] == [6]
    await comm.disconnect()


async def test_replay_includes_edits_and_deletes(member, owner, project):
    from chat.actions import do_delete_message, do_edit_message

    sent = await send_as(owner, project, 3)
    await sync_to_async(do_edit_message)(sent[0], "edited")
    await sync_to_async(do_delete_message)(sent[1])
    comm = await open_socket(member, project.pk, after=3)
    _, messages = await collect_messages(comm, 2)
    assert [(m["seq"], m["changed_seq"]) for m in messages] == [(1, 4), (2, 5)]
    assert messages[0]["content"] == "edited" and messages[1]["deleted"] is True
    assert messages[1]["content"] == ""
    await comm.disconnect()


async def test_too_many_missed_changes_ask_for_resync(member, owner, project):
    with override_settings(REPLAY_LIMIT=5):
        await send_as(owner, project, 8)
        comm = await open_socket(member, project.pk, after=1)
        frame = await receive(comm)
        assert frame == {"type": "resync_required"}
        assert (await receive(comm))["type"] == "presence"  # then live, no replay
        await comm.disconnect()


# --- client frames ---------------------------------------------------------------------


async def test_send_over_socket_is_acked_and_broadcast(member, project):
    comm = await open_socket(member, project.pk)
    cid = str(uuid.uuid4())
    await comm.send_to(text_data=orjson.dumps(
        {"type": "message.send", "content": " hi ", "client_msg_id": cid}).decode())
    kinds = await receive_each(comm, {"ack", "message_batch"})
    assert kinds["ack"]["client_msg_id"] == cid
    assert kinds["ack"]["message"]["content"] == "hi"
    assert kinds["message_batch"]["messages"][0]["client_msg_id"] == cid
    await comm.disconnect()


async def test_repeated_client_msg_id_over_socket_acks_and_creates_nothing(member, project):
    comm = await open_socket(member, project.pk)
    cid = str(uuid.uuid4())
    frame = orjson.dumps({"type": "message.send", "content": "once", "client_msg_id": cid}).decode()
    await comm.send_to(text_data=frame)
    first = (await receive_each(comm, {"ack", "message_batch"}))["ack"]
    await comm.send_to(text_data=frame)
    second = await receive_type(comm, "ack")
    assert second["message"]["id"] == first["message"]["id"]
    count = await sync_to_async(Message.objects.filter(client_msg_id=cid).count)()
    assert count == 1
    assert await comm.receive_nothing(timeout=0.3)
    await comm.disconnect()


@pytest.mark.parametrize(
    "payload, code",
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "message.send", "content": "   "}', "invalid"),
        ('{"type": "message.send", "content": 5}', "invalid"),
        ('{"type": "message.send", "content": "x", "client_msg_id": "nope"}', "invalid"),
        ('{"type": "read", "seq": "x"}', "invalid"),
    ],
)
async def test_bad_input_gets_error_frame_and_socket_stays_open(member, project, payload, code):
    comm = await open_socket(member, project.pk)
    await comm.send_to(text_data=payload)
    frame = await receive_type(comm, "error")
    assert frame["code"] == code and frame["message"]
    await comm.send_to(text_data='{"type": "ping"}')
    assert await receive_type(comm, "pong") == {"type": "pong"}
    await comm.disconnect()


async def test_over_long_content_is_an_error_frame(member, project):
    with override_settings(MESSAGE_MAX_LENGTH=10):
        comm = await open_socket(member, project.pk)
        await comm.send_to(text_data=orjson.dumps(
            {"type": "message.send", "content": "x" * 11}).decode())
        frame = await receive_type(comm, "error")
        assert frame["code"] == "invalid"
        await comm.disconnect()


async def test_binary_frame_is_an_error_frame(member, project):
    comm = await open_socket(member, project.pk)
    await comm.send_to(bytes_data=b"\x00\x01")
    frame = await receive_type(comm, "error")
    assert frame["code"] == "bad_frame"
    await comm.disconnect()


async def test_frame_over_64_kib_closes_1009(member, project):
    comm = await open_socket(member, project.pk)
    await comm.send_to(text_data="x" * (65536 + 1))
    await closed_with(comm, 1009)
    await comm.disconnect()


async def test_sending_too_fast_is_rate_limited(member, project):
    with override_settings(WS_RATE_PER_SECOND=0.001, WS_RATE_BURST=2):
        comm = await open_socket(member, project.pk)
        for i in range(3):
            await comm.send_to(text_data=orjson.dumps(
                {"type": "message.send", "content": f"m{i}"}).decode())
        errors = []
        for _ in range(12):  # acks, the two messages' frames, presence
            frame = await receive(comm)
            if frame["type"] == "error":
                errors.append(frame)
                break
        assert errors and errors[0]["code"] == "rate_limited"
        count = await sync_to_async(Message.objects.filter(project_id=project.pk).count)()
        assert count == 2
        await comm.disconnect()


async def test_read_moves_last_read_forward(member, owner, project):
    from projects.models import Membership

    await send_as(owner, project, 4)
    comm = await open_socket(member, project.pk)
    await comm.send_to(text_data='{"type": "read", "seq": 3}')
    await comm.send_to(text_data='{"type": "ping"}')
    await receive_type(comm, "pong")
    membership = await sync_to_async(Membership.objects.get)(user=member, project=project)
    assert membership.last_read_seq == 3
    await comm.disconnect()


async def test_typing_reaches_others_not_the_typist(member, owner, project):
    typist = await open_socket(member, project.pk)
    other = await open_socket(owner, project.pk)
    await typist.send_to(text_data='{"type": "typing"}')
    frame = await receive_type(other, "typing")
    assert frame["user"] == {"id": member.pk, "username": "member"}
    await typist.send_to(text_data='{"type": "ping"}')
    assert (await receive_type(typist, "pong"))["type"] == "pong"
    await typist.disconnect()
    await other.disconnect()


async def test_presence_lists_online_members(member, owner, project):
    a = await open_socket(member, project.pk)
    b = await open_socket(owner, project.pk)
    seen = None
    for _ in range(6):
        frame = await receive(a)
        if frame["type"] == "presence":
            seen = {u["username"] for u in frame["online"]}
            if seen == {"member", "owner"}:
                break
    assert seen == {"member", "owner"}
    await b.disconnect()
    for _ in range(6):
        frame = await receive(a)
        if frame["type"] == "presence" and {u["username"] for u in frame["online"]} == {"member"}:
            break
    else:
        pytest.fail("presence did not drop the owner")
    await a.disconnect()


async def test_client_that_does_not_read_is_closed_4008_others_keep_receiving(
    member, owner, project
):
    # Only the slow client gets a tiny queue; the other keeps the default, so a
    # burst the hub hands over in one loop turn cannot overflow it.
    fast = await open_socket(owner, project.pk)
    with override_settings(WS_SEND_QUEUE_FRAMES=3):
        slow = await open_socket(member, project.pk)
    slow_consumer = next(
        c for c in realtime_hub.get_registry().hubs[project.pk].consumers
        if c.user_id == member.pk
    )

    async def never_write():
        await asyncio.Event().wait()

    # The slow client's socket never drains: its writer is stuck.
    slow_consumer.writer.cancel()
    slow_consumer.writer = asyncio.get_running_loop().create_task(never_write())
    with override_settings(BROADCAST_MAX_BATCH=1):
        await send_as(owner, project, 6)
        _, messages = await collect_messages(fast, 6, timeout=10)
    assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5, 6]
    out = await slow.receive_output(timeout=10)
    while out["type"] == "websocket.send":
        out = await slow.receive_output(timeout=10)
    assert out == {"type": "websocket.close", "code": 4008}
    await slow.disconnect()
    await fast.disconnect()


async def test_sockets_joining_while_the_hub_starts_all_get_their_replay(member, owner, project):
    await send_as(owner, project, 5)
    sockets = await asyncio.gather(*(open_socket(member, project.pk, after=2) for _ in range(20)))
    for comm in sockets:
        assert comm.hello["seq"] == 5
        _, messages = await collect_messages(comm, 3)
        assert [m["seq"] for m in messages] == [3, 4, 5]
    for comm in sockets:
        await comm.disconnect()


async def test_sockets_asking_the_same_replay_share_one_read(member, owner, project, monkeypatch):
    # A reconnect storm: every socket of the project asks for the same changes.
    from chat import selectors

    reads = []
    real = selectors.get_changes_after

    def counting(*args, **kwargs):
        reads.append(kwargs.get("after"))
        return real(*args, **kwargs)

    monkeypatch.setattr(selectors, "get_changes_after", counting)
    await send_as(owner, project, 5)
    first = await open_socket(member, project.pk)  # the hub is up, at 5
    sockets = await asyncio.gather(*(open_socket(member, project.pk, after=2) for _ in range(10)))
    for comm in sockets:
        _, messages = await collect_messages(comm, 3)
        assert [m["seq"] for m in messages] == [3, 4, 5]
    other = await open_socket(member, project.pk, after=4)
    _, messages = await collect_messages(other, 1)
    assert [m["seq"] for m in messages] == [5]
    assert reads == [2, 4]
    for comm in [first, other, *sockets]:
        await comm.disconnect()


async def test_presence_is_announced_when_a_user_comes_or_goes_not_per_socket(
        member, owner, project, monkeypatch):
    from chat.realtime import presence

    announced = []
    monkeypatch.setattr(presence, "notify_presence",
                        lambda project_id, users, query=False: announced.append(
                            [u["id"] for u in users]))
    tabs = [await open_socket(member, project.pk) for _ in range(5)]
    owner_tab = await open_socket(owner, project.pk)
    await asyncio.sleep(0.1)  # announcements run off the event loop
    assert announced == [[member.pk], sorted([member.pk, owner.pk])]
    for comm in tabs[:4]:
        await comm.disconnect()
    await asyncio.sleep(0.1)
    assert len(announced) == 2
    await tabs[4].disconnect()
    await asyncio.sleep(0.1)
    assert announced[2:] == [[owner.pk]]
    await owner_tab.disconnect()


async def test_client_ahead_of_the_hub_gets_only_what_it_lacks(member, owner, project):
    # The client read seq 1..3 through the API before the hub saw them.
    with override_settings(BROADCAST_MAX_WAIT_MS=3000, BROADCAST_LINGER_MS=3000):
        comm = await open_socket(member, project.pk, after=3)
        assert comm.hello["seq"] == 0
        await send_as(owner, project, 5)
        _, messages = await collect_messages(comm, 2, timeout=5)
        assert [m["seq"] for m in messages] == [4, 5]
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()
