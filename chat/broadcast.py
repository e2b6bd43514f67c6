"""Broadcast of project changes to WebSocket clients. The only code that talks
to the bus between server processes.

Design (chosen by measurement, see docs/PERFORMANCE.md and docs/REALTIME.md):

* A committed change is published once, as orjson bytes, to the bus: Redis
  pub/sub channel ``chat:project:<id>`` in production shape, the process's own
  hubs on the embedded default. Publishing is a plain synchronous call from the
  thread that committed (a pooled Redis connection; no connection per send, no
  ``async_to_sync``).
* Each server process keeps one ``ProjectHub`` per project with local sockets,
  fed by one pub/sub subscription per process and project. The hub puts the
  changes back into ``changed_seq`` order (several processes publish, and
  publish order is not commit order), fills any gap from the database, batches
  them (at most BROADCAST_MAX_BATCH per frame, no later than
  BROADCAST_MAX_WAIT_MS after the first; the first change after a quiet period
  goes at once), encodes each batch once and hands the same text to every local
  socket's bounded queue. A socket whose queue is full is closed with 4008; the
  others never wait for it.
* A periodic check of the project's number catches any change whose publish was
  lost (Redis outage): the database is the source of truth, the bus is a hint.
* Access that ends (leave, removal, a deactivated project or user, a changed
  password, a sign-out) is published on one process-wide channel
  (``<prefix>:access``) after its commit. Every process holds the affected
  sockets' frames, checks them again against the database and the session
  store, and closes those that lost access (4403 project or membership, 4401
  user or session); the rest get their held frames. docs/REALTIME.md,
  "Revocation".
"""

import asyncio
import contextvars
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref

import orjson
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction

from chat import metrics
from chat.serializers import serialize_message

logger = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
GAP_WAIT_SECONDS = 0.2
POLL_SECONDS = 3.0
PRESENCE_HEARTBEAT_SECONDS = 15.0
PRESENCE_STALE_SECONDS = 45.0
SOCKET_REFRESH_SECONDS = 60.0


def _db_task(fn):
    # chat.broadcast.db_task, usable above its definition.
    return database_sync_to_async(fn)


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


# Messages per frame when a hub catches up from the database (a lost publish,
# a Redis outage): late already, they go in few frames rather than in batches.
CATCH_UP_FRAME = 200


def encode_frame(payload):
    """Encode one server-to-client frame once, as text."""
    return orjson.dumps(payload).decode()


# --- publishing -----------------------------------------------------------------


def broadcast_on_commit(message, item=None):
    """Publish a message's change after the surrounding transaction commits.

    `item` is the message's JSON when the caller has it already.
    """
    event = {"kind": "change", "message": item or serialize_message(message)}
    # Encoding now makes a value that cannot be encoded fail where it was made.
    data = orjson.dumps(event)
    project_id = message.project_id
    transaction.on_commit(lambda: publish(project_id, data))


def notify_typing(project_id, user):
    publish(project_id, orjson.dumps({"kind": "typing", "user": _user(user)}))


def notify_presence(project_id, users, *, query=False):
    event = {"kind": "presence", "process": PROCESS_ID, "users": users, "query": query}
    publish(project_id, orjson.dumps(event))


def _user(user):
    return {"id": user.pk, "username": user.username}


def notify_access_ended(*, project_id=None, user_ids=None, user_id=None, session_key=None):
    """After commit, tell every process that access may have ended.

    ``project_id`` (with ``user_ids``, or None for all of the project's
    sockets): memberships or the project changed. ``user_id``: the user changed
    (deactivated, new password, deleted). These sockets are checked again
    against the database, so a spurious or repeated event closes nothing that
    still has access. ``user_id`` with ``session_key``: that session signed
    out; its sockets close without a check (the session is being flushed).
    """
    event = {"kind": "revoke", "project_id": project_id, "user_id": user_id,
             "user_ids": sorted(set(user_ids)) if user_ids is not None else None,
             "session": session_fingerprint(session_key) if session_key else None}
    data = orjson.dumps(event)
    transaction.on_commit(lambda: publish_access(data))


def session_fingerprint(session_key):
    """What the bus carries of a session key: a hash, never the key."""
    return hashlib.blake2b(session_key.encode(), digest_size=16).hexdigest()


def publish_access(data):
    """Hand an encoded revocation to every process. Never raises."""
    try:
        get_bus().publish_access(data)
    except Exception:
        metrics.BUS_PUBLISH_ERRORS.inc()
        logger.warning("event=publish_access_failed", exc_info=True)


