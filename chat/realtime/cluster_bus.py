"""The bus on a Redis Cluster: sharded pub/sub, one channel per project.

Selected by REDIS_URL=redis+cluster://… (chat.realtime.bus.get_bus). A change
goes out with one SPUBLISH on the project's channel, which only the master
owning the channel's hash slot (and its replica) carries, so the bus grows
with the shards instead of every node relaying every message as plain
PUBLISH does in a cluster.

Subscriptions, per event loop as with the single Redis (``_Subscriber`` in
chat/realtime/bus.py): one connection per master that owns a subscribed
channel, each read by its own task, so a message is handled the moment it
arrives (no polling of the shards in turn). redis-py's ClusterPubSub is not
used: with redis-py 8.1 it did not recover from a master failover by itself,
and after a slot moves the server's unrequested SUNSUBSCRIBE left it silently
deaf (docs/SCALING.md, "Redis Cluster").

Recovery is this module's: a node connection that fails (a master killed) or
a SUNSUBSCRIBE nobody asked for (its slot moved) makes the loop re-read the
cluster's slot map, subscribe every channel on its current owner (tried again
every half second while a failover is under way), and then have every hub
catch up from PostgreSQL and every socket's access checked again. Pub/sub is
at most once; that catch-up is what makes delivery lossless. Node connections
never reconnect by themselves (no retries): a silent reconnect would skip the
catch-up.
"""

import asyncio
import contextvars
import logging
import time
import weakref

from redis.exceptions import ResponseError

from chat import metrics
from chat.realtime.bus import ChannelSubscriber, RedisBus, access_channel, bus_channel

logger = logging.getLogger(__name__)

# How long a subscription waits for the server's confirmation.
CONFIRM_SECONDS = 2.0
# While channels stay unheard (a failover under way), their hubs read
# PostgreSQL this often (their own poll is every 3 s).
UNHEARD_FILL_SECONDS = 0.5
# Waits between tries of a resubscription: the first at once (a moved slot is
# served elsewhere already), then every half second while a replica takes
# over (3-5 s measured with cluster-node-timeout 2000).
RECOVERY_DELAYS = (0.0, 0.1, 0.25, 0.5)


class ClusterBus(RedisBus):
    """The bus on a Redis Cluster: SPUBLISH / SSUBSCRIBE, one channel per project.

    Socket counting (claim_socket and the rest) is RedisBus's, on the loop's
    asyncio RedisCluster client: each user's key lives in one slot.
    """

    def __init__(self, url):
        from chatsite.scaleout.redis_client import cluster_client

        self.url = url
        self._sync = cluster_client(url, socket_timeout=2, socket_connect_timeout=2)
        self._subscribers = weakref.WeakKeyDictionary()  # loop -> ShardedSubscriber

    def publish(self, project_id, data):
        self._sync.spublish(bus_channel(project_id), data)

    def publish_access(self, data):
        self._sync.spublish(access_channel(), data)

    def _subscriber(self, loop):
        sub = self._subscribers.get(loop)
        if sub is None:
            sub = self._subscribers[loop] = ShardedSubscriber(self.url)
        return sub


class _NodeReader:
    """One connection to one master, subscribed to the channels it owns."""

    def __init__(self, node, auth):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.name = node.name
        self.redis = aioredis.Redis(
            host=node.host, port=node.port, socket_connect_timeout=2,
            health_check_interval=30, retry=Retry(NoBackoff(), 0), **auth)
        self.pubsub = self.redis.pubsub()
        self.channels = set()  # subscribed here
        self.leaving = set()  # unsubscribed by us: their SUNSUBSCRIBE is expected
        self.confirming = {}  # channel -> future set by the server's SSUBSCRIBE reply
        self.task = None
        self.dead = False

    def refuse_pending(self):
        """The subscriptions awaiting their reply failed (the node is away, or
        answered MOVED: its slot map was newer than ours)."""
        for future in self.confirming.values():
            if not future.done():
                future.set_result(False)
        self.confirming = {}

    def fail(self):
        self.dead = True
        self.refuse_pending()

    async def close(self):
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        for closing in (self.pubsub.aclose, self.redis.aclose):
            try:
                await closing()
            except Exception:  # noqa: BLE001 - a dead connection is closed already
                pass


