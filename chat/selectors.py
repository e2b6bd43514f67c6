"""Reads of chat history. History is ordered by seq, never by time or offset."""

import functools
import logging

import orjson
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q, Subquery
from prometheus_client import Counter

from chat.models import Mention, Message
from chat.serializers import serialize_messages
from chatsite.cache import get_slot, make_key
from chatsite.pagination import page_numbered
from chatsite.rawsql import as_datetime, as_uuid_text
from projects.models import Project

logger = logging.getLogger(__name__)

CACHE_WARMS = Counter(
    "chat_history_warms_total",
    "First history pages rebuilt after a change, by how (applied to the page before, or read)",
    ["how"],
)


def _messages(project_id):
    return Message.objects.filter(project_id=project_id).select_related("author").only(
        "id", "project_id", "seq", "changed_seq", "content", "created_at", "edited_at",
        "deleted_at", "client_msg_id", "author_id", "author__id", "author__username",
    )


def get_recent_messages(project_id, *, before=None, limit=50):
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
        " m.content, m.created_at, m.edited_at, m.deleted_at, m.client_msg_id, p.seq"
        f" FROM {message} m INNER JOIN {user} u ON u.id = m.author_id"
        f" INNER JOIN {project} p ON p.id = m.project_id"
        f" WHERE m.project_id = %s{where} ORDER BY {order} LIMIT %s"
    )


def _serialize_row(row):
    """serialize_message's JSON of one _history_sql row."""
    (pk, project_id, seq, changed_seq, author_id, username, content, created_at,
     edited_at, deleted_at, client_msg_id, _upto) = row
    deleted = deleted_at is not None
    return {
        "id": pk,
        "project_id": project_id,
        "seq": seq,
        "changed_seq": changed_seq,
        "user": {"id": author_id, "username": username},
        "content": "" if deleted else content,
        "created_at": as_datetime(created_at),
        "edited_at": as_datetime(edited_at),
        "deleted": deleted,
        "client_msg_id": as_uuid_text(client_msg_id),
    }


def read_history_page(project_id, *, before=None, after=None, limit=50):
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
    with connection.cursor() as cursor:
        cursor.execute(_history_sql(kind), [*params, limit + 1])
        rows = cursor.fetchall()
    has_more = len(rows) > limit
    items = [_serialize_row(row) for row in rows[:limit]]
    next_cursor = items[-1][cursor_field] if has_more and items else None
    body = orjson.dumps({"items": items, "has_more": has_more, "next_cursor": next_cursor})
    return body, (rows[0][-1] if rows else None)


def build_history_body(project_id, *, before=None, after=None, limit=50):
    """The encoded cursor-history JSON, from one precompiled query."""
    return read_history_page(project_id, before=before, after=after, limit=limit)[0]


