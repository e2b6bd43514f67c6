"""The user-level socket's side of real time (/ws/me/, chat.me_consumer).

Two roads, chosen for what each carries (docs/REALTIME.md, "The sidebar"):

- **A project's changes keep their hub.** A /ws/me/ socket puts one
  ``ProjectTap`` per project of its user into that project's hub, beside the
  project sockets. The tap hears the same batches and the socket keeps the
  user's counts itself (``ProjectCounts``): a message costs each member's
  socket a few dictionary operations and one small frame, and no database
  query at all. The revocation path treats a tap as a socket of its user in
  the project (held, checked again, closed), so a project whose access ended
  sends nothing more.
- **User-targeted events travel on Channels' layer**, one group per user
  (``user.<id>``): the read pointer moved (``me.read``, with the project's
  counts from one COUNT query after commit) and a membership began or ended
  (``me.membership``). They are sent after commit from the one place each
  happens (projects.actions.do_mark_read, projects/signals.py).
"""

import asyncio
import logging
import threading

from django.db import connection, transaction

logger = logging.getLogger(__name__)

# How often a socket sends a project's counts at most (docs/REALTIME.md).
UPDATE_INTERVAL_SECONDS = 0.25
# The sidebar's projects: the user's first by name, DMs included (the
# project list's largest page, so the page's sidebar can read it cached).
SIDEBAR_MAX_PROJECTS = 100
# Count changes remembered per project to reconcile a read's counts with
# changes heard after its COUNT ran (a read's event and the hub's batches
# travel apart): the few of the last moments are all that is ever needed.
LOG_MAX = 256
# Text carried by a notification's excerpt (shown by the browser only).
EXCERPT_CHARS = 140


def user_group(user_id):
    """The channel-layer group of a user's /ws/me/ sockets."""
    return f"user.{user_id}"


def mentions_user(content_html, user_id):
    """Whether rendered content mentions the user by name or as @all."""
    if 'data-user-id="' not in content_html:
        return False
    return (f'data-user-id="{user_id}"' in content_html
            or 'data-user-id="all"' in content_html)


# --- reads ----------------------------------------------------------------------------


def read_sidebar(user):
    """The user's projects with counts, assembled as the API's list is
    (projects.selectors.get_user_project_items)."""
    from projects.selectors import get_user_project_items

    items, _total = get_user_project_items(user, per_page=SIDEBAR_MAX_PROJECTS)
    return items


def read_project_counts(user_id, project_id):
    """(project seq, last_read_seq, unread, mentions) of one membership: one query.

    The counts are those of projects.selectors.get_user_project_page, for one
    project; None when the user is not a member of an active project.
    """
    from chat.models import Mention, Message
    from projects.models import Membership, Project

    qn = connection.ops.quote_name
    membership, project = qn(Membership._meta.db_table), qn(Project._meta.db_table)
    message, mention = qn(Message._meta.db_table), qn(Mention._meta.db_table)
    sql = (
        "SELECT p.seq, ms.last_read_seq,"
        f" (SELECT COUNT(*) FROM {message} x WHERE x.project_id = ms.project_id"
        "   AND x.seq > ms.last_read_seq AND x.deleted_at IS NULL AND x.author_id <> %s),"
        f" (SELECT COUNT(*) FROM {mention} n INNER JOIN {message} y ON y.id = n.message_id"
        "   WHERE n.user_id = %s AND n.project_id = ms.project_id"
        "   AND n.seq > ms.last_read_seq AND y.deleted_at IS NULL)"
        f" FROM {membership} ms INNER JOIN {project} p ON p.id = ms.project_id"
        " WHERE ms.user_id = %s AND ms.project_id = %s AND p.is_active"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [user_id, user_id, user_id, project_id])
        return cursor.fetchone()


# --- sending user-targeted events (after commit, never raising) ------------------------


def notify_read_moved(user_id, project_id):
    """After commit, send the user's sockets the project's counts (one COUNT)."""
    transaction.on_commit(lambda: _send_read(user_id, project_id))


