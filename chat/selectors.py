"""Reads of chat history. History is ordered by seq, never by time or offset."""

import functools

import orjson
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.db.models import Q, Subquery

from chat import history_cache
from chat.models import Mention, Message
from chat.rendering import current_html
from chat.serializers import MESSAGE_FIELDS, serialize_messages
from chatsite.dbrouter import read_alias, replica_read
from chatsite.pagination import DEFAULT_LIMIT, page_numbered
from chatsite.rawsql import as_datetime, as_json, as_uuid_text
from projects.models import Project


def _messages(project_id):
    return Message.objects.filter(project_id=project_id).select_related("author").only(
        *MESSAGE_FIELDS, "author__id", "author__username"
    )


def get_recent_messages(project_id, *, before=None, limit=DEFAULT_LIMIT):
    """Return (messages newest first, has_more) with seq < before."""
    qs = _messages(project_id)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    rows = list(qs.order_by("-seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


@functools.cache
def _history_sql(kind):
    """SQL of a cursor-history body read, built once per process.

    Body builds run after every change of a busy project, so they skip the
    ORM's per-call query construction (several times the query's own cost):
    one fixed statement per kind, rows serialized straight from the cursor.
    Every row also carries the project's number (`upto`: the page holds every
    change up to it, read in the same statement). chat/tests/test_selectors.py
    checks the output against serialize_messages over the ORM's rows.
    """
    qn = connection.ops.quote_name
    message, user = qn(Message._meta.db_table), qn(get_user_model()._meta.db_table)
    project = qn(Project._meta.db_table)
    where, order = {
        "recent": ("", "m.seq DESC"),
        "before": (" AND m.seq < %s", "m.seq DESC"),
        "after": (" AND m.changed_seq > %s", "m.changed_seq"),
    }[kind]
    return (
        "SELECT m.id, m.project_id, m.seq, m.changed_seq, m.author_id, u.username,"
        " m.content, m.content_html, m.render_version, m.reaction_summary,"
        " m.attachment_summary, m.created_at, m.edited_at, m.deleted_at, m.client_msg_id,"
        " p.seq"
        f" FROM {message} m INNER JOIN {user} u ON u.id = m.author_id"
        f" INNER JOIN {project} p ON p.id = m.project_id"
        f" WHERE m.project_id = %s{where} ORDER BY {order} LIMIT %s"
    )


def _serialize_row(row):
    """serialize_message's JSON of one _history_sql row."""
    (pk, project_id, seq, changed_seq, author_id, username, content, content_html,
     render_version, reactions, attachments, created_at, edited_at, deleted_at,
     client_msg_id, _upto) = row
    deleted = deleted_at is not None
    return {
        "id": pk,
        "project_id": project_id,
        "seq": seq,
        "changed_seq": changed_seq,
        "user": {"id": author_id, "username": username},
        "content": "" if deleted else content,
        "content_html": "" if deleted else current_html(
            pk, content, content_html, render_version,
            author_id=author_id, author_username=username,
        ),
        "reactions": [] if deleted else as_json(reactions),
        "attachments": [] if deleted else as_json(attachments),
        "created_at": as_datetime(created_at),
        "edited_at": as_datetime(edited_at),
        "deleted": deleted,
        "client_msg_id": as_uuid_text(client_msg_id),
    }


def read_history_page(project_id, *, before=None, after=None, limit=DEFAULT_LIMIT):
    """Return (encoded cursor-history JSON, upto) from one precompiled query.

    `upto` is the project's number when the page was read (every change up to
    it is in), or None for a page with no rows.
    """
    if after is not None:
        kind, params, cursor_field = "after", [project_id, after], "changed_seq"
    elif before is not None:
        kind, params, cursor_field = "before", [project_id, before], "seq"
    else:
        kind, params, cursor_field = "recent", [project_id], "seq"
    # A replica inside replica_read (build_history_body), else the primary
    # (warm_first_page after a commit).
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(_history_sql(kind), [*params, limit + 1])
        rows = cursor.fetchall()
    has_more = len(rows) > limit
    items = [_serialize_row(row) for row in rows[:limit]]
    next_cursor = items[-1][cursor_field] if has_more and items else None
    body = orjson.dumps({"items": items, "has_more": has_more, "next_cursor": next_cursor})
    return body, (rows[0][-1] if rows else None)


@replica_read
def build_history_body(project_id, *, before=None, after=None, limit=DEFAULT_LIMIT):
    """The encoded cursor-history JSON, from one precompiled query."""
    return read_history_page(project_id, before=before, after=after, limit=limit)[0]


def get_changes_after(project_id, *, after, limit=200, upto=None):
    """Return (changes oldest first by changed_seq, has_more) with changed_seq > after."""
    qs = _messages(project_id).filter(changed_seq__gt=after)
    if upto is not None:
        qs = qs.filter(changed_seq__lte=upto)
    rows = list(qs.order_by("changed_seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


@replica_read
def get_message_page(project_id, *, page, per_page):
    """Return (messages newest first, total) for a page-numbered listing."""
    total = Message.objects.filter(project_id=project_id).count()
    start = (page - 1) * per_page
    rows = list(_messages(project_id).order_by("-seq")[start : start + per_page])
    return rows, total


def get_user_mentions(user, *, before=None, limit=DEFAULT_LIMIT):
    """Return (mentions of the user newest first, has_more), before mention id `before`.

    One query: each mention comes with its message, the message's author and
    the project joined. Mentions in deleted messages, and in projects the user
    has left or that were deactivated, are skipped. Ordered by (created_at,
    id), which idx_mention_user_created serves; `before` is a mention id, and
    its time is read in the same query.
    """
    from projects.models import Membership

    mine = Membership.objects.filter(user_id=user.pk, project__is_active=True).values(
        "project_id"
    )
    qs = Mention.objects.filter(
        user_id=user.pk, project_id__in=mine, message__deleted_at__isnull=True
    )
    if before is not None:
        cursor = Mention.objects.filter(pk=before, user_id=user.pk).values("created_at")[:1]
        qs = qs.filter(
            Q(created_at__lt=Subquery(cursor))
            | Q(created_at=Subquery(cursor), pk__lt=before)
        )
    rows = list(
        qs.select_related("message", "message__author", "project")
        .only(
            "id", "created_at", "project_id", "project__id", "project__name",
            *(f"message__{field}" for field in MESSAGE_FIELDS),
            "message__author__id", "message__author__username",
        )
        .order_by("-created_at", "-id")[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


def get_message(message_id):
    from chatsite.pagination import MAX_ID

    if isinstance(message_id, int) and not 0 < message_id <= MAX_ID:
        return None  # no such message (SQLite cannot even compare the number)
    return _messages_by_id().filter(pk=message_id).first()


def _messages_by_id():
    return Message.objects.select_related("author")


# --- cached bodies: chat.history_cache keeps them, per project version ----------------


def get_history_body(user, project_id, *, before=None, after=None, limit=DEFAULT_LIMIT):
    """Check access, then return the encoded cursor-history JSON.

    The first page (history_cache.is_cached_history_form): the access entry,
    the project's version and the cached body come in one cache round trip; the
    body is built once per project version. Other forms: the access entry, then
    the database. Permission is checked on every request; only the body is shared.
    """
    def build():
        return build_history_body(project_id, before=before, after=after, limit=limit)

    cached = history_cache.is_cached_history_form(before, after, limit)
    slot = history_cache.history_slot(project_id, before, after, limit) if cached else None
    return _read_with_access(user, project_id, build, slot=slot, name="history")


def get_message_page_body(user, project_id, *, page, per_page):
    """Check access, then return the encoded page-numbered history JSON.

    Only the first page at the default per_page is cached
    (history_cache.is_cached_message_page), as the cursor history's first page is.
    """
    def build():
        rows, total = get_message_page(project_id, page=page, per_page=per_page)
        return orjson.dumps(page_numbered(serialize_messages(rows), total, page, per_page))

    cached = history_cache.is_cached_message_page(page, per_page)
    slot = history_cache.message_page_slot(project_id, page, per_page) if cached else None
    return _read_with_access(user, project_id, build, slot=slot, name="message_page")


def _read_with_access(user, project_id, build, *, slot, name):
    """Check the caller's cached access entry, then return build()'s body: from
    the cache slot `slot` (fetched with the access entry) or, without one, built."""
    from projects.access import access_key, access_project_cached

    if slot is None:
        access_project_cached(user, project_id)
        return build()
    akey = access_key(user.pk, project_id)
    return history_cache.get_cached_page(
        slot, project_id, build, name=name, extra_keys=[akey],
        check=lambda found: access_project_cached(user, project_id, cached=found[akey]),
    )


# --- all messages: the caller's newest messages across their projects ------------------


@functools.cache
def _all_messages_sql():
    """SQL of one page of a user's newest messages across their active projects.

    Newest first by (created_at, id); each row as _history_sql's, its last
    column the total (messages in the user's active projects: an uncorrelated
    subquery, evaluated once). The page is picked by id first and the rows are
    read after, so only the page's rows are joined to their authors. On
    PostgreSQL each project gives at most page x per_page candidates, read
    backwards on idx_message_project_created (a LATERAL join): a page costs
    an index range per project, never a sort of every message. SQLite (the
    embedded default) has no LATERAL and sorts the join.
    """
    from projects.models import Membership

    qn = connection.ops.quote_name
    message, user = qn(Message._meta.db_table), qn(get_user_model()._meta.db_table)
    project, membership = qn(Project._meta.db_table), qn(Membership._meta.db_table)
    if connection.vendor == "postgresql":
        candidates = (
            f"SELECT t.id, t.created_at FROM {membership} ms"
            f" INNER JOIN {project} p ON p.id = ms.project_id"
            " CROSS JOIN LATERAL (SELECT x.id, x.created_at"
            f"   FROM {message} x WHERE x.project_id = ms.project_id"
            "   ORDER BY x.created_at DESC, x.id DESC LIMIT %(depth)s) t"
            " WHERE ms.user_id = %(user)s AND p.is_active"
            " ORDER BY t.created_at DESC, t.id DESC"
        )
    else:
        candidates = (
            f"SELECT x.id, x.created_at FROM {message} x"
            f" INNER JOIN {membership} ms ON ms.project_id = x.project_id"
            f" INNER JOIN {project} p ON p.id = x.project_id"
            " WHERE ms.user_id = %(user)s AND p.is_active"
            " ORDER BY x.created_at DESC, x.id DESC"
        )
    return (
        "SELECT m.id, m.project_id, m.seq, m.changed_seq, m.author_id, u.username,"
        " m.content, m.content_html, m.render_version, m.reaction_summary,"
        " m.attachment_summary, m.created_at, m.edited_at, m.deleted_at, m.client_msg_id,"
        f" ({_user_message_count_sql()})"
        f" FROM ({candidates} LIMIT %(limit)s OFFSET %(offset)s) top"
        f" INNER JOIN {message} m ON m.id = top.id"
        f" INNER JOIN {user} u ON u.id = m.author_id"
        " ORDER BY top.created_at DESC, top.id DESC"
    )


def _user_message_count_sql():
    """SQL counting the messages (tombstones too) in a user's active projects."""
    from projects.models import Membership

    qn = connection.ops.quote_name
    message, project = qn(Message._meta.db_table), qn(Project._meta.db_table)
    membership = qn(Membership._meta.db_table)
    return (
        f"SELECT COUNT(*) FROM {message} c"
        f" INNER JOIN {membership} cm ON cm.project_id = c.project_id"
        f" INNER JOIN {project} cp ON cp.id = cm.project_id"
        " WHERE cm.user_id = %(user)s AND cp.is_active"
    )


@replica_read
def build_all_messages_body(user_id, *, page, per_page):
    """The encoded page-numbered JSON of a user's newest messages across their
    active projects: one query (a page past the end adds a COUNT for `total`)."""
    offset = (page - 1) * per_page
    params = {"user": user_id, "depth": offset + per_page, "limit": per_page,
              "offset": offset}
    # A replica when one is fresh, as the other history reads (chatsite.dbrouter).
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(_all_messages_sql(), params)
        rows = cursor.fetchall()
        if rows:
            total = rows[0][-1]
        elif page > 1:
            cursor.execute(_user_message_count_sql(), {"user": user_id})
            total = cursor.fetchone()[0]
        else:
            total = 0
    items = [_serialize_row(row) for row in rows]
    return orjson.dumps(page_numbered(items, total, page, per_page))


# Per process: user id -> the projects of the user's last all-messages entry,
# so that the next read fetches their versions in its first round trip.
_all_messages_listed = {}
_ALL_MESSAGES_LISTED_MAX = 50000


def get_user_project_ids(user_id, user_version):
    """The ids of a user's active projects, cached under the user's version.

    The same entry projects.selectors.ProjectListRead reads (key and value):
    every membership change bumps the user's version, so it never outlives one.
    """
    from chatsite.cache import get_or_build, make_key
    from projects.models import Membership

    return get_or_build(
        make_key("umem", user_id, user_version),
        lambda: list(
            Membership.objects.filter(user_id=user_id, project__is_active=True)
            .order_by("project_id").values_list("project_id", flat=True)
        ),
        name="memberships",
    )


def get_all_messages_body(user, *, page, per_page):
    """Return the encoded page-numbered JSON of the caller's newest messages across
    all their active projects (GET /api/messages without project_id).

    Cached like the project list (projects.selectors.ProjectListRead), for the
    first page at the default per_page only (history_cache.is_cached_message_page):
    the entry `(user version, {project id: version}, body)` carries the user's
    version -- bumped by every membership change and project deactivation, so
    a project the user lost leaves at once -- and the versions of the projects
    it was built from, read *before* the body was built and bumped after every
    send, edit, delete and reaction in them. One cache round trip fetches the
    user's version, the entry and the versions of the projects this process
    saw last for the user; a hit needs nothing more and no query. A miss
    builds in one query (build_all_messages_body), plus one for the
    membership ids after a membership change. While this process owes any of
    those versions a bump (chatsite.cache.bump_version), it builds from the
    database.
    """
    from chatsite.cache import (
        CACHE_LOOKUPS,
        get_versions,
        is_bump_owed,
        make_key,
        safe_get_many,
        safe_set,
        version_key,
    )

    def build():
        return build_all_messages_body(user.pk, page=page, per_page=per_page)

    if not settings.CACHE_HOT_READS or not history_cache.is_cached_message_page(page, per_page):
        return build()
    known = _all_messages_listed.get(user.pk, ())
    key = make_key("allmsg", user.pk, page, per_page)
    keys = [version_key("user", user.pk), key, *(version_key("project", pid) for pid in known)]
    found = safe_get_many(keys)
    user_version, entry = found.get(keys[0]), found.get(key)
    known_versions = [found.get(k) for k in keys[2:]]
    if user_version is None:
        user_version = get_versions("user", [user.pk])[user.pk]
    if not (isinstance(entry, tuple) and len(entry) == 3):
        entry = None  # missing, or of a shape this code does not know: rebuilt
    if entry is not None and entry[0] == user_version:
        # The entry's projects are the user's under this version.
        ids = tuple(entry[1])
        if ids == known and None not in known_versions:
            versions = dict(zip(ids, known_versions))
        else:
            versions = get_versions("project", list(ids))
    else:
        ids = tuple(get_user_project_ids(user.pk, user_version))
        versions = get_versions("project", list(ids)) if ids else {}
    if ids != known:
        if len(_all_messages_listed) >= _ALL_MESSAGES_LISTED_MAX:
            _all_messages_listed.clear()
        _all_messages_listed[user.pk] = ids
    if is_bump_owed("user", user.pk) or any(is_bump_owed("project", pid) for pid in ids):
        return build()
    if entry is not None and entry[0] == user_version and entry[1] == versions:
        CACHE_LOOKUPS.labels("all_messages", "hit").inc()
        return entry[2]
    CACHE_LOOKUPS.labels("all_messages", "miss").inc()
    body = build()
    safe_set(key, (user_version, versions, body))
    return body
