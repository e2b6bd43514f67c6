"""Reads about projects and memberships."""

import functools

import orjson
from django.conf import settings
from django.db import connection, connections
from django.db.models import Q

from chat.models import Mention, Message
from chatsite.dbrouter import read_alias, replica_read
from chatsite.pagination import page_numbered
from chatsite.rawsql import as_datetime
from projects.models import Membership, Project


@functools.cache
def _project_page_sql():
    """SQL of one page of a user's projects with unread and mention counts.

    The project list is rebuilt after every change in any of the user's
    projects, so it skips the ORM's per-call query construction (about ten
    times the query's own cost here): one fixed statement, built once. The
    unread count is a correlated subquery served by the (project, seq) unique
    index, the mention count one served by idx_mention_user_project_seq, and
    the total a window count -- one query, not one per project. A direct
    message's other members' names come as a JSON array from a correlated
    aggregate (served by the membership's project index, evaluated for DMs
    only); dm_names_to_title sorts and joins them.
    """
    from django.contrib.auth import get_user_model

    qn = connection.ops.quote_name
    membership, project = qn(Membership._meta.db_table), qn(Project._meta.db_table)
    message, mention = qn(Message._meta.db_table), qn(Mention._meta.db_table)
    user = qn(get_user_model()._meta.db_table)
    # json_agg / json_group_array: any character in a name survives the trip.
    json_array = "json_agg" if connection.vendor == "postgresql" else "json_group_array"
    return (
        "SELECT p.id, p.name, p.kind, p.description, p.owner_id, p.is_private, p.is_active,"
        " p.created_at, p.seq, ms.role, ms.last_read_seq,"
        f" CASE WHEN p.kind = 'dm' THEN (SELECT {json_array}("
        "   COALESCE(NULLIF(u.display_name, ''), u.username))"
        f"   FROM {membership} o INNER JOIN {user} u ON u.id = o.user_id"
        "   WHERE o.project_id = ms.project_id AND o.user_id <> %s) END,"
        f" (SELECT COUNT(*) FROM {message} x WHERE x.project_id = ms.project_id"
        "   AND x.seq > ms.last_read_seq AND x.deleted_at IS NULL AND x.author_id <> %s),"
        f" (SELECT COUNT(*) FROM {mention} n INNER JOIN {message} y ON y.id = n.message_id"
        "   WHERE n.user_id = %s AND n.project_id = ms.project_id"
        "   AND n.seq > ms.last_read_seq AND y.deleted_at IS NULL),"
        " COUNT(*) OVER ()"
        f" FROM {membership} ms INNER JOIN {project} p ON p.id = ms.project_id"
        " WHERE ms.user_id = %s AND p.is_active"
        " ORDER BY p.name, ms.project_id LIMIT %s OFFSET %s"
    )


@replica_read
def get_user_project_page(user, *, offset=0, limit=50):
    """Return (projects, total): the user's active projects, by name, in one query.

    Each project is its API JSON (serialize_project's fields) with the
    membership's role and last_read_seq, `unread_count` (messages after the
    last read one, not deleted, not the user's own) and `mention_count`
    (unread messages mentioning the user). A direct message's `name` is its
    other members' names (projects.dms); `kind` tells the two apart.
    """
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(_project_page_sql(),
                       [user.pk, user.pk, user.pk, user.pk, limit, offset])
        rows = cursor.fetchall()
    if rows:
        total = rows[0][-1]
    else:
        total = count_user_projects(user) if offset else 0
    projects = [
        {
            "id": pk,
            "name": dm_names_to_title(dm_names, name) if kind == "dm" else name,
            "kind": kind,
            "description": description,
            "owner_id": owner_id,
            "is_private": bool(is_private),
            "is_active": bool(is_active),
            "created_at": as_datetime(created_at),
            "seq": seq,
            "role": role,
            "last_read_seq": last_read_seq,
            "unread_count": unread,
            "mention_count": mentions,
        }
        for (pk, name, kind, description, owner_id, is_private, is_active, created_at, seq,
             role, last_read_seq, dm_names, unread, mentions, _total) in rows
    ]
    return projects, total


def dm_names_to_title(names, stored_name):
    """A DM's title from its other members' names as the list query returns them
    (a JSON array: decoded by psycopg, text from SQLite), else its stored name."""
    from projects.dms import join_names

    if isinstance(names, (str, bytes)):
        names = orjson.loads(names)
    return join_names(names) if names else stored_name