def notify_membership(user_id, project_id, state):
    """After commit, tell the user's sockets a membership was "joined" or "removed"."""
    event = {"type": "me.membership", "project_id": project_id, "state": state}
    transaction.on_commit(lambda: send_to_user(user_id, event))


def _send_read(user_id, project_id):
    try:
        if _local_only() and _local_loop(user_id) is None:
            return  # nobody of this user listens in this process: no query
        row = read_project_counts(user_id, project_id)
    except Exception:  # noqa: BLE001 - the counts come again with the next change
        logger.warning("event=me_read_count_failed project=%s", project_id, exc_info=True)
        return
    if row is None:
        return
    seq, last_read_seq, unread, mentions = row
    send_to_user(user_id, {
        "type": "me.read", "project_id": project_id, "seq": seq,
        "last_read_seq": last_read_seq, "unread_count": unread, "mention_count": mentions,
    })


def _layer():
    from channels.layers import get_channel_layer

    return get_channel_layer()


def _local_only():
    from channels.layers import InMemoryChannelLayer

    return isinstance(_layer(), InMemoryChannelLayer)


def _local_loop(user_id):
    """The event loop holding a /ws/me/ socket of the user in this process, if any."""
    from chat.realtime.hub import registries

    for loop, registry in list(registries.items()):
        try:
            sockets = list(registry.sockets.get(user_id, ()))
        except RuntimeError:  # changed while read from this thread: look again
            sockets = list(registry.sockets.get(user_id, ()))
        if any(getattr(s, "is_me_socket", False) for s in sockets) and not loop.is_closed():
            return loop
    return None


def send_to_user(user_id, event):
    """Hand an event to the user's group on the channel layer. Never raises.

    Called from the thread that committed. The in-memory layer of the
    embedded default is the process's own: the send runs on the event loop
    of the user's sockets (asyncio queues are not thread-safe). channels-redis
    sends run on one background event loop per process, so its connection
    pool is reused and the committing thread never waits for Redis.
    """
    try:
        layer = _layer()
        if layer is None:
            return
        group = user_group(user_id)
        if _local_only():
            loop = _local_loop(user_id)
            if loop is not None:
                asyncio.run_coroutine_threadsafe(layer.group_send(group, event), loop)
            return
        _sender().submit(layer.group_send(group, event))
    except Exception:  # noqa: BLE001 - the bus is a hint; a reconnect reads the truth
        logger.warning("event=me_send_failed", exc_info=True)


