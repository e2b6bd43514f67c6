"""The project socket: /ws/projects/{id}/?after={seq} (docs/PROTOCOL.md)."""

import asyncio
import logging
import time
import uuid
from urllib.parse import parse_qs

import orjson
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from chat import metrics
from chat.actions import check_send_message
from chat.realtime.bus import get_bus
from chat.realtime.frames import (
    CLOSE_NO_PROJECT,
    CLOSE_NOT_MEMBER,
    CLOSE_NOT_SIGNED_IN,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TOO_SLOW,
    PONG,
    RESYNC_REQUIRED,
    encode_frame,
    message_batch,
)
from chat.realtime.hub import (
    access_events,
    db_task,
    join_project,
    listen_for_revocations,
)
from chat.realtime.notify import notify_typing, session_fingerprint
from chat.realtime.revocation import verdicts
from chat.serializers import serialize_message
from chatsite.errors import ChatError, Forbidden, NotFound
from chatsite.logging import bind_connection_id
from chatsite.websocket import EXTENSION as WIRE_EXTENSION
from projects.access import access_project_cached
from projects.actions import do_mark_read

logger = logging.getLogger(__name__)

TYPING_MIN_INTERVAL = 2.0


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")  # two per socket

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@db_task
def check_member(user, project_id):
    """The socket's access check: the cached entry the hot path reads too
    (membership and project changes retire it), the database when missing."""
    access_project_cached(user, project_id)


@db_task
def send_message(user, project_id, content, client_msg_id, attachment_ids=None):
    message, _ = check_send_message(
        user, project_id, content, client_msg_id, attachment_ids=attachment_ids
    )
    return serialize_message(message)


@db_task
def mark_read(user, project_id, seq):
    return do_mark_read(user, project_id, seq)