def count_user_projects(user):
    return Membership.objects.filter(user_id=user.pk, project__is_active=True).count()


def count_members(project):
    return Membership.objects.filter(project_id=project.pk).count()


def get_public_projects_to_join(user, *, limit=50):
    """Active public projects the user is not in, newest first."""
    from projects.models import Project

    return list(
        Project.objects.filter(is_active=True, is_private=False)
        .exclude(Q(memberships__user_id=user.pk))
        .order_by("-created_at")[:limit]
    )


# --- cached body of the project list ---------------------------------------------------

# Per process: user id -> ids of the user's projects as last listed, so that
# the next read fetches those projects' versions in its first round trip.
_listed = {}
_LISTED_MAX = 50000
# The list forms worth caching: the first pages at the sizes clients ask for.
# Any other page or size is read from the database and stores nothing, so a
# caller looping over pages cannot fill the cache with entries nobody reads.
CACHED_LIST_PAGES = 5


def is_cached_list_form(page, per_page):
    from chatsite.pagination import DEFAULT_PER_PAGE, MAX_PER_PAGE

    return page <= CACHED_LIST_PAGES and per_page in (DEFAULT_PER_PAGE, MAX_PER_PAGE)


class ProjectListRead:
    """One read of a user's project list: the keys to fetch, then the body.

    The list is assembled from the user's skeleton and the page's project cards
    (projects.list_cache: the memberships under the user's version, each
    project's fields and message tail under the project's version), so a
    message retires one card per process instead of every member's list.
    `keys` are fetched in one cache round trip (by get_user_projects_body, or
    by the hot path together with the session): the user's version, the
    skeleton, and the versions and reset marks (list_cache.mark_reset) of the
    projects this process last listed for the user. When the skeleton is current, the page is those projects and this
    process holds their cards at those versions, the body is computed with
    nothing more (`current`); otherwise `body` reads what is missing -- the
    skeleton (one query), the versions (one round trip), the cards changed
    since (two statements for all of them). A member further behind than a
    tail, or a skeleton still disagreeing with a card after being read again,
    gets the list query (get_user_project_page). The remembered ids are only a
    prefetch: the projects listed are always the skeleton's.
    """

    def __init__(self, user_id, page, per_page):
        from chatsite.cache import version_key
        from projects.list_cache import reset_key, skeleton_key

        self.user_id, self.page, self.per_page = user_id, page, per_page
        self.known_ids = _listed.get(user_id, ())
        self.key = skeleton_key(user_id)
        self.keys = [version_key("user", user_id), self.key,
                     *(version_key("project", pid) for pid in self.known_ids),
                     *(reset_key(pid) for pid in self.known_ids)]

    def current(self, values):
        """The body when `values` and this process's cards alone make it, else None.

        The common hit: no further cache call and no database, so the hot path
        answers without Django's request signals (which hand database
        connections back).
        """
        from chatsite.cache import CACHE_LOOKUPS
        from projects.list_cache import assemble, cards_at, page_of

        user_version, entry = values[0], values[1]
        if user_version is None or entry is None or entry[0] != user_version:
            return None
        versions = values[2:2 + len(self.known_ids)]
        ids = tuple(row[0] for row in page_of(entry[1], self.page, self.per_page))
        if ids != self.known_ids or None in versions:
            return None
        cards = cards_at(dict(zip(ids, versions)))
        if len(cards) != len(ids):
            return None
        found = assemble(self.user_id, entry[1], self.page, self.per_page, cards)
        if not isinstance(found, tuple):
            return None
        CACHE_LOOKUPS.labels("project_list", "hit").inc()
        return self.encode(*found)

    def body(self, user, values):
        """The encoded list, from `values` (the cached values of `keys`, None
        where missing) and what they lack."""
        return self.encode(*self.items(user, values))

    def items(self, user, values):
        """(items, total) of the page, as get_user_project_page returns them."""
        from chatsite.cache import CACHE_LOOKUPS, get_versions, safe_set
        from projects.list_cache import STALE, assemble, page_of, read_skeleton, refresh_cards

        user_version, entry = values[0], values[1]
        if user_version is None:
            user_version = get_versions("user", [self.user_id])[self.user_id]
        skeleton = entry[1] if entry is not None and entry[0] == user_version else None
        known = len(self.known_ids)
        known_versions, known_resets = values[2:2 + known], values[2 + known:]
        for _attempt in range(2):
            if skeleton is None:
                skeleton = read_skeleton(self.user_id)
                safe_set(self.key, (user_version, skeleton))
                fresh = True
            else:
                fresh = False
            ids = tuple(row[0] for row in page_of(skeleton, self.page, self.per_page))
            if ids == self.known_ids and None not in known_versions:
                versions = dict(zip(ids, known_versions))
                resets = dict(zip(ids, known_resets))
            else:
                versions = get_versions("project", list(ids)) if ids else {}
                resets = None  # refresh_cards reads the marks it needs
            self.remember(ids)
            found = assemble(self.user_id, skeleton, self.page, self.per_page,
                             refresh_cards(versions, resets))
            if isinstance(found, tuple):
                CACHE_LOOKUPS.labels("project_list", "hit").inc()
                return found
            if found != STALE or fresh:
                break
            skeleton = None  # read before a rename or a deactivation: read it again
        CACHE_LOOKUPS.labels("project_list", "miss").inc()
        return get_user_project_page(user, offset=(self.page - 1) * self.per_page,
                                     limit=self.per_page)

    def encode(self, items, total):
        return orjson.dumps(page_numbered(items, total, self.page, self.per_page))

    def remember(self, ids):
        if ids != self.known_ids:
            if len(_listed) >= _LISTED_MAX:
                _listed.clear()
            _listed[self.user_id] = ids