def get_changes_after(project_id, *, after, limit=200, upto=None):
    """Return (changes oldest first by changed_seq, has_more) with changed_seq > after."""
    qs = _messages(project_id).filter(changed_seq__gt=after)
    if upto is not None:
        qs = qs.filter(changed_seq__lte=upto)
    rows = list(qs.order_by("changed_seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


def get_message_page(project_id, *, page, per_page):
    """Return (messages newest first, total) for a page-numbered listing."""
    total = Message.objects.filter(project_id=project_id).count()
    start = (page - 1) * per_page
    rows = list(_messages(project_id).order_by("-seq")[start : start + per_page])
    return rows, total


def get_user_mentions(user, *, before=None, limit=50):
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
            "message__id", "message__project_id", "message__seq", "message__changed_seq",
            "message__content", "message__created_at", "message__edited_at",
            "message__deleted_at", "message__client_msg_id", "message__author_id",
            "message__author__id", "message__author__username",
        )
        .order_by("-created_at", "-id")[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


def get_message(message_id):
    from projects.access import MAX_ID

    if isinstance(message_id, int) and not 0 < message_id <= MAX_ID:
        return None  # no such message (SQLite cannot even compare the number)
    return _messages_by_id().filter(pk=message_id).first()


def _messages_by_id():
    return Message.objects.select_related("author")


# --- cached bodies: keyed by the project's version, bumped after every change --------


def history_slot(project_id, before, after, limit):
    """The cache slot of a cursor-history read (chatsite.hotpath reads it too)."""
    return make_key("hist", project_id, before, after, limit)


FIRST_PAGE_LIMIT = 50  # the API's default limit, the page client's and locust's


def warm_first_page(project_id, version, item=None):
    """Build a project's first history page for `version`, which this caller just
    made current (after its commit). Never raises: a reader rebuilds instead.

    The slot holds (version, page, upto): the page holds every change up to
    number `upto`. `item` is the change's message JSON. When the slot holds the
    page of the version before and this change is the number after `upto`,
    the change is applied to that page -- a new message goes on top, an edit
    or a deletion replaces its item -- instead of reading the page again;
    otherwise (a gap: some change's after-commit work never ran, or an
    outdated slot) the page is read. Either way the page holds every change
    `version` stands for. Two committers that warm at once may store in
    either order; an older tag left in the slot is only stale, and the next
    reader rebuilds it.
    """
    from chatsite.cache import safe_get, safe_set

    if not settings.CACHE_HOT_READS:
        return
    slot = history_slot(project_id, None, None, FIRST_PAGE_LIMIT)
    entry = safe_get(slot) if item is not None else None
    if (entry is not None and len(entry) == 3 and entry[0] == version - 1
            and entry[2] is not None and item["changed_seq"] <= entry[2] + 1):
        body = _apply_change(entry[1], item, FIRST_PAGE_LIMIT)
        upto = max(entry[2], item["changed_seq"])
        CACHE_WARMS.labels("applied").inc()
    else:
        try:
            body, upto = read_history_page(project_id, limit=FIRST_PAGE_LIMIT)
        except Exception:  # noqa: BLE001 - the send has committed; readers rebuild
            logger.warning("event=warm_failed project=%s", project_id, exc_info=True)
            return
        CACHE_WARMS.labels("read").inc()
    safe_set(slot, (version, body, upto))


def _apply_change(body, item, limit):
    """A first page's JSON with one more change applied (see warm_first_page)."""
    page = orjson.loads(body)
    items = page["items"]
    if item["seq"] == item["changed_seq"]:  # a new message
        if items and items[0]["seq"] >= item["seq"]:
            return body  # the page was read after this message's commit
        items.insert(0, item)
        if len(items) > limit:
            del items[limit:]
            page["has_more"] = True
        page["next_cursor"] = items[-1]["seq"] if page["has_more"] else None
    else:  # an edit or a deletion: its item, if the page shows it, is replaced
        for i, shown in enumerate(items):
            if shown["id"] == item["id"]:
                if shown["changed_seq"] >= item["changed_seq"]:
                    return body
                items[i] = item
                break
        else:
            return body  # older than the first page
    return orjson.dumps(page)


def is_cached_history_form(before, after, limit):
    """Whether this cursor-history read is one worth caching: the first page at
    the limit the clients ask for (chat.js, the load test and the hot path's
    default all read limit=50, or no limit).

    Every cached form is a key of up to a couple of megabytes for CACHE_TTL,
    so a member varying before=, after= or limit could fill the cache: those
    reads go to the database (one indexed query) uncached.
    """
    return before is None and after is None and limit == FIRST_PAGE_LIMIT


def get_history_body(user, project_id, *, before=None, after=None, limit=50):
    """Check access, then return the encoded cursor-history JSON.

    The first page (is_cached_history_form): the access entry, the project's
    version and the cached body come in one cache round trip; the body is built
    once per project version. Other forms: the access entry, then the
    database. Permission is checked on every request; only the body is shared.
    """
    from projects.access import access_key, access_project_cached

    def build():
        return build_history_body(project_id, before=before, after=after, limit=limit)

    if not is_cached_history_form(before, after, limit):
        access_project_cached(user, project_id)
        return build()
    akey = access_key(user.pk, project_id)
    return get_slot(
        history_slot(project_id, before, after, limit), "project", project_id, build,
        name="history", extra_keys=[akey],
        check=lambda found: access_project_cached(user, project_id, cached=found[akey]),
    )


CACHED_PAGE, CACHED_PER_PAGE = 1, 50  # projects.api.page_params' defaults


def get_message_page_body(user, project_id, *, page, per_page):
    """Check access, then return the encoded page-numbered history JSON.

    Only the first page at the default per_page is cached (as the cursor
    history's first page is: other pages and sizes are not worth a key each).
    """
    from projects.access import access_key, access_project_cached

    def build():
        rows, total = get_message_page(project_id, page=page, per_page=per_page)
        return orjson.dumps(page_numbered(serialize_messages(rows), total, page, per_page))

    if (page, per_page) != (CACHED_PAGE, CACHED_PER_PAGE):
        access_project_cached(user, project_id)
        return build()
    akey = access_key(user.pk, project_id)
    return get_slot(
        make_key("page", project_id, page, per_page), "project", project_id, build,
        name="message_page", extra_keys=[akey],
        check=lambda found: access_project_cached(user, project_id, cached=found[akey]),
    )
