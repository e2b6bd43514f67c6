"""One hub per project and event loop: orders, batches and fans out the
project's changes to this process's sockets.

Design (chosen by measurement, docs/PERFORMANCE.md and docs/REALTIME.md): each
process keeps one ``ProjectHub`` per project with local sockets, fed by one
bus subscription per process and project. The hub puts changes back into
``changed_seq`` order (several processes publish, and publish order is not
commit order), fills any gap from the database, batches them (at most
BROADCAST_MAX_BATCH per frame, no later than BROADCAST_MAX_WAIT_MS after the
first; the first change after a quiet period goes at once), encodes each batch
once and hands the same text to every local socket's bounded queue. A socket
whose queue is full is closed with 4008; the others never wait for it. A
periodic check of the project's number catches any change whose publish was
lost (Redis outage).
"""

import asyncio
import contextvars
import logging
import time
import weakref

import orjson
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from chat import metrics
from chat.realtime.bus import get_bus
from chat.realtime.frames import encode_frame, message_batch
from chat.realtime.notify import notify_presence
from chat.realtime.presence import Presence
from chat.serializers import serialize_message

logger = logging.getLogger(__name__)

GAP_WAIT_SECONDS = 0.2
POLL_SECONDS = 3.0
SOCKET_REFRESH_SECONDS = 60.0
# Messages per frame when a hub catches up from the database (a lost publish,
# a Redis outage): late already, they go in few frames rather than in batches.
CATCH_UP_FRAME = 200
# How long a replay's frames serve other sockets asking for the same changes.
REPLAY_SHARE_SECONDS = 2.0


def db_task(fn):
    """Run a database function for sockets, closing stale connections around it.

    Channels' one database thread per process: trying the loop's thread pool
    instead exhausted the connection pool in the PostgreSQL test run, and one
    send costs about a millisecond, so 100 sends/s use a tenth of the thread.
    """
    return database_sync_to_async(fn)


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
        self.poller = None

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

    # -- the safety net under the bus --
    def watch(self):
        """Poll while this loop has hubs (a hub calls it when it starts)."""
        if self.poller is None or self.poller.done():
            self.poller = self.loop.create_task(self._poll(), context=contextvars.Context())

    async def _poll(self):
        """Every POLL_SECONDS, compare every hub's delivered number with the
        project's in the database -- one query for all of this loop's hubs --
        and have a hub that is behind catch up (a lost last publish leaves no
        gap for the hub to see)."""
        while self.hubs:
            await asyncio.sleep(POLL_SECONDS)
            hubs = [hub for hub in self.hubs.values() if hub.started and not hub.closed]
            if not hubs:
                continue
            try:
                seqs = await _read_project_seqs([hub.project_id for hub in hubs])
            except Exception:  # noqa: BLE001 - database away: try next time
                continue
            for hub in hubs:
                seq = seqs.get(hub.project_id, 0)
                if seq > hub.last_seq and hub.gap_handle is None and not hub.closed:
                    hub.request_catch_up()


registries = weakref.WeakKeyDictionary()  # loop -> _Registry


def get_registry():
    loop = asyncio.get_running_loop()
    registry = registries.get(loop)
    if registry is None:
        registry = registries[loop] = _Registry(loop)
        # Presence and typing publishes (a Redis round trip each) run on the
        # loop's default executor, off the event loop: give it room beside
        # uvicorn's own work. Database work does not: it runs on Channels' one
        # database thread (db_task).
        from concurrent.futures import ThreadPoolExecutor

        loop.set_default_executor(ThreadPoolExecutor(
            max_workers=settings.WS_PUBLISH_THREADS, thread_name_prefix="ws-publish"))
    return registry




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
def _read_project_seqs(project_ids):
    from projects.models import Project

    return dict(Project.objects.filter(pk__in=project_ids).values_list("pk", "seq"))


@db_task
def _read_replay(project_id, after, upto):
    from chat.selectors import get_changes_after
    from chat.serializers import serialize_messages

    rows, has_more = get_changes_after(project_id, after=after, upto=upto,
                                       limit=settings.REPLAY_LIMIT)
    if has_more:
        return None
    messages, size = serialize_messages(rows), settings.BROADCAST_MAX_BATCH
    return [message_batch(messages[start:start + size])
            for start in range(0, len(messages), size)]


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
        self.presence = Presence(self)
        self.replays = {}  # (after, upto) -> the read of their frames, shared a while

    async def start(self):
        seq = await _read_project_seq(self.project_id)
        self.last_seq = self.flushed_seq = seq
        self.started = True
        early, self.early = self.early, []
        for data in early:
            self.feed_raw(data)
        get_registry().watch()
        self.presence.start()

    # -- sockets --
    def add(self, consumer):
        if consumer in self.consumers:
            return
        self.consumers.add(consumer)
        get_registry().add_socket(consumer)
        # A /ws/me/ listener (chat.realtime.me) hears changes but is nobody
        # online in the project: it neither shows in presence nor announces.
        if getattr(consumer, "in_presence", True):
            self.presence.joined(consumer)

    def remove(self, consumer):
        present = consumer in self.consumers
        self.consumers.discard(consumer)
        registry = registries.get(self.loop)
        if registry is not None:
            registry.remove_socket(consumer)
        if not self.consumers and not self.closed:
            self.closed = True
            self.loop.create_task(self._close())
        elif present and getattr(consumer, "in_presence", True):
            self.presence.left(consumer)

    async def _close(self):
        registry = registries.get(self.loop)
        if registry is not None and registry.hubs.get(self.project_id) is self:
            del registry.hubs[self.project_id]
        self.presence.stop()
        for handle in (self.flush_handle, self.gap_handle):
            if handle is not None:
                handle.cancel()
        await sync_to_async(notify_presence)(self.project_id, [])
        if registry is None or self.project_id not in registry.hubs:
            await get_bus().unsubscribe(self)

    # -- replays --
    async def replay(self, after, upto):
        """The frames of the changes in (after, upto], None if more than
        REPLAY_LIMIT: read and encoded once for every socket asking the same
        within REPLAY_SHARE_SECONDS (after a restart, thousands of sockets of a
        project ask for the same few changes)."""
        key = (after, upto)
        read = self.replays.get(key)
        if read is None:
            read = self.replays[key] = self.loop.create_task(
                _read_replay(self.project_id, after, upto), context=contextvars.Context())
            read.add_done_callback(lambda done: self._forget_replay(key, done))
        return await asyncio.shield(read)

    def _forget_replay(self, key, read):
        if read.cancelled() or read.exception() is not None:
            self.replays.pop(key, None)  # a failed read is not shared: the next asks again
        else:
            self.loop.call_later(REPLAY_SHARE_SECONDS, self.replays.pop, key, None)

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
            self.fan_out(frame, exclude_user=event["user"]["id"])
        elif kind == "presence":
            self.presence.on_event(event)

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

    # -- output --
    def flush(self):
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        frame = message_batch(batch)
        self.flushed_seq = batch[-1]["changed_seq"]
        metrics.BATCHES_SENT.inc()
        metrics.MESSAGES_PER_BATCH.observe(len(batch))
        for consumer in list(self.consumers):
            consumer.push_batch(frame, batch)

    def fan_out(self, frame, exclude_user=None):
        for consumer in list(self.consumers):
            if exclude_user is not None and consumer.user_id == exclude_user:
                continue
            consumer.push_frame(frame)