def build_project_list_body(user, page, per_page):
    """The project-list JSON of a user, read from the database."""
    import orjson

    items, total = get_user_project_page(user, offset=(page - 1) * per_page, limit=per_page)
    return orjson.dumps(page_numbered(items, total, page, per_page))


def get_user_projects_body(user, *, page, per_page):
    """Return the encoded project-list JSON of a user (cached: ProjectListRead)."""
    if not settings.CACHE_HOT_READS or not is_cached_list_form(page, per_page):
        return build_project_list_body(user, page, per_page)
    read = ProjectListRead(user.pk, page, per_page)
    return read.body(user, _values(read))


def get_user_project_items(user, *, page=1, per_page):
    """(items, total): a page of a user's project list as get_user_project_page
    returns it, assembled as the API's list is (the home page, the sidebar of
    the pages and of /ws/me/)."""
    if not settings.CACHE_HOT_READS or not is_cached_list_form(page, per_page):
        return get_user_project_page(user, offset=(page - 1) * per_page, limit=per_page)
    read = ProjectListRead(user.pk, page, per_page)
    return read.items(user, _values(read))


def _values(read):
    from chatsite.cache import safe_get_many

    found = safe_get_many(read.keys)
    return [found.get(key) for key in read.keys]


# --- members ---------------------------------------------------------------------------


def serialize_member(membership):
    """A member's API JSON (docs/API.md, "Members"); the user must be joined in."""
    user = membership.user
    return {
        "user": {"id": user.pk, "username": user.username,
                 "display_name": user.display_name},
        "role": membership.role,
        "joined_at": membership.joined_at,
    }


def get_member_page(project_id, *, offset=0, limit=50):
    """Return (members, total): a page of a project's members, owners first, in one query.

    Owners, then admins, then members, each by username. The users are joined
    in and the total is a window count over the same rows, so a page costs one
    query whatever its size (a page past the last adds a COUNT).
    """
    from django.db.models import Case, Count, IntegerField, Value, When, Window

    role_rank = Case(
        When(role=Membership.Role.OWNER, then=Value(0)),
        When(role=Membership.Role.ADMIN, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    rows = list(
        Membership.objects.filter(project_id=project_id)
        .select_related("user")
        .only("id", "role", "joined_at", "user_id", "user__id", "user__username",
              "user__display_name")
        .annotate(role_rank=role_rank, total=Window(Count("id")))
        .order_by("role_rank", "user__username", "user_id")[offset:offset + limit]
    )
    if rows:
        total = rows[0].total
    else:
        total = count_members_by_id(project_id) if offset else 0
    return [serialize_member(m) for m in rows], total


def count_members_by_id(project_id):
    return Membership.objects.filter(project_id=project_id).count()
