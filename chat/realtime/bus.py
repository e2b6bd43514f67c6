"""The bus between server processes: one channel per project, one for revocations.

Production shape: Redis pub/sub, one subscription per event loop and project,
read by one connection per loop (``_Subscriber``), plus the process-wide
access channel. On a Redis Cluster (REDIS_URL=redis+cluster://…): sharded
pub/sub, chat/realtime/cluster_bus.py. Embedded default: the process's own
hubs (``LocalBus``).
"""

import asyncio
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
import weakref

from django.conf import settings

from chat import metrics

logger = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def project_group(project_id):
    """Name of a project's group (used for logs and the bus channel)."""
    return f"project.{project_id}"


def bus_channel(project_id):
    """Redis channel of a project. Channels are global to a Redis server (not per
    database number), so the name carries the deployment's prefix."""
    return f"{settings.BUS_PREFIX}:{project_group(project_id)}"


def access_channel():
    """Redis channel of access revocations, heard by every process with sockets."""
    return f"{settings.BUS_PREFIX}:access"


class LocalBus:
    """The embedded default: hubs of this process only."""

    def publish(self, project_id, data):
        from chat.realtime.hub import registries

        for registry in list(registries.values()):
            hub = registry.hubs.get(project_id)
            if hub is not None:
                # A fresh context: the publisher may sit inside sync_to_async,
                # and the hub's own database reads must not inherit that.
                hub.loop.call_soon_threadsafe(
                    hub.feed_raw, data, context=contextvars.Context()
                )

    def publish_access(self, data):
        from chat.realtime.hub import registries
        from chat.realtime.revocation import on_access_event

        for loop, registry in list(registries.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(
                    on_access_event, registry, data, context=contextvars.Context()
                )

    async def subscribe(self, hub):
        return None

    async def listen_access(self):
        return None

    async def unsubscribe(self, hub):
        return None

    async def claim_socket(self, user_id, socket_id):
        sockets = _local_sockets.setdefault(user_id, set())
        sockets.add(socket_id)
        return len(sockets)

    async def release_socket(self, user_id, socket_id):
        sockets = _local_sockets.get(user_id)
        if sockets is not None:
            sockets.discard(socket_id)
            if not sockets:
                del _local_sockets[user_id]

    async def refresh_sockets(self, pairs):
        return None


_local_sockets = {}  # the embedded default's open sockets: user id -> socket ids


# One command per connect (a MULTI of four cost six): drop the user's expired
# socket ids, add this one, keep the key alive, count.
CLAIM_SOCKET = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""


class RedisBus:
    """Production shape: Redis pub/sub, one subscription per process and project."""

    def __init__(self, url):
        import redis

        self.url = url
        self._sync = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        self._subscribers = weakref.WeakKeyDictionary()  # loop -> _Subscriber

    def publish(self, project_id, data):
        self._sync.publish(bus_channel(project_id), data)

    def publish_access(self, data):
        self._sync.publish(access_channel(), data)

    # Open sockets per user, across processes: a sorted set per user of socket
    # ids scored by when they expire, refreshed while open (a process that dies
    # leaves ids that expire by themselves). One round trip per connect.
    SOCKET_TTL_SECONDS = 180

    def _sockets_key(self, user_id):
        return f"{settings.BUS_PREFIX}:sockets:{user_id}"

    async def claim_socket(self, user_id, socket_id):
        subscriber = self._subscriber(asyncio.get_running_loop())
        if subscriber.claim_script is None:
            subscriber.claim_script = subscriber.client.register_script(CLAIM_SOCKET)
        now = time.time()
        return await subscriber.claim_script(
            keys=[self._sockets_key(user_id)],
            args=[now, now + self.SOCKET_TTL_SECONDS, socket_id, self.SOCKET_TTL_SECONDS])

    async def release_socket(self, user_id, socket_id):
        client = self._subscriber(asyncio.get_running_loop()).client
        await client.zrem(self._sockets_key(user_id), socket_id)

    async def refresh_sockets(self, pairs):
        """Keep the ids of sockets still open from expiring: [(user id, socket id)]."""
        if not pairs:
            return
        client = self._subscriber(asyncio.get_running_loop()).client
        expires = time.time() + self.SOCKET_TTL_SECONDS
        async with client.pipeline(transaction=False) as pipe:
            for user_id, socket_id in pairs:
                key = self._sockets_key(user_id)
                pipe.zadd(key, {socket_id: expires})
                pipe.expire(key, self.SOCKET_TTL_SECONDS)
            await pipe.execute()

    def _subscriber(self, loop):
        sub = self._subscribers.get(loop)
        if sub is None:
            sub = self._subscribers[loop] = _Subscriber(self.url)
        return sub

    async def subscribe(self, hub):
        await self._subscriber(hub.loop).subscribe(hub.project_id)

    async def listen_access(self):
        await self._subscriber(asyncio.get_running_loop()).subscribe_access()

    async def unsubscribe(self, hub):
        await self._subscriber(hub.loop).unsubscribe(hub.project_id)


class ChannelSubscriber:
    """What every loop's subscriber shares: a hub's channel is left unless a new
    hub of the project took it over, in turn with the other calls (`lock`)."""

    claim_script = None  # CLAIM_SOCKET on this loop's client, once registered

    async def unsubscribe(self, project_id):
        channel = bus_channel(project_id)
        async with self.lock:
            from chat.realtime.hub import get_registry

            if project_id in get_registry().hubs:
                return  # a new hub of the project took over the subscription
            self.channels.discard(channel)
            await self._leave(channel)


class _Subscriber(ChannelSubscriber):
    """One pub/sub connection per event loop, reading for every hub of the loop.

    Subscribes and unsubscribes take turns (a lock): redis-py's PubSub opens
    its connection on the first command without a lock, so two hubs starting
    at once each opened one, and the channel subscribed on the connection
    nobody read went deaf (its hub then saw changes only through its 3 s poll:
    found by the load test, pinned by chat/tests/test_bus.py). Taking turns
    also keeps the order on the wire: a closing hub's UNSUBSCRIBE can no
    longer follow the SUBSCRIBE of the hub that replaced it.
    """

    def __init__(self, url):
        import redis.asyncio as aioredis

        # A bounded pool: a storm of connects waits its turn for a connection
        # rather than opening one per socket (hundreds of connects at once
        # timed out, and each idle client kept its own).
        self.client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, socket_connect_timeout=2, max_connections=settings.WS_REDIS_CONNECTIONS,
            timeout=10))
        self.pubsub = self.client.pubsub()
        self.channels = set()
        self.reader = None
        self.lock = asyncio.Lock()

    async def subscribe(self, project_id):
        channel = bus_channel(project_id)
        async with self.lock:
            # The access channel comes with the first project and stays.
            new = {channel, access_channel()} - self.channels
            self.channels |= new
            await self.pubsub.subscribe(*sorted(new or {channel}))
            if self.reader is None or self.reader.done():
                self.reader = asyncio.get_running_loop().create_task(self._read())

    async def subscribe_access(self):
        if access_channel() in self.channels:
            return
        async with self.lock:
            if access_channel() not in self.channels:
                self.channels.add(access_channel())
                await self.pubsub.subscribe(access_channel())
                if self.reader is None or self.reader.done():
                    self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _leave(self, channel):
        try:
            await self.pubsub.unsubscribe(channel)
        except Exception:  # noqa: BLE001 - a dead connection has no subscription
            logger.info("event=unsubscribe_failed channel=%s", channel)

    async def _read(self):
        from chat.realtime.hub import get_registry
        from chat.realtime.revocation import on_access_event, recheck_all

        registry = get_registry()
        while self.channels:
            try:
                msg = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.BUS_RECEIVE_ERRORS.inc()
                logger.warning("event=bus_receive_failed", exc_info=True)
                await asyncio.sleep(0.5)
                await self._resubscribe()
                for hub in list(registry.hubs.values()):
                    hub.request_catch_up()
                # A revocation published meanwhile was not heard: check again.
                recheck_all(registry)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel == access_channel():
                on_access_event(registry, msg["data"])
                continue
            project_id = int(channel.rsplit(".", 1)[1])
            hub = registry.hubs.get(project_id)
            if hub is not None:
                hub.feed_raw(msg["data"])

    async def _resubscribe(self):
        async with self.lock:
            try:
                await self.pubsub.reset()
                self.pubsub = self.client.pubsub()
                if self.channels:
                    await self.pubsub.subscribe(*self.channels)
            except Exception:  # noqa: BLE001 - tried again on the next failure
                logger.info("event=resubscribe_failed")


_bus = None
_bus_lock = threading.Lock()


def get_bus():
    global _bus
    if _bus is None:
        with _bus_lock:
            if _bus is None:
                redis_url = getattr(settings, "REDIS_URL", None)
                if redis_url and getattr(settings, "REDIS_CLUSTER", False):
                    # Sharded pub/sub on a Redis Cluster (docs/SCALING.md).
                    from chat.realtime.cluster_bus import ClusterBus

                    _bus = ClusterBus(redis_url)
                else:
                    _bus = RedisBus(redis_url) if redis_url else LocalBus()
    return _bus


def reset_bus():
    """Forget the bus (tests switch settings)."""
    global _bus
    _bus = None
