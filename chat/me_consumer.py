"""The user-level socket: /ws/me/ (docs/PROTOCOL.md, "/ws/me/").

The sidebar's live counts. Session auth, the Origin check (the same ASGI
wrapper as the project socket), the per-user socket count and the revocation
path are the project socket's (chat.consumers.ProjectConsumer, which this
extends); the counts are kept per socket from the hubs' batches and the
user's channel-layer group (chat.realtime.me; docs/REALTIME.md, "The sidebar").
"""

import asyncio
import logging
import time

from django.conf import settings

from chat import metrics
from chat.consumers import ProjectConsumer, TokenBucket
from chat.realtime.frames import (
    CLOSE_NOT_MEMBER,
    CLOSE_NOT_SIGNED_IN,
    CLOSE_TOO_MANY_SOCKETS,
    encode_frame,
)
from chat.realtime.hub import (
    access_events,
    db_task,
    get_registry,
    join_project,
    listen_for_revocations,
    registries,
)
from chat.realtime.me import (
    UPDATE_INTERVAL_SECONDS,
    ProjectCounts,
    ProjectTap,
    read_sidebar,
    user_group,
)
from chat.realtime.notify import session_fingerprint
from chat.realtime.revocation import verdicts
from chatsite.logging import bind_connection_id

logger = logging.getLogger(__name__)

# channels-redis forgets a group membership after a day (group_expiry):
# an open socket joins its group again well before.
GROUP_REFRESH_SECONDS = 3600.0


@db_task
def read_sidebar_items(user):
    return read_sidebar(user)


def sidebar_item(item):
    """What the socket tells of a project (hello, membership joined)."""
    return {"id": item["id"], "name": item["name"], "kind": item.get("kind", "project"),
            "seq": item["seq"], "last_read_seq": item["last_read_seq"],
            "unread_count": item["unread_count"], "mention_count": item["mention_count"]}