class _Sender:
    """One event loop on a daemon thread for channel-layer sends from sync code."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self.loop.run_forever, name="me-sender", daemon=True)
        thread.start()

    def submit(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(_log_failure)


def _log_failure(future):
    if future.exception() is not None:
        logger.warning("event=me_send_failed error=%r", future.exception())


_sender_instance = None
_sender_lock = threading.Lock()


def _sender():
    global _sender_instance
    if _sender_instance is None:
        with _sender_lock:
            if _sender_instance is None:
                _sender_instance = _Sender()
    return _sender_instance


# --- a socket's counts of one project ---------------------------------------------------


class ProjectCounts:
    """One project's unread and mention counts as one /ws/me/ socket keeps them.

    ``base``: the project number the counts include every change up to (the
    database's, from the list or a read's COUNT, then each change heard). The
    hub delivers changes in ``changed_seq`` order, so a change at or below
    ``base`` is already counted and one above it is applied exactly once.
    """

    __slots__ = ("project_id", "kind", "seq", "base", "last_read", "unread", "mention",
                 "live_mentions", "log")

    def __init__(self, item):
        self.project_id = item["id"]
        self.kind = item.get("kind", "project")
        self.seq = self.base = item["seq"]
        self.last_read = item["last_read_seq"]
        self.unread = item["unread_count"]
        self.mention = item["mention_count"]
        self.live_mentions = {}  # seq -> mentions me, of unread messages heard live
        self.log = []  # (changed_seq, seq, unread delta, mention delta)

    def apply_change(self, message, user_id):
        """Count one change; return (frame wanted, notification or None)."""
        changed_seq = message["changed_seq"]
        if changed_seq <= self.base:
            return False, None
        self.base = changed_seq
        self.seq = max(self.seq, changed_seq)
        if message["user"]["id"] == user_id:
            return False, None  # my own message or a change of it: nothing to show
        seq, d_unread, d_mention, notify = message["seq"], 0, 0, None
        if seq > self.last_read:
            if message["deleted"]:
                if seq != changed_seq:  # a tombstone of a message that was counted
                    d_unread = -1 if self.unread > 0 else 0
                    d_mention = -1 if self.live_mentions.pop(seq, False) else 0
            elif seq == changed_seq:  # a new message
                mentioned = mentions_user(message["content_html"], user_id)
                self.live_mentions[seq] = mentioned
                d_unread, d_mention = 1, int(mentioned)
                if mentioned or self.kind == "dm":
                    notify = {"seq": seq, "user": message["user"]["username"],
                              "mention": mentioned,
                              "excerpt": message["content"][:EXCERPT_CHARS]}
            elif seq in self.live_mentions:  # an edit of an unread message heard live
                # An edit can add or remove a mention of me: count the
                # difference (no notification: the message was announced). Of a
                # message counted by the database before this socket, the
                # earlier state is not known here: its count waits for the
                # next read or reload.
                mentioned = mentions_user(message["content_html"], user_id)
                d_mention = int(mentioned) - int(self.live_mentions[seq])
                self.live_mentions[seq] = mentioned
        self.unread = max(0, self.unread + d_unread)
        self.mention = max(0, min(self.unread, self.mention + d_mention))
        if d_unread or d_mention:
            self.log.append((changed_seq, seq, d_unread, d_mention))
            if len(self.log) > LOG_MAX:
                del self.log[: len(self.log) - LOG_MAX]
        return True, notify

    def apply_read(self, event):
        """Take a read's counts (COUNT as of project number ``seq``); False if stale."""
        last_read, counted_upto = event["last_read_seq"], event["seq"]
        if last_read < self.last_read:
            return False
        # Changes heard after the COUNT ran are in the log, not in its answer.
        later = [e for e in self.log if e[0] > counted_upto and e[1] > last_read]
        self.unread = max(0, event["unread_count"] + sum(e[2] for e in later))
        self.mention = max(0, min(
            self.unread, event["mention_count"] + sum(e[3] for e in later)))
        self.last_read = last_read
        self.base = max(self.base, counted_upto)
        self.seq = max(self.seq, counted_upto)
        self.log = [e for e in self.log if e[0] > counted_upto]
        self.live_mentions = {s: m for s, m in self.live_mentions.items() if s > last_read}
        return True

    def frame(self):
        return {"type": "project_update", "project_id": self.project_id, "seq": self.seq,
                "unread_count": self.unread, "mention_count": self.mention}


class ProjectTap:
    """A /ws/me/ socket's ear in one project's hub: a socket to the hub and to
    revocation (held, checked, closed), but nobody online in the project."""

    in_presence = False
    socket_id = None  # the owning socket is the one counted

    def __init__(self, owner, project_id):
        self.owner = owner
        self.project_id = project_id
        self.user_id, self.username = owner.user_id, owner.username
        self.hub = None
        self.holds = 0
        self.held = []
        self.closing = False

    @property
    def session_key(self):
        return self.owner.session_key

    @property
    def session_hash(self):
        return self.owner.session_hash

    def push_batch(self, frame, batch):
        if self.closing:
            return
        if self.holds:
            self.held.append(batch)
        else:
            self.owner.on_changes(self.project_id, batch)

    def push_frame(self, frame):
        """Typing and presence are for the project's page, not the sidebar."""

    def hold(self):
        self.holds += 1

    def release(self):
        self.holds = max(0, self.holds - 1)
        if not self.holds:
            held, self.held = self.held, []
            for batch in held:
                self.push_batch(None, batch)

    def revoke(self, code):
        self.held = []
        self.owner.on_tap_revoked(self, code)

    def leave(self):
        self.closing = True
        if self.hub is not None:
            self.hub.remove(self)
            self.hub = None
