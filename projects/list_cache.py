"""The project list computed from two cached pieces (docs/PERFORMANCE.md, "The
project list").

A list body changes with every message in any of the user's projects (its
unread counts do), so caching whole bodies per user retires nearly all of them
under writes, and every retired read ran the list query. Here the list is
assembled per read from pieces that a message retires once for everyone:

- The user's **skeleton**, in the cache under the user's version: their active
  memberships by project name (project id, stored name, role, last_read_seq),
  the first SKELETON_ROWS of them, and their total. Whatever moves one of these
  bumps the user's version: a read pointer moving (projects.actions.
  do_mark_read), a join, a leave, a role change, a project (de)activated
  (projects.signals).
- A project's **card**, in each process's memory under the project's version:
  the project's fields as the list shows them, a direct message's members'
  names, and its tail -- every message within TAIL_SEQS of the project's seq
  (the last TAIL_SEQS changes: sends, edits, deletes, reactions), each with its
  author, whether it is live (not deleted) and the users it mentions. A new
  version's card is the previous card plus the messages changed since (one
  indexed range of changed_seq; seq is taken under the project's row lock, so
  changes commit in seq order) and the project's row: two small statements per
  project change and process, instead of the list query per member and read.

A member's counts are then the tail's: unread = live messages after their
last_read_seq not their own, mentions = live messages after it mentioning them
(the list query's definitions, projects.selectors._project_page_sql). A member
further behind than the tail (last_read_seq below its floor), or a skeleton
that disagrees with a card (a project renamed or deactivated since), takes
the list query instead, so every answer is the query's answer.

What the tail cannot see: a message removed from the table (a user hard-deleted
takes their messages with them) changes no changed_seq. Its deletion marks the
project (mark_reset, after commit), and the next card of that project is read
whole.
"""

import bisect
import threading
import uuid

from django.db import connection, connections

from chatsite.dbrouter import read_alias, replica_read
from chatsite.rawsql import as_datetime

# Changes a card's tail reaches back: it keeps every message whose seq is within
# this many of the project's (the (project, seq) index reads them); a member
# further behind reads the list query. A full tail is ~80 KiB of a process's
# memory (~160 bytes a message).
TAIL_SEQS = 500
# Cards a process keeps (the least recently refreshed go first): at most
# ~80 MiB of full tails.
CARDS_MAX = 1000


class Card:
    """A project as its members' lists show it, at one version (never changed).

    `entries`: seq -> (author id, live, mentioned user ids) for every message
    with seq > `floor`; `covered`: every change numbered up to it is in.
    """

    __slots__ = ("project_id", "version", "fields", "dm_members", "covered", "floor",
                 "entries", "reset", "live", "by_author", "by_mention")

    def __init__(self, project_id, version, fields, dm_members, covered, floor, entries,
                 reset):
        self.project_id, self.version = project_id, version
        self.fields, self.dm_members = fields, dm_members
        self.covered, self.floor, self.entries, self.reset = covered, floor, entries, reset
        live, by_author, by_mention = [], {}, {}
        for seq in sorted(entries):
            author_id, is_live, mentioned = entries[seq]
            if is_live:
                live.append(seq)
                by_author.setdefault(author_id, []).append(seq)
                for user_id in mentioned:
                    by_mention.setdefault(user_id, []).append(seq)
        self.live, self.by_author, self.by_mention = live, by_author, by_mention

    def counts(self, user_id, last_read_seq):
        """(unread, mentions) of a member read up to last_read_seq, or None when
        the tail does not reach back that far."""
        if last_read_seq < self.floor:
            return None
        unread = _after(self.live, last_read_seq) - _after(
            self.by_author.get(user_id), last_read_seq)
        return unread, _after(self.by_mention.get(user_id), last_read_seq)

    def item(self, user_id, role, last_read_seq):
        """The member's list item (get_user_project_page's dict), or None."""
        found = self.counts(user_id, last_read_seq)
        if found is None:
            return None
        name = self.fields["name"]
        if self.dm_members is not None:
            from projects.selectors import dm_names_to_title

            name = dm_names_to_title(
                [n for uid, n in self.dm_members if uid != user_id], name)
        return {**self.fields, "name": name, "seq": max(self.fields["seq"], self.covered),
                "role": role, "last_read_seq": last_read_seq,
                "unread_count": found[0], "mention_count": found[1]}


def _after(seqs, seq):
    return 0 if not seqs else len(seqs) - bisect.bisect_right(seqs, seq)


# --- the process's cards ---------------------------------------------------------------

_cards = {}  # project id -> Card
_lock = threading.Lock()


def cards_at(versions):
    """{project id: Card} of the cards this process holds at exactly these versions."""
    found = {}
    for project_id, version in versions.items():
        card = _cards.get(project_id)
        if card is not None and card.version == version:
            found[project_id] = card
    return found