def publish(project_id, data):
    """Hand encoded bytes to every process's hub of the project. Never raises."""
    try:
        get_bus().publish(project_id, data)
    except Exception:
        metrics.BUS_PUBLISH_ERRORS.inc()
        logger.warning("event=publish_failed project=%s", project_id, exc_info=True)


class LocalBus:
    """The embedded default: hubs of this process only."""

    def publish(self, project_id, data):
        for registry in list(_registries.values()):
            hub = registry.hubs.get(project_id)
            if hub is not None:
                # A fresh context: the publisher may sit inside sync_to_async,
                # and the hub's own database reads must not inherit that.
                hub.loop.call_soon_threadsafe(
                    hub.feed_raw, data, context=contextvars.Context()
                )

    def publish_access(self, data):
        for loop, registry in list(_registries.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(
                    registry.on_access_event, data, context=contextvars.Context()
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
        client = self._subscriber(asyncio.get_running_loop()).client
        key, now = self._sockets_key(user_id), time.time()
        async with client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {socket_id: now + self.SOCKET_TTL_SECONDS})
            pipe.zcard(key)
            pipe.expire(key, self.SOCKET_TTL_SECONDS)
            _, _, count, _ = await pipe.execute()
        return count

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


class _Subscriber:
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

        self.client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
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

    async def unsubscribe(self, project_id):
        channel = bus_channel(project_id)
        async with self.lock:
            if project_id in get_registry().hubs:
                return  # a new hub of the project took over the subscription
            self.channels.discard(channel)
            try:
                await self.pubsub.unsubscribe(channel)
            except Exception:  # noqa: BLE001 - a dead connection has no subscription
                logger.info("event=unsubscribe_failed channel=%s", channel)

    async def _read(self):
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
                registry.recheck_all()
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel == access_channel():
                registry.on_access_event(msg["data"])
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
                _bus = RedisBus(redis_url) if redis_url else LocalBus()
    return _bus


def reset_bus():
    """Forget the bus (tests switch settings)."""
    global _bus
    _bus = None


# --- receiving: one hub per project and event loop ----------------------------------


class _Registry:
    """One event loop's hubs and sockets."""

    def __init__(self, loop):
        self.loop = loop
        self.hubs = {}
        self.starting = {}
        self.sockets = {}  # user id -> this loop's open sockets of the user
        # Revocations heard: a socket that was connecting meanwhile checks again.
        self.access_events = 0
        self.refresher = None

    # -- sockets by user --
    def add_socket(self, consumer):
        self.sockets.setdefault(consumer.user_id, set()).add(consumer)
        if self.refresher is None or self.refresher.done():
            self.refresher = self.loop.create_task(self._refresh_sockets())

    def remove_socket(self, consumer):
        sockets = self.sockets.get(consumer.user_id)
        if sockets is not None:
            sockets.discard(consumer)
            if not sockets:
                del self.sockets[consumer.user_id]

    async def _refresh_sockets(self):
        """Keep this loop's open sockets counted (WS_MAX_SOCKETS_PER_USER)."""
        while self.sockets:
            await asyncio.sleep(SOCKET_REFRESH_SECONDS)
            pairs = [(c.user_id, c.socket_id) for sockets in list(self.sockets.values())
                     for c in sockets if c.socket_id]
            try:
                await get_bus().refresh_sockets(pairs)
            except Exception:  # noqa: BLE001 - counted again on the next round
                logger.info("event=socket_refresh_failed")

    # -- revocation --
    def on_access_event(self, data):
        """A revocation from any process: hold and check again the sockets concerned."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("event=bus_bad_access_payload")
            return
        self.access_events += 1
        metrics.ACCESS_EVENTS.inc()
        project_id, user_id = event.get("project_id"), event.get("user_id")
        if project_id is not None:
            hub = self.hubs.get(project_id)
            if hub is not None:
                user_ids = event.get("user_ids")
                wanted = None if user_ids is None else set(user_ids)
                self.recheck([c for c in hub.consumers
                              if wanted is None or c.user_id in wanted], project_id=project_id)
        if user_id is not None:
            sockets = list(self.sockets.get(user_id, ()))
            ended = event.get("session")
            if ended is None:
                self.recheck(sockets, session=True)
            else:
                from chat.consumers import CLOSE_NOT_SIGNED_IN

                for consumer in sockets:
                    if consumer.session_hash == ended:
                        metrics.SOCKETS_REVOKED.labels(str(CLOSE_NOT_SIGNED_IN)).inc()
                        consumer.revoke(CLOSE_NOT_SIGNED_IN)

    def recheck_all(self):
        """Check every socket of this loop again (revocations may have been missed)."""
        for hub in list(self.hubs.values()):
            self.recheck(list(hub.consumers), project_id=hub.project_id, session=True)

    def recheck(self, consumers, *, project_id=None, session=False):
        """Hold the sockets' frames, check their access again, then release or close.

        Whatever the hub had batched came before the revocation and goes first;
        anything after waits in the sockets' holds until the check ends, so
        nothing sent after a revocation reaches a socket it closes.
        """
        if not consumers:
            return
        for hub in {c.hub for c in consumers if c.hub is not None}:
            hub.flush()
        for consumer in consumers:
            consumer.hold()
        self.loop.create_task(
            _recheck(consumers, project_id, session), context=contextvars.Context())


async def _recheck(consumers, project_id, session):
    from chat.consumers import CLOSE_ACCESS_CHECK_FAILED, CLOSE_NOT_MEMBER, CLOSE_NOT_SIGNED_IN

    verdicts = {}
    try:
        if session:
            keys = {(c.user_id, c.session_key) for c in consumers}
            valid = await _sessions_still_valid(keys)
            for consumer in consumers:
                if (consumer.user_id, consumer.session_key) not in valid:
                    verdicts[consumer] = CLOSE_NOT_SIGNED_IN
        if project_id is not None:
            allowed = await _members_with_access(project_id, {c.user_id for c in consumers})
            for consumer in consumers:
                if consumer.user_id not in allowed:
                    verdicts.setdefault(consumer, CLOSE_NOT_MEMBER)
    except Exception:  # noqa: BLE001 - cannot confirm access: fail closed, retryable
        logger.warning("event=access_recheck_failed", exc_info=True)
        verdicts = dict.fromkeys(consumers, CLOSE_ACCESS_CHECK_FAILED)
    for consumer in consumers:
        code = verdicts.get(consumer)
        if code is None:
            consumer.release()
        else:
            metrics.SOCKETS_REVOKED.labels(str(code)).inc()
            consumer.revoke(code)


@_db_task
def _sessions_still_valid(keys):
    from accounts.sessions import session_grants_user

    return {(user_id, key) for user_id, key in keys if session_grants_user(key, user_id)}


@_db_task
def _members_with_access(project_id, user_ids):
    from projects.access import members_with_access

    return members_with_access(project_id, user_ids)


_registries = weakref.WeakKeyDictionary()  # loop -> _Registry


def get_registry():
    loop = asyncio.get_running_loop()
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = _Registry(loop)
        # Presence publishes run on the loop's default executor: give it
        # room beside uvicorn's own work.
        from concurrent.futures import ThreadPoolExecutor

        loop.set_default_executor(
            ThreadPoolExecutor(max_workers=settings.WS_DB_THREADS, thread_name_prefix="ws-db")
        )
    return registry


def db_task(fn):
    """Run a database function for sockets, closing stale connections around it.

    Channels' one database thread per process: trying the loop's thread pool
    instead exhausted the connection pool in the PostgreSQL test run, and one
    send costs about a millisecond, so 100 sends/s use a tenth of the thread.
    """
    return database_sync_to_async(fn)


async def listen_for_revocations():
    """Make sure this event loop hears revocations (before a socket's access check).

    A bus that cannot subscribe now (Redis away) is not fatal: its reader checks
    every socket again once it is back (_Subscriber._read).
    """
    try:
        await get_bus().listen_access()
    except Exception:  # noqa: BLE001
        logger.warning("event=access_subscribe_failed", exc_info=True)


def access_events():
    """How many revocations this event loop has heard (see ProjectConsumer.connect)."""
    return get_registry().access_events


async def join_project(project_id, consumer):
    """Register a socket with its project's hub; return the hub.

    Every change after ``hub.flushed_seq`` (read right after this call) reaches
    the socket's queue; the caller replays what came before from the database.
    """
    registry = get_registry()
    hub = registry.hubs.get(project_id)
    if hub is not None and hub.closed:
        hub = None
    if hub is None or not hub.started:
        # A hub that is still reading its starting number is not ready: its
        # flushed_seq would tell the socket a wrong place to replay from.
        starting = registry.starting.get(project_id)
        if starting is None:
            starting = asyncio.get_running_loop().create_task(_start_hub(project_id))
            registry.starting[project_id] = starting
        hub = await asyncio.shield(starting)
    hub.add(consumer)
    return hub


async def _start_hub(project_id):
    registry = get_registry()
    hub = ProjectHub(project_id)
    # Listen first, then read the number: a change committed in between is
    # either in the number or on the bus, never lost.
    registry.hubs[project_id] = hub
    try:
        await get_bus().subscribe(hub)
        await hub.start()
    except BaseException:
        registry.hubs.pop(project_id, None)
        raise
    finally:
        registry.starting.pop(project_id, None)
    return hub


@db_task
def _read_project_seq(project_id):
    from projects.models import Project

    return Project.objects.filter(pk=project_id).values_list("seq", flat=True).first() or 0


@db_task
def _read_changes(project_id, after, upto):
    from chat.selectors import get_changes_after

    rows, _ = get_changes_after(project_id, after=after, upto=upto, limit=100000)
    return [serialize_message(m) for m in rows]


class ProjectHub:
    """Orders, batches and fans out one project's changes to this process's sockets."""

    def __init__(self, project_id):
        self.project_id = project_id
        self.loop = asyncio.get_running_loop()
        self.consumers = set()
        self.started = False
        self.early = []  # raw events received before the starting number was read
        self.last_seq = 0  # highest change number accepted into a batch
        self.flushed_seq = 0  # highest change number handed to the sockets
        self.buffer = {}  # changed_seq -> message, ahead of a gap
        self.pending = []  # ordered messages waiting for the batch to go
        self.last_flush = 0.0
        self.last_arrival = 0.0  # when the last change was accepted (monotonic)
        self.flush_handle = None
        self.gap_handle = None
        self.catching_up = False
        self.closed = False
        self.presence = {}  # process -> (users, seen_at)
        self.online_frame = None
        self.poller = None
        self.heartbeat = None

    async def start(self):
        seq = await _read_project_seq(self.project_id)
        self.last_seq = self.flushed_seq = seq
        self.started = True
        early, self.early = self.early, []
        for data in early:
            self.feed_raw(data)
        self.poller = self.loop.create_task(self._poll(), context=contextvars.Context())
        self.heartbeat = self.loop.create_task(self._heartbeat())

    # -- sockets --
    def add(self, consumer):
        self.consumers.add(consumer)
        get_registry().add_socket(consumer)
        self._publish_presence(query=len(self.consumers) == 1)

    def remove(self, consumer):
        self.consumers.discard(consumer)
        registry = _registries.get(self.loop)
        if registry is not None:
            registry.remove_socket(consumer)
        if not self.consumers and not self.closed:
            self.closed = True
            self.loop.create_task(self._close())
        else:
            self._publish_presence()

    async def _close(self):
        registry = _registries.get(self.loop)
        if registry is not None and registry.hubs.get(self.project_id) is self:
            del registry.hubs[self.project_id]
        for task in (self.poller, self.heartbeat):
            if task is not None:
                task.cancel()
        for handle in (self.flush_handle, self.gap_handle):
            if handle is not None:
                handle.cancel()
        await sync_to_async(notify_presence)(self.project_id, [])
        if registry is None or self.project_id not in registry.hubs:
            await get_bus().unsubscribe(self)

    # -- input --
    def feed_raw(self, data):
        if self.closed:
            return
        if not self.started:
            self.early.append(data)
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("event=bus_bad_payload project=%s", self.project_id)
            return
        kind = event.get("kind")
        if kind == "change":
            self.feed_change(event["message"])
        elif kind == "typing":
            frame = encode_frame({"type": "typing", "user": event["user"]})
            self._fan_out(frame, exclude_user=event["user"]["id"])
        elif kind == "presence":
            self._on_presence(event)

    def feed_change(self, message):
        cs = message["changed_seq"]
        if cs <= self.last_seq:
            return  # already delivered (a replayed or repeated publish)
        if cs == self.last_seq + 1:
            self._accept(message)
            while self.last_seq + 1 in self.buffer:
                self._accept(self.buffer.pop(self.last_seq + 1))
            if not self.buffer and self.gap_handle is not None:
                self.gap_handle.cancel()
                self.gap_handle = None
            return
        self.buffer[cs] = message
        if self.gap_handle is None:
            self.gap_handle = self.loop.call_later(
                GAP_WAIT_SECONDS, self.request_catch_up, context=contextvars.Context()
            )

    def _accept(self, message):
        self.last_seq = message["changed_seq"]
        self.pending.append(message)
        now = time.monotonic()
        since_previous, self.last_arrival = now - self.last_arrival, now
        max_batch = settings.BROADCAST_MAX_BATCH
        wait = settings.BROADCAST_MAX_WAIT_MS / 1000
        linger = settings.BROADCAST_LINGER_MS / 1000
        if len(self.pending) >= max_batch:
            self.flush()
        elif self.flush_handle is None:
            quiet = now - self.last_flush
            # Socket writes per second this pace would cost sent one by one.
            writes = len(self.consumers) / max(since_previous, 1e-6)
            if (quiet >= wait or since_previous >= linger
                    or writes < settings.BROADCAST_LINGER_MIN_WRITES):
                # The first change after a quiet period goes at once, and so
                # does one that came no sooner than a linger after the one
                # before: at a few changes a second company is unlikely
                # within the linger, and waiting would only add latency. So
                # does one for few sockets: sending it alone costs little, and
                # the wait would be the whole of its delay.
                self.flush()
            else:
                # Changes are coming close together: wait for company, never
                # later than BROADCAST_MAX_WAIT_MS after the first change;
                # BROADCAST_LINGER_MS (shorter) keeps delivery p95 low while a
                # busy project still fills batches of 10.
                self.flush_handle = self.loop.call_later(min(wait - quiet, linger), self.flush)

    def request_catch_up(self):
        """Fill gaps from the database (a lost or late publish)."""
        self.gap_handle = None
        if not self.catching_up and not self.closed:
            self.catching_up = True
            self.loop.create_task(self._catch_up(), context=contextvars.Context())

    async def _catch_up(self):
        try:
            upto = max(self.buffer) if self.buffer else None
            rows = await _read_changes(self.project_id, self.last_seq, upto)
            metrics.HUB_CATCH_UPS.inc()
            merged = {m["changed_seq"]: m for m in rows}
            for cs, m in self.buffer.items():
                merged.setdefault(cs, m)
            self.buffer = {}
            # The database is authoritative up to `upto`: numbers it does not
            # hold there belong to messages changed again later. What is late
            # goes out at once in frames of up to CATCH_UP_FRAME messages: in
            # batches of BROADCAST_MAX_BATCH a large gap would hand a socket
            # more frames in one loop turn than its queue holds (4008).
            self.flush()
            for cs in sorted(merged):
                if cs > self.last_seq:
                    self.last_seq = cs
                    self.pending.append(merged[cs])
                    if len(self.pending) >= CATCH_UP_FRAME:
                        self.flush()
            self.flush()
        except Exception:
            logger.warning("event=catch_up_failed project=%s", self.project_id, exc_info=True)
        finally:
            self.catching_up = False

    async def _poll(self):
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                seq = await _read_project_seq(self.project_id)
            except Exception:  # noqa: BLE001 - database away: try next time
                continue
            if seq > self.last_seq and self.gap_handle is None:
                self.request_catch_up()

    # -- output --
    def flush(self):
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        frame = encode_frame({"type": "message_batch", "messages": batch})
        self.flushed_seq = batch[-1]["changed_seq"]
        metrics.BATCHES_SENT.inc()
        metrics.MESSAGES_PER_BATCH.observe(len(batch))
        for consumer in list(self.consumers):
            consumer.push_batch(frame, batch)

    def _fan_out(self, frame, exclude_user=None):
        for consumer in list(self.consumers):
            if exclude_user is not None and consumer.user_id == exclude_user:
                continue
            consumer.push_frame(frame)

    # -- presence: each process announces its local users; union of fresh ones --
    def local_users(self):
        users = {}
        for consumer in self.consumers:
            users[consumer.user_id] = consumer.username
        return [{"id": uid, "username": name} for uid, name in sorted(users.items())]

    def _publish_presence(self, query=False):
        users = self.local_users()
        self.loop.run_in_executor(
            None, lambda: notify_presence(self.project_id, users, query=query)
        )

    def _on_presence(self, event):
        now = time.monotonic()
        self.presence[event["process"]] = (event["users"], now)
        if event.get("query") and event["process"] != PROCESS_ID and self.consumers:
            self._publish_presence()
        self._send_presence_if_changed()

    def online(self):
        now = time.monotonic()
        users = {}
        for process, (members, seen) in list(self.presence.items()):
            if now - seen > PRESENCE_STALE_SECONDS:
                del self.presence[process]
                continue
            for user in members:
                users[user["id"]] = user
        return [users[uid] for uid in sorted(users)]

    def presence_frame(self):
        return encode_frame({"type": "presence", "online": self.online()})

    def _send_presence_if_changed(self):
        frame = self.presence_frame()
        if frame != self.online_frame:
            self.online_frame = frame
            self._fan_out(frame)

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(PRESENCE_HEARTBEAT_SECONDS)
            self._publish_presence()
            self._send_presence_if_changed()