class ProjectConsumer(AsyncWebsocketConsumer):
    """Thin: parse, check, then hand the socket to its project's hub."""

    # Changes reach sockets through their project's hub (chat.realtime), never
    # through the channel layer: no channel per socket (with the Redis layer,
    # one pub/sub subscription per socket, opened and closed with it).
    channel_layer_alias = None
    hub = None
    writer = None
    # Once live on a server that writes frames itself (chatsite.websocket's
    # "chat.frames" extension): its write and close, called at once.
    wire = None
    wire_close = None
    closing = False
    user_id = None
    username = ""
    project_id = None
    session_key = None
    session_hash = None
    socket_id = None  # counted against WS_MAX_SOCKETS_PER_USER while set
    holds = 0  # access checks under way: frames wait in `held` meanwhile

    async def connect(self):
        # Every log line of this connection's task carries one request id.
        bind_connection_id(self.scope)
        self.queue = asyncio.Queue(maxsize=settings.WS_SEND_QUEUE_FRAMES)
        self.skip_upto = 0
        self.send_bucket = TokenBucket(settings.WS_RATE_PER_SECOND, settings.WS_RATE_BURST)
        self.frame_bucket = TokenBucket(settings.WS_RATE_PER_SECOND * 5, settings.WS_RATE_BURST * 5)
        self.last_typing = 0.0
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return await self.close_with(CLOSE_NOT_SIGNED_IN)
        self.user = user
        self.user_id, self.username = user.pk, user.username
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        if self.session_key:
            self.session_hash = session_fingerprint(self.session_key)
        self.held = []
        # A revocation heard while this socket is checked and joined (it was
        # not in its hub to be held) is checked again before anything is sent.
        await listen_for_revocations()
        events_before = access_events()
        if not await self.claim_socket():
            return await self.close_with(CLOSE_TOO_MANY_SOCKETS)
        try:
            self.project_id = int(self.scope["url_route"]["kwargs"]["project_id"])
            await check_member(user, self.project_id)
        except NotFound:
            return await self.close_with(CLOSE_NO_PROJECT)
        except Forbidden:
            return await self.close_with(CLOSE_NOT_MEMBER)
        after = self._after()
        self.hub = await join_project(self.project_id, self)
        metrics.WEBSOCKET_CONNECTIONS_ACTIVE.inc()
        if access_events() != events_before:
            code = (await verdicts([self], self.project_id, session=True)).get(self)
            if code is not None:
                metrics.SOCKETS_REVOKED.labels(str(code)).inc()
                self.leave_hub()
                return await self.close_with(code)
        upto = self.hub.flushed_seq
        await self.send(text_data=encode_frame(
            {"type": "hello", "project_id": self.project_id, "seq": upto}
        ))
        if after is not None:
            await self.replay(after, upto)
        # A client ahead of this hub (it read the API) skips frames it already has.
        self.skip_upto = after if after is not None and after > upto else 0
        await self.send(text_data=self.hub.presence.frame())
        self.go_live()

    def _after(self):
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        raw = (query.get("after") or [None])[0]
        if raw is None or raw == "":
            return None
        try:
            return max(0, int(raw))
        except ValueError:
            return None

    async def replay(self, after, upto):
        """Send the changes in (after, upto] before anything live."""
        if after >= upto:
            return
        frames = await self.hub.replay(after, upto)
        if frames is None:
            metrics.REPLAYS.labels("resync").inc()
            await self.send(text_data=RESYNC_REQUIRED)
            return
        metrics.REPLAYS.labels("replayed").inc()
        for frame in frames:
            await self.send(text_data=frame)

    async def claim_socket(self):
        """Count this socket against the user's open sockets; False over the limit.

        A bus that cannot count (Redis away) lets the socket open: the limit
        guards against a flood, not a single user's tabs.
        """
        socket_id = uuid.uuid4().hex
        bus = get_bus()
        try:
            count = await bus.claim_socket(self.user_id, socket_id)
        except Exception:  # noqa: BLE001
            logger.warning("event=socket_count_failed", exc_info=True)
            return True
        self.socket_id = socket_id
        if count > settings.WS_MAX_SOCKETS_PER_USER:
            await self.release_socket()
            return False
        return True

    async def release_socket(self):
        socket_id, self.socket_id = self.socket_id, None
        if socket_id is None:
            return
        try:
            await get_bus().release_socket(self.user_id, socket_id)
        except Exception:  # noqa: BLE001 - its count expires by itself
            logger.info("event=socket_release_failed")

    async def disconnect(self, code):
        self.leave_hub()
        if self.writer is not None:
            self.writer.cancel()
        await self.release_socket()

    def leave_hub(self):
        if self.hub is not None:
            self.hub.remove(self)
            self.hub = None
            metrics.WEBSOCKET_CONNECTIONS_ACTIVE.dec()

    async def close_with(self, code):
        metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
        self.closing = True
        await self.close(code=code)

    # -- outgoing: pre-encoded text, written at once or through a bounded queue --
    def go_live(self):
        """Send what queued up while connecting, then each frame as it comes.

        Where the server writes frames itself, a frame goes straight to the
        socket's transport (no task, no queue per socket); a client whose
        transport holds more than WS_SEND_BUFFER_BYTES is too slow. Elsewhere
        (another server, tests' communicators) a writer task drains the queue.
        """
        # The handshake's headers were read (origin, cookies, session): an
        # idle socket need not keep them (the list is shared by every copy of
        # the scope the ASGI stack holds).
        headers = self.scope.get("headers")
        if isinstance(headers, list):
            headers.clear()
        frames = self.scope.get("extensions", {}).get(WIRE_EXTENSION)
        if frames is None:
            self.writer = asyncio.get_running_loop().create_task(self.write_frames())
            return
        queued = []
        while not self.queue.empty():
            queued.append(self.queue.get_nowait())
        self.queue = None
        self.wire, self.wire_close = frames["write"], frames["close"]
        for frame in queued:
            self.push_frame(frame)

    def push_batch(self, frame, batch):
        if batch[-1]["changed_seq"] <= self.skip_upto:
            return
        if batch[0]["changed_seq"] <= self.skip_upto:
            # Rare: a batch straddling where this client already is; send
            # only what it lacks.
            batch = [m for m in batch if m["changed_seq"] > self.skip_upto]
            frame = message_batch(batch)
        self.push_frame(frame)

    def push_frame(self, frame):
        if self.closing:
            return
        if self.wire is not None and not self.holds:
            buffered = self.wire(frame)
            if buffered is not None and buffered > settings.WS_SEND_BUFFER_BYTES:
                metrics.SLOW_CLIENTS_CLOSED.inc()
                self.close_now(CLOSE_TOO_SLOW)
            return
        if self.holds:
            self.held.append(frame)
            if len(self.held) <= settings.WS_SEND_QUEUE_FRAMES:
                return
            frame = None  # as a full queue: a client this far behind is dropped
        try:
            if frame is None:
                raise asyncio.QueueFull
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # A client that does not read must not slow the others: drop it.
            metrics.SLOW_CLIENTS_CLOSED.inc()
            self.close_now(CLOSE_TOO_SLOW)

    # -- revocation (chat.realtime.revocation holds, checks, then releases or revokes) --
    def hold(self):
        """Keep frames back until the access check under way ends."""
        self.holds += 1

    def release(self):
        """The check found access intact: send what was held."""
        self.holds = max(0, self.holds - 1)
        if not self.holds:
            held, self.held = self.held, []
            for frame in held:
                self.push_frame(frame)

    def revoke(self, code):
        """Access ended: close with `code`; nothing more is sent."""
        self.held = []
        self.close_now(code)

    def close_now(self, code):
        """Leave the hub at once and close with `code`, dropping queued frames."""
        if self.closing:
            return
        self.closing = True
        self.leave_hub()
        if self.wire_close is not None:
            metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
            self.wire_close(code)
            asyncio.get_running_loop().create_task(self.release_socket())
            return
        asyncio.get_running_loop().create_task(self._close_dropping(code))

    async def _close_dropping(self, code):
        if self.writer is not None:
            self.writer.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()
        metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
        try:
            await self.close(code=code)
        except Exception:  # noqa: BLE001 - the client may already be gone
            logger.info("event=close_after_disconnect project=%s", self.project_id)
        await self.release_socket()

    async def write_frames(self):
        try:
            while True:
                frame = await self.queue.get()
                await self.send(text_data=frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the socket went away mid-send
            self.closing = True
            logger.info("event=send_failed project=%s", getattr(self, "project_id", None))

    async def send_error(self, code, message, client_msg_id=None):
        frame = {"type": "error", "code": code, "message": message}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        self.push_frame(encode_frame(frame))

    # -- incoming --
    def accepting_frames(self):
        """Whether incoming frames are read (the socket has joined its hub)."""
        return self.hub is not None

    def frame_handlers(self):
        """The frame types this socket takes, each with its handler."""
        return {
            "message.send": self.message_send,
            "typing": self.typing,
            "read": self.read,
            "ping": self.ping,
        }

    async def receive(self, text_data=None, bytes_data=None):
        if self.closing or not self.accepting_frames():
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            return await self.close_with(CLOSE_TOO_BIG)
        if text_data is None:
            return await self.send_error("bad_frame", "Frames must be JSON text.")
        if not self.frame_bucket.take():
            return await self.send_error("rate_limited", "Too many frames; slow down.")
        try:
            event = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return await self.send_error("bad_json", "The frame is not valid JSON.")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return await self.send_error("bad_frame", "A frame is a JSON object with a type.")
        handler = self.frame_handlers().get(event["type"])
        if handler is None:
            return await self.send_error("unknown_type", f"Unknown frame type {event['type'][:50]!r}.")
        await handler(event)

    async def message_send(self, event):
        if not self.send_bucket.take():
            return await self.send_error("rate_limited", "You are sending too fast; slow down.")
        content = event.get("content")
        if not isinstance(content, str):
            return await self.send_error("invalid", "content must be text.")
        client_msg_id = event.get("client_msg_id")
        if client_msg_id is not None and not isinstance(client_msg_id, str):
            return await self.send_error("invalid", "client_msg_id must be a UUID string.")
        # Its shape and the uploads are checked with the send (chat.uploads).
        attachment_ids = event.get("attachment_ids")
        try:
            message = await send_message(
                self.user, self.project_id, content, client_msg_id, attachment_ids
            )
        except ChatError as error:
            return await self.send_error(error.code, error.message, client_msg_id)
        except DatabaseError:
            logger.warning("event=send_failed_database project=%s", self.project_id)
            return await self.send_error(
                "unavailable", "The message was not stored; try again shortly.", client_msg_id
            )
        self.push_frame(encode_frame(
            {"type": "ack", "client_msg_id": message["client_msg_id"], "message": message}
        ))

    async def typing(self, event):
        now = time.monotonic()
        if now - self.last_typing < TYPING_MIN_INTERVAL:
            return
        self.last_typing = now
        await sync_to_async(notify_typing, thread_sensitive=False)(
            self.project_id, self.user
        )

    async def read(self, event):
        seq = event.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return await self.send_error("invalid", "seq must be an integer.")
        try:
            await mark_read(self.user, self.project_id, seq)
        except ChatError as error:
            await self.send_error(error.code, error.message)

    async def ping(self, event):
        self.push_frame(PONG)
