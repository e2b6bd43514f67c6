"""The cached history pages: their entry, their slots, how they are read, and how
a change is applied to the first page after its commit.

Two pages are cached, each in one slot per project: the cursor history's first
page (history_slot) and the page-numbered history's first page
(message_page_slot). A slot holds a CachedPage tagged with the project's cache
version (chatsite.cache.bump_version retires it: every send, edit, delete and
reaction bumps it, so the page-numbered body's `total` is never served stale);
chatsite.hotpath reads both slots too. Other forms of either read are not cached (is_cached_history_form).

Entries are pickled by the cache, so CachedPage stays a module-level class. A
deploy meets entries of the shapes before it (plain tuples: `(version, body)`,
and `(version, body, upto)` from warm_first_page) until CACHE_TTL; every reader
here and in the hot path takes those as stale, and they are rebuilt.
"""

import logging
from typing import NamedTuple

import orjson
from django.conf import settings
from prometheus_client import Counter

from chatsite.cache import (
    CACHE_LOOKUPS,
    get_or_build,
    get_version,
    is_bump_owed,
    make_key,
    pay_owed_bumps,
    safe_get,
    safe_get_many,
    safe_set,
    version_key,
)
from chatsite.pagination import DEFAULT_LIMIT, DEFAULT_PER_PAGE

logger = logging.getLogger(__name__)

CACHE_WARMS = Counter(
    "chat_history_warms_total",
    "First history pages rebuilt after a change, by how (applied to the page before, or read)",
    ["how"],
)


class CachedPage(NamedTuple):
    """A cached page's JSON, valid while the project's version is `version`.

    `upto`: the page holds every change up to this project number (None when
    unknown, as for a page built by a read); only then can warm_first_page
    apply the next change to it.
    """

    version: int
    body: bytes
    upto: int | None = None


def current_page(entry, version):
    """Return `entry` when it is a CachedPage of `version`, else None (missing,
    outdated, or of a shape from before a deploy: stale)."""
    if isinstance(entry, CachedPage) and entry.version == version:
        return entry
    return None


def history_slot(project_id, before, after, limit):
    """The cache slot of a cursor-history read (chatsite.hotpath reads it too)."""
    return make_key("hist", project_id, before, after, limit)


def message_page_slot(project_id, page, per_page):
    """The cache slot of a page-numbered history read (chatsite.hotpath reads it too)."""
    return make_key("page", project_id, page, per_page)


def is_cached_history_form(before, after, limit):
    """Whether this cursor-history read is one worth caching: the first page at
    the limit the clients ask for (chat.js, the load test and the hot path's
    default all read the default limit, or no limit).

    Every cached form is a key of up to a couple of megabytes for CACHE_TTL,
    so a member varying before=, after= or limit could fill the cache: those
    reads go to the database (one indexed query) uncached.
    """
    return before is None and after is None and limit == DEFAULT_LIMIT


def is_cached_message_page(page, per_page):
    """Whether this page-numbered read is cached: only the first page at the
    default per_page (other pages and sizes are not worth a key each)."""
    return page == 1 and per_page == DEFAULT_PER_PAGE


def get_cached_page(slot, project_id, build, *, name, extra_keys=(), check=None):
    """Return a project's cached page body, building it when the slot is not current.

    One round trip fetches the project's version, the slot and any extra keys
    the caller needs; ``check(extras)`` runs before anything is served or built
    (an access check that raises). A body is built once per burst and version
    (chatsite.cache.get_or_build). While this process owes the project a bump
    (chatsite.cache.bump_version), the page is built from the database.
    """
    pay_owed_bumps()
    vkey = version_key("project", project_id)
    found = safe_get_many([vkey, slot, *extra_keys])
    if check is not None:
        check({k: found.get(k) for k in extra_keys})
    if not settings.CACHE_HOT_READS or is_bump_owed("project", project_id):
        return build()
    version = found.get(vkey)
    if version is None:
        version = get_version("project", project_id)
    entry = current_page(found.get(slot), version)
    if entry is not None:
        CACHE_LOOKUPS.labels(name, "hit").inc()
        return entry.body

    entry = get_or_build(f"{slot}@{version}", lambda: CachedPage(version, build()), name=name)
    if current_page(entry, version) is None:  # a burst key from before a deploy
        entry = CachedPage(version, build())
    safe_set(slot, entry)
    return entry.body


def warm_first_page(project_id, version, item=None):
    """Build a project's first history page for `version`, which this caller just
    made current (after its commit). Never raises: a reader rebuilds instead.

    The page holds every change up to number `upto`. `item` is the change's
    message JSON. When the slot holds the page of the version before and this
    change is the number after `upto`, the change is applied to that page -- a
    new message goes on top, an edit or a deletion replaces its item -- instead
    of reading the page again; otherwise (a gap: some change's after-commit
    work never ran, or an outdated slot) the page is read. Either way the page
    holds every change `version` stands for. Two committers that warm at once
    may store in either order; an older tag left in the slot is only stale, and
    the next reader rebuilds it.
    """
    # chat.selectors imports this module: its reads are imported when used.
    from chat.selectors import read_history_page

    if not settings.CACHE_HOT_READS:
        return
    slot = history_slot(project_id, None, None, DEFAULT_LIMIT)
    before = current_page(safe_get(slot), version - 1) if item is not None else None
    if before is not None and before.upto is not None and item["changed_seq"] <= before.upto + 1:
        body = _apply_change(before.body, item, DEFAULT_LIMIT)
        upto = max(before.upto, item["changed_seq"])
        CACHE_WARMS.labels("applied").inc()
    else:
        try:
            body, upto = read_history_page(project_id, limit=DEFAULT_LIMIT)
        except Exception:  # noqa: BLE001 - the send has committed; readers rebuild
            logger.warning("event=warm_failed project=%s", project_id, exc_info=True)
            return
        CACHE_WARMS.labels("read").inc()
    safe_set(slot, CachedPage(version, body, upto))


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