class ShardedSubscriber(ChannelSubscriber):
    """One event loop's sharded subscriptions, read by one task per master.

    Subscribes, unsubscribes and resubscriptions take turns (a lock), as in
    chat.realtime.bus._Subscriber, so the order on the wire follows the order
    of the calls.
    """

    def __init__(self, url):
        from chatsite.scaleout.redis_client import cluster_client, parse_cluster_url

        # The slot map, and the socket counts of RedisBus.
        self.client = cluster_client(url, asyncio=True, socket_connect_timeout=2)
        self._auth = parse_cluster_url(url)[1]
        self._initialized = False
        self.channels = set()  # wanted, whatever their state
        self.readers = {}  # node name -> _NodeReader
        self.placed = {}  # channel -> node name it is subscribed on
        self.lock = asyncio.Lock()
        self.recovery = None
        self.recover_again = False
        self.replaced = set()  # channels (re)subscribed by the running recovery
        self.recoveries = 0  # completed resubscriptions (tests read it)
        self.last_recovery_seconds = None

    # --- what the bus calls ---------------------------------------------------------

    async def subscribe(self, project_id):
        await self._want(access_channel(), bus_channel(project_id))

    async def subscribe_access(self):
        if access_channel() not in self.channels:
            await self._want(access_channel())

    async def _want(self, *channels):
        async with self.lock:
            new = [c for c in channels if c not in self.channels]
            self.channels.update(new)
            for channel in new:
                if not await self._place(channel):
                    # Not fatal: the hub starts, and the recovery subscribes
                    # the channel once its shard answers, then catches up.
                    self._schedule_recovery()

    async def close(self):
        """Drop every subscription and connection (tests; a loop that ends)."""
        async with self.lock:
            self.channels = set()
            if self.recovery is not None:
                self.recovery.cancel()
            for reader in list(self.readers.values()):
                await self._drop_reader(reader)
            await self.client.aclose()

    # --- placing channels on their shard --------------------------------------------

    async def _owner(self, channel):
        if not self._initialized:
            await self.client.initialize()
            self._initialized = True
        return self.client.get_node_from_key(channel)

    async def _place(self, channel):
        """Subscribe a channel on the master that owns it and wait for the
        server's confirmation (so that what is published from then on is
        heard); False when that failed."""
        reader = None
        try:
            node = await self._owner(channel)
            reader = self.readers.get(node.name)
            if reader is None or reader.dead:
                if reader is not None:
                    await self._drop_reader(reader)
                reader = self.readers[node.name] = _NodeReader(node, self._auth)
            reader.leaving.discard(channel)
            confirmed = reader.confirming[channel] = asyncio.get_running_loop().create_future()
            await reader.pubsub.ssubscribe(channel)
            if reader.task is None:
                reader.task = asyncio.get_running_loop().create_task(
                    self._read(reader), context=contextvars.Context())
            if not await asyncio.wait_for(confirmed, CONFIRM_SECONDS):
                # Refused (MOVED) on a live connection, or the connection died:
                # either way the recovery tries again on a fresh slot map.
                logger.debug("event=bus_subscribe_refused channel=%s", channel)
                return False
            reader.channels.add(channel)
            self.placed[channel] = node.name
            return True
        except Exception as exc:  # noqa: BLE001 - a shard away: the recovery tries again
            logger.debug("event=bus_subscribe_failed channel=%s error=%r", channel, exc)
            if reader is not None:
                reader.fail()
            return False

    async def _leave(self, channel):
        reader = self.readers.get(self.placed.pop(channel, None))
        if reader is None or channel not in reader.channels:
            return
        reader.channels.discard(channel)
        reader.leaving.add(channel)
        try:
            await reader.pubsub.sunsubscribe(channel)
        except Exception:  # noqa: BLE001 - a dead connection has no subscription
            logger.info("event=unsubscribe_failed channel=%s", channel)
        if not reader.channels:
            await self._drop_reader(reader)

    async def _drop_reader(self, reader):
        if self.readers.get(reader.name) is reader:
            del self.readers[reader.name]
        for channel in reader.channels:
            if self.placed.get(channel) == reader.name:
                del self.placed[channel]
        reader.channels = set()
        await reader.close()

    # --- reading ----------------------------------------------------------------------

    async def _read(self, reader):
        from chat.realtime.hub import get_registry
        from chat.realtime.revocation import on_access_event

        registry = get_registry()
        access = access_channel()
        while True:
            try:
                msg = await reader.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                # An error reply to our SSUBSCRIBE (MOVED: the slot map we used
                # was older than this node's); the connection itself is fine.
                logger.info("event=bus_subscribe_redirected node=%s error=%r",
                            reader.name, exc)
                reader.refuse_pending()
                continue
            except Exception as exc:  # noqa: BLE001 - the node is gone (or demoted)
                reader.fail()
                if self.readers.get(reader.name) is not reader:
                    return  # dropped on purpose
                metrics.BUS_RECEIVE_ERRORS.inc()
                logger.warning("event=bus_receive_failed node=%s error=%r", reader.name, exc)
                self._schedule_recovery()
                return
            if msg is None:
                continue
            kind = msg["type"]
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if kind == "smessage":
                if channel == access:
                    on_access_event(registry, msg["data"])
                    continue
                hub = registry.hubs.get(int(channel.rsplit(".", 1)[1]))
                if hub is not None:
                    hub.feed_raw(msg["data"])
            elif kind == "ssubscribe":
                confirmed = reader.confirming.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(True)
            elif kind == "sunsubscribe":
                if channel in reader.leaving:
                    reader.leaving.discard(channel)
                elif channel in reader.channels:
                    # Not asked for: the node gave up the channel's slot.
                    logger.info("event=bus_slot_moved node=%s channel=%s",
                                reader.name, channel)
                    reader.channels.discard(channel)
                    if self.placed.get(channel) == reader.name:
                        del self.placed[channel]
                    self._schedule_recovery()

    # --- recovery ---------------------------------------------------------------------

    def _schedule_recovery(self):
        if self.recovery is None or self.recovery.done():
            self.recovery = asyncio.get_running_loop().create_task(
                self._recover(), context=contextvars.Context())
        else:
            self.recover_again = True

    async def _recover(self):
        """Resubscribe everything on its current owner, then catch every hub up."""
        from chat.realtime.hub import get_registry
        from chat.realtime.revocation import recheck_all

        started = last_fill = time.monotonic()
        attempt = 0
        registry = get_registry()
        while True:
            await asyncio.sleep(RECOVERY_DELAYS[min(attempt, len(RECOVERY_DELAYS) - 1)])
            attempt += 1
            self.recover_again = False
            async with self.lock:
                done = await self._resubscribe()
            if done and not self.recover_again:
                break
            if not done:
                logger.info("event=bus_resubscribe_pending tries=%d", attempt)
                if time.monotonic() - last_fill >= UNHEARD_FILL_SECONDS:
                    # While a shard fails over, its projects' hubs read what
                    # they cannot hear from PostgreSQL, sooner than their poll.
                    last_fill = time.monotonic()
                    for hub in list(registry.hubs.values()):
                        if bus_channel(hub.project_id) not in self.placed:
                            hub.request_catch_up()
        replaced, self.replaced = self.replaced, set()
        self.recoveries += 1
        self.last_recovery_seconds = time.monotonic() - started
        logger.warning("event=bus_resubscribed seconds=%.2f tries=%d channels=%d",
                       self.last_recovery_seconds, attempt, len(replaced))
        # Whatever was published while a channel was unheard is in PostgreSQL:
        # the hubs of those channels catch up (the others heard everything).
        for hub in list(registry.hubs.values()):
            if bus_channel(hub.project_id) in replaced:
                hub.request_catch_up()
        if access_channel() in replaced:
            recheck_all(registry)  # a revocation may have gone unheard

    async def _resubscribe(self):
        """One pass: a fresh slot map, then every wanted channel on its owner."""
        try:
            if self._initialized:
                await self.client.nodes_manager.initialize()
            else:
                await self._owner(access_channel())
        except Exception:  # noqa: BLE001 - no node answers yet
            logger.info("event=bus_slot_map_failed", exc_info=True)
            return False
        for reader in [r for r in self.readers.values() if r.dead]:
            await self._drop_reader(reader)
        done = True
        unreachable = set()  # owners that failed in this pass: their other channels wait
        for channel in sorted(self.channels):
            try:
                owner = self.client.get_node_from_key(channel).name
            except Exception:  # noqa: BLE001 - a slot without a master yet
                done = False
                continue
            if owner in unreachable:
                done = False
                continue
            where = self.placed.get(channel)
            reader = self.readers.get(where)
            if where == owner and reader is not None and channel in reader.channels:
                continue
            if where is not None:
                await self._leave(channel)
            self.replaced.add(channel)
            if not await self._place(channel):
                done = False
                unreachable.add(owner)
        for reader in [r for r in self.readers.values() if r.dead or not r.channels]:
            await self._drop_reader(reader)
        return done