class MeConsumer(ProjectConsumer):
    """Thin: the user's projects and counts, then updates as they change."""

    channel_layer_alias = "default"  # the user's group: reads and memberships
    is_me_socket = True
    in_presence = False
    registered = False
    refresher = None

    async def connect(self):
        bind_connection_id(self.scope)
        self.queue = asyncio.Queue(maxsize=settings.WS_SEND_QUEUE_FRAMES)
        self.frame_bucket = TokenBucket(settings.WS_RATE_PER_SECOND * 5,
                                        settings.WS_RATE_BURST * 5)
        self.held = []
        self.taps = {}  # project id -> ProjectTap
        self.counts = {}  # project id -> ProjectCounts
        self.last_sent = {}  # project id -> when its last update went (monotonic)
        self.timers = {}  # project id -> the coalesced update waiting
        self.notes = {}  # project id -> the notification to go with its next update
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
        # As the project socket: a revocation heard while this socket connects
        # is checked again before anything is sent.
        await listen_for_revocations()
        events_before = access_events()
        if not await self.claim_socket():
            return await self.close_with(CLOSE_TOO_MANY_SOCKETS)
        get_registry().add_socket(self)
        self.registered = True
        metrics.WEBSOCKET_CONNECTIONS_ACTIVE.inc()
        if self.channel_layer is not None:
            # Before the list is read: a membership that begins meanwhile is
            # heard after the hello (Channels runs handlers one at a time).
            await self.channel_layer.group_add(user_group(self.user_id), self.channel_name)
        items = await read_sidebar_items(user)
        for item in items:
            self.counts[item["id"]] = ProjectCounts(item)
        await self.listen_to(list(self.counts))
        items = await self.recount_if_behind(items)
        if access_events() != events_before:
            code = (await verdicts([self], None, session=True)).get(self)
            if code is not None:
                metrics.SOCKETS_REVOKED.labels(str(code)).inc()
                self.leave_hub()
                return await self.close_with(code)
            items = await self.reconcile()
        await self.send(text_data=encode_frame(
            {"type": "hello", "user_id": self.user_id,
             "projects": [sidebar_item(i) for i in items if i["id"] in self.counts]}))
        self.go_live()
        if self.channel_layer is not None:
            self.refresher = asyncio.get_running_loop().create_task(self.refresh_group())

    async def listen_to(self, project_ids):
        """Put a tap in each project's hub (a hub starts with one query of its own)."""
        taps = [ProjectTap(self, pid) for pid in project_ids if pid not in self.taps]
        for tap in taps:
            self.taps[tap.project_id] = tap
        hubs = await asyncio.gather(*(join_project(t.project_id, t) for t in taps))
        for tap, hub in zip(taps, hubs):
            if tap.closing or self.taps.get(tap.project_id) is not tap:
                hub.remove(tap)  # dropped while joining
            else:
                tap.hub = hub

    async def recount_if_behind(self, items):
        """A hub that had handed out changes past the list's numbers before the
        tap joined will not repeat them: read the counts once more (rare)."""
        behind = [pid for pid, tap in self.taps.items()
                  if tap.hub is not None and tap.hub.flushed_seq > self.counts[pid].base]
        if not behind:
            return items
        fresh = await read_sidebar_items(self.user)
        by_id = {item["id"]: item for item in fresh}
        for pid in behind:
            if pid in by_id:
                self.counts[pid] = ProjectCounts(by_id[pid])
        return fresh

    async def reconcile(self):
        """After a revocation heard while connecting: keep only projects still mine."""
        items = await read_sidebar_items(self.user)
        mine = {item["id"] for item in items}
        for pid in [pid for pid in self.counts if pid not in mine]:
            self.drop_project(pid)
        return items

    async def refresh_group(self):
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            try:
                await self.channel_layer.group_add(user_group(self.user_id), self.channel_name)
            except Exception:  # noqa: BLE001 - tried again next time
                logger.info("event=me_group_refresh_failed")

    # -- the hubs' batches (through the taps) --
    def on_changes(self, project_id, batch):
        counts = self.counts.get(project_id)
        if counts is None or self.closing:
            return
        wanted = False
        for message in batch:
            changed, note = counts.apply_change(message, self.user_id)
            wanted = wanted or changed
            if note is not None:
                self.notes[project_id] = note
        if wanted:
            self.schedule_update(project_id)

    def schedule_update(self, project_id):
        """At most one update per project per UPDATE_INTERVAL_SECONDS: a burst
        becomes one frame with the latest counts."""
        if project_id in self.timers:
            return
        wait = self.last_sent.get(project_id, 0.0) + UPDATE_INTERVAL_SECONDS - time.monotonic()
        if wait <= 0:
            self.send_update(project_id)
        else:
            self.timers[project_id] = asyncio.get_running_loop().call_later(
                wait, self.send_update, project_id)

    def send_update(self, project_id):
        timer = self.timers.pop(project_id, None)
        if timer is not None:
            timer.cancel()
        counts = self.counts.get(project_id)
        if counts is None or self.closing:
            return
        self.last_sent[project_id] = time.monotonic()
        frame = counts.frame()
        note = self.notes.pop(project_id, None)
        if note is not None:
            frame["notify"] = note
        self.push_frame(encode_frame(frame))

    # -- the user's group (chat.realtime.me.send_to_user) --
    async def me_read(self, event):
        counts = self.counts.get(event["project_id"])
        if counts is not None and counts.apply_read(event):
            self.notes.pop(counts.project_id, None)
            self.send_update(counts.project_id)

    async def me_membership(self, event):
        project_id, state = event["project_id"], event["state"]
        if state == "removed":
            if self.drop_project(project_id):
                self.push_frame(encode_frame(
                    {"type": "membership", "project_id": project_id, "state": "removed"}))
            return
        if project_id in self.counts or self.closing:
            return
        # A membership began: one read of the list (rare; the DM's name and the
        # counts come as the list shows them).
        items = await read_sidebar_items(self.user)
        item = next((i for i in items if i["id"] == project_id), None)
        if item is None or self.closing or project_id in self.counts:
            return
        self.counts[project_id] = ProjectCounts(item)
        await self.listen_to([project_id])
        items = await self.recount_if_behind(items)
        item = next((i for i in items if i["id"] == project_id), item)
        if project_id in self.counts:
            self.push_frame(encode_frame({
                "type": "membership", "project_id": project_id, "state": "joined",
                "project": sidebar_item(item)}))

    # -- revocation --
    def on_tap_revoked(self, tap, code):
        if code == CLOSE_NOT_MEMBER:
            # That project's access ended (removed, left, deactivated): the
            # sidebar drops it; the socket stays for the others.
            if self.drop_project(tap.project_id):
                self.push_frame(encode_frame(
                    {"type": "membership", "project_id": tap.project_id, "state": "removed"}))
        else:
            self.revoke(code)

    def drop_project(self, project_id):
        """Stop counting and hearing a project; True if it was one of mine."""
        tap = self.taps.pop(project_id, None)
        if tap is not None:
            tap.leave()
        timer = self.timers.pop(project_id, None)
        if timer is not None:
            timer.cancel()
        self.notes.pop(project_id, None)
        self.last_sent.pop(project_id, None)
        return self.counts.pop(project_id, None) is not None

    def leave_hub(self):
        """Leave every hub and stop being counted (the project socket's name for it)."""
        for project_id in list(self.taps):
            self.drop_project(project_id)
        if self.registered:
            self.registered = False
            registry = registries.get(asyncio.get_running_loop())
            if registry is not None:
                registry.remove_socket(self)
            metrics.WEBSOCKET_CONNECTIONS_ACTIVE.dec()

    async def disconnect(self, code):
        self.closing = True
        self.leave_hub()
        for task in (self.writer, self.refresher):
            if task is not None:
                task.cancel()
        if self.channel_layer is not None and self.user_id is not None:
            try:
                await self.channel_layer.group_discard(
                    user_group(self.user_id), self.channel_name)
            except Exception:  # noqa: BLE001 - the group entry expires by itself
                logger.info("event=me_group_discard_failed")
        await self.release_socket()

    async def _close_dropping(self, code):
        if self.refresher is not None:
            self.refresher.cancel()
        await super()._close_dropping(code)

    # -- incoming: only ping (ProjectConsumer.receive checks and parses) --
    def accepting_frames(self):
        return self.registered

    def frame_handlers(self):
        return {"ping": self.ping}
