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


def project_group(project_id):
    """Name of a project's group (used for logs and the bus channel)."""
    return f"project.{project_id}"


def bus_channel(project_id):
    """Redis channel of a project. Channels are global to a Redis server (not per
    database number), so the name carries the deployment's prefix."""
    return f"{settings.BUS_PREFIX}:{project_group(project_id)}"


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

    async def subscribe(self, hub):
        return None

    async def unsubscribe(self, hub):
        return None


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

    def _subscriber(self, loop):
        sub = self._subscribers.get(loop)
        if sub is None:
            sub = self._subscribers[loop] = _Subscriber(self.url)
        return sub

    async def subscribe(self, hub):
        await self._subscriber(hub.loop).subscribe(hub.project_id)

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
            self.channels.add(channel)
            await self.pubsub.subscribe(channel)
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
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
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
    def __init__(self):
        self.hubs = {}
        self.starting = {}


_registries = weakref.WeakKeyDictionary()  # loop -> _Registry


def get_registry():
    loop = asyncio.get_running_loop()
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = _Registry()
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
        self._publish_presence(query=len(self.consumers) == 1)

    def remove(self, consumer):
        self.consumers.discard(consumer)
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
