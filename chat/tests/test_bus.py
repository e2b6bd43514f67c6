"""The Redis bus: every hub of a process hears its project's channel."""

import asyncio
import time
import uuid

import pytest
from django.conf import settings

from chat.realtime import bus
from chat.realtime import hub as realtime_hub

pytestmark = pytest.mark.redis


class FakeHub:
    def __init__(self):
        self.received = []

    def feed_raw(self, data):
        self.received.append(data)


async def _close(subscriber, publisher):
    if subscriber.reader is not None:
        subscriber.reader.cancel()
    await subscriber.pubsub.aclose()
    await subscriber.client.aclose()
    publisher.close()


async def _hubs_starting_at_once(project_ids):
    """Subscribe many projects at once on one loop's subscriber, as 25 hubs do
    when the sockets of a busy process connect together; publish once to each;
    return {project id: what its hub heard}."""
    import redis

    registry = realtime_hub.get_registry()
    hubs = {pid: FakeHub() for pid in project_ids}
    registry.hubs.update(hubs)
    subscriber = bus._Subscriber(settings.REDIS_URL)
    publisher = redis.Redis.from_url(settings.REDIS_URL)
    try:
        await asyncio.gather(*(subscriber.subscribe(pid) for pid in project_ids))
        for pid in project_ids:
            publisher.publish(bus.bus_channel(pid), f"hello {pid}".encode())
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not all(h.received for h in hubs.values()):
            await asyncio.sleep(0.02)
        return {pid: hub.received for pid, hub in hubs.items()}
    finally:
        for pid in project_ids:
            registry.hubs.pop(pid, None)
        await subscriber.unsubscribe(project_ids[0])
        await _close(subscriber, publisher)


def test_hubs_subscribing_at_once_all_hear_their_channel(settings):
    settings.BUS_PREFIX = f"test-bus-{uuid.uuid4().hex[:8]}"
    project_ids = list(range(1, 26))
    heard = asyncio.run(_hubs_starting_at_once(project_ids))
    assert heard == {pid: [f"hello {pid}".encode()] for pid in project_ids}


async def _replaced_hub_keeps_the_channel():
    """A hub closing while a new hub of the same project starts: the old hub's
    unsubscribe must not undo the new hub's subscription."""
    import redis

    registry = realtime_hub.get_registry()
    subscriber = bus._Subscriber(settings.REDIS_URL)
    publisher = redis.Redis.from_url(settings.REDIS_URL)
    new_hub = FakeHub()
    try:
        await subscriber.subscribe(7)
        registry.hubs[7] = new_hub  # the new hub registered before the old one's unsubscribe ran
        await asyncio.gather(subscriber.subscribe(7), subscriber.unsubscribe(7))
        publisher.publish(bus.bus_channel(7), b"still here")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not new_hub.received:
            await asyncio.sleep(0.02)
        return new_hub.received
    finally:
        registry.hubs.pop(7, None)
        await _close(subscriber, publisher)


def test_a_closing_hub_does_not_unsubscribe_its_successor(settings):
    settings.BUS_PREFIX = f"test-bus-{uuid.uuid4().hex[:8]}"
    assert asyncio.run(_replaced_hub_keeps_the_channel()) == [b"still here"]


async def _claims_at_once(count):
    """`count` sockets claim at once on one loop; return (counts, connections opened)."""
    redis_bus = bus.RedisBus(settings.REDIS_URL)
    subscriber = redis_bus._subscriber(asyncio.get_running_loop())
    user_id = 10**9 + 7
    socket_ids = [uuid.uuid4().hex for _ in range(count)]
    try:
        counts = await asyncio.gather(*(redis_bus.claim_socket(user_id, s) for s in socket_ids))
        pool = subscriber.client.connection_pool
        return counts, len(pool._available_connections) + len(pool._in_use_connections)
    finally:
        await asyncio.gather(*(redis_bus.release_socket(user_id, s) for s in socket_ids))
        await subscriber.client.aclose()
        redis_bus._sync.close()


def test_a_storm_of_connects_shares_a_bounded_pool(settings):
    # Hundreds of sockets connecting at once each opened a Redis connection
    # (and timed out doing so): they now wait their turn for WS_REDIS_CONNECTIONS.
    settings.BUS_PREFIX = f"test-bus-{uuid.uuid4().hex[:8]}"
    settings.WS_REDIS_CONNECTIONS = 4
    counts, opened = asyncio.run(_claims_at_once(200))
    assert sorted(counts) == list(range(1, 201))
    assert 1 <= opened <= 4