def _keep(cards):
    """Hold these cards; over CARDS_MAX, the least recently refreshed go (a
    quarter more than the excess, so a full process does not trim per card)."""
    with _lock:
        for card in cards:
            _cards.pop(card.project_id, None)
            _cards[card.project_id] = card
        excess = len(_cards) - CARDS_MAX
        if excess > 0:
            for project_id in list(_cards)[:excess + CARDS_MAX // 4]:
                del _cards[project_id]


def forget_cards():
    """Drop every card of this process (tests)."""
    with _lock:
        _cards.clear()


def reset_key(project_id):
    from chatsite.cache import make_key

    return make_key("pcard_reset", project_id)


def mark_reset(project_id):
    """After commit of a removal from the message table: the project's next card
    is read whole (its tail cannot see rows that are gone), then its version is
    bumped so every process takes that card."""
    from chatsite.cache import bump_version, safe_set

    safe_set(reset_key(project_id), uuid.uuid4().hex, timeout=None)
    bump_version("project", project_id)


@replica_read
def refresh_cards(versions, resets=None):
    """{project id: Card} at these versions: the held ones, the others refreshed
    from the database (their previous card plus the changes since, or whole).

    `resets`: {project id: reset mark} when the caller fetched the marks
    (reset_key) with the versions, else they are read here. Projects that no
    longer exist are left out.
    """
    from chatsite.cache import CACHE_LOOKUPS, safe_get_many

    found = cards_at(versions)
    stale = [pid for pid in versions if pid not in found]
    if not stale:
        return found
    CACHE_LOOKUPS.labels("project_card", "miss").inc(len(stale))
    if resets is None:
        marks = safe_get_many([reset_key(pid) for pid in stale])
        resets = {pid: marks.get(reset_key(pid)) for pid in stale}
    with connections[read_alias()].cursor() as cursor:
        rows = _project_rows(cursor, stale)
        whole, deltas = {}, {}
        for pid in stale:
            if pid not in rows:
                continue
            fields = rows[pid][0]
            previous = _cards.get(pid)
            if (previous is None or previous.reset != resets.get(pid)
                    or previous.fields["created_at"] != fields["created_at"]  # id reused
                    or fields["seq"] - previous.covered > TAIL_SEQS):
                whole[pid] = _floor(fields)
            else:
                deltas[pid] = previous
        tails = _whole_tails(cursor, whole) if whole else {}
        changes = _changes_since(
            cursor, {pid: previous.covered for pid, previous in deltas.items()}
        ) if deltas else {}
    built = []
    for pid, floor in whole.items():
        # No change numbered up to the floor touches a message after it.
        entries, covered = tails.get(pid, ({}, 0))
        built.append(Card(pid, versions[pid], *rows[pid], max(covered, floor), floor, entries,
                          resets.get(pid)))
    for pid, previous in deltas.items():
        built.append(_next_card(previous, versions[pid], *rows[pid],
                                changes.get(pid, ({}, 0))))
    _keep(built)
    found.update((card.project_id, card) for card in built)
    return found


def _project_rows(cursor, project_ids):
    """{project id: (list fields, [(user id, name)] of a DM's members or None)}."""
    qn = connection.ops.quote_name
    from accounts.models import User
    from projects.models import Membership, Project

    membership, project = qn(Membership._meta.db_table), qn(Project._meta.db_table)
    user = qn(User._meta.db_table)
    if connection.vendor == "postgresql":
        pair, array = "json_build_array", "json_agg"
    else:
        pair, array = "json_array", "json_group_array"
    marks = ", ".join(["%s"] * len(project_ids))
    cursor.execute(
        "SELECT p.id, p.name, p.kind, p.description, p.owner_id, p.is_private, p.is_active,"
        " p.created_at, p.seq,"
        f" CASE WHEN p.kind = 'dm' THEN (SELECT {array}({pair}("
        "   o.user_id, COALESCE(NULLIF(u.display_name, ''), u.username)))"
        f"   FROM {membership} o INNER JOIN {user} u ON u.id = o.user_id"
        "   WHERE o.project_id = p.id) END"
        f" FROM {project} p WHERE p.id IN ({marks})",
        list(project_ids),
    )
    found = {}
    for (pk, name, kind, description, owner_id, is_private, is_active, created_at, seq,
         members) in cursor.fetchall():
        if isinstance(members, (str, bytes)):
            import orjson

            members = orjson.loads(members)
        fields = {"id": pk, "name": name, "kind": kind, "description": description,
                  "owner_id": owner_id, "is_private": bool(is_private),
                  "is_active": bool(is_active), "created_at": as_datetime(created_at),
                  "seq": seq}
        dm_members = None
        if kind == "dm":
            dm_members = tuple((uid, n) for uid, n in members or ())
        found[pk] = (fields, dm_members)
    return found


def _tables():
    from chat.models import Mention, Message

    qn = connection.ops.quote_name
    return qn(Message._meta.db_table), qn(Mention._meta.db_table)


def _whole_tails(cursor, floors):
    """{project id: (entries, covered)}: every message after each project's floor
    with its mentions, one statement for them all."""
    return _tail_rows(cursor, "seq", floors)


def _changes_since(cursor, covered):
    """{project id: (entries, covered)}: the messages changed after each
    project's covered number with their mentions, one statement for them all."""
    return _tail_rows(cursor, "changed_seq", covered)


def _tail_rows(cursor, column, after):
    """{project id: (entries, covered)} of the messages whose `column` is past
    `after[project id]`: one statement, each project a range of its index
    ((project, seq) or (project, changed_seq))."""
    message, mention = _tables()
    where = " OR ".join([f"(m.project_id = %s AND m.{column} > %s)"] * len(after))
    params = [value for pair in after.items() for value in pair]
    cursor.execute(
        "SELECT m.project_id, m.seq, m.changed_seq, m.author_id, m.deleted_at IS NULL,"
        f" n.user_id FROM {message} m LEFT JOIN {mention} n ON n.message_id = m.id"
        f" WHERE {where}",
        params,
    )
    by_project = {}
    for row in cursor.fetchall():
        by_project.setdefault(row[0], []).append(row[1:])
    return {pid: _entries(rows) for pid, rows in by_project.items()}


def _entries(rows):
    """({seq: (author id, live, mentioned ids)}, highest changed_seq) of rows
    (seq, changed_seq, author id, live, mentioned user id or None)."""
    entries, covered = {}, 0
    for seq, changed_seq, author_id, live, mentioned in rows:
        covered = max(covered, changed_seq)
        author_id, live, mentioned_ids = entries.get(seq, (author_id, bool(live), ()))
        if mentioned is not None:
            mentioned_ids = (*mentioned_ids, mentioned)
        entries[seq] = (author_id, live, mentioned_ids)
    return entries, covered


def _floor(fields):
    """The seq after which a card at this project row keeps every message."""
    return max(0, fields["seq"] - TAIL_SEQS)


def _next_card(previous, version, fields, dm_members, changes):
    """The previous card with the changes since applied, trimmed to the tail."""
    changed, covered = changes
    floor = max(previous.floor, _floor(fields))
    entries = {seq: entry for seq, entry in previous.entries.items() if seq > floor}
    for seq, entry in changed.items():
        if seq > floor:
            entries[seq] = entry
    return Card(previous.project_id, version, fields, dm_members,
                max(previous.covered, covered), floor, entries, previous.reset)


# --- the user's skeleton ---------------------------------------------------------------


def skeleton_key(user_id):
    from chatsite.cache import make_key

    return make_key("plskel", user_id)


def skeleton_rows():
    from chatsite.pagination import MAX_PER_PAGE
    from projects.selectors import CACHED_LIST_PAGES

    return CACHED_LIST_PAGES * MAX_PER_PAGE


@replica_read
def read_skeleton(user_id):
    """(rows, total): the user's first skeleton_rows() active memberships by
    project name, as (project id, stored name, role, last_read_seq)."""
    from projects.models import Membership, Project

    qn = connection.ops.quote_name
    membership, project = qn(Membership._meta.db_table), qn(Project._meta.db_table)
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(
            "SELECT ms.project_id, p.name, ms.role, ms.last_read_seq, COUNT(*) OVER ()"
            f" FROM {membership} ms INNER JOIN {project} p ON p.id = ms.project_id"
            " WHERE ms.user_id = %s AND p.is_active"
            " ORDER BY p.name, ms.project_id LIMIT %s",
            [user_id, skeleton_rows()],
        )
        rows = cursor.fetchall()
    total = rows[0][-1] if rows else 0
    return tuple(row[:4] for row in rows), total


def page_of(skeleton, page, per_page):
    """The skeleton rows of a list page."""
    rows, _total = skeleton
    return rows[(page - 1) * per_page:page * per_page]


# assemble's answers when the pieces cannot make the page
STALE = "stale"  # a project renamed, deactivated or gone since the skeleton was read
BEHIND = "behind"  # a member further behind than a project's tail


def assemble(user_id, skeleton, page, per_page, cards):
    """(items, total) of a list page from the skeleton and the page's cards, else
    STALE or BEHIND."""
    items = []
    for project_id, name, role, last_read_seq in page_of(skeleton, page, per_page):
        card = cards.get(project_id)
        if card is None or card.fields["name"] != name or not card.fields["is_active"]:
            return STALE
        item = card.item(user_id, role, last_read_seq)
        if item is None:
            return BEHIND
        items.append(item)
    return items, skeleton[1]
