"""Reads on PostgreSQL streaming replicas, never older than any finished write.

Installed only with DATABASE_REPLICA_URLS (settings: aliases replica1..N,
DATABASE_ROUTERS); without it nothing here runs and every read is the
primary's, as before (docs/SCALING.md, "PostgreSQL replicas and PgBouncer").

Which reads. A read goes to a replica only inside `replica_read` (a decorator
on the selectors whose reads tolerate a replica: history pages, search, the
project list of the API, the hot path, the home page and the sidebar).
Everything else -- writes, transactions, the access checks before a write,
the hub's gap fill and the socket replay (chat.selectors.get_changes_after),
the project page's rows (read with the number the socket replays from), the
first page rebuilt after a commit -- reads the primary, because the router
answers the primary outside that scope. Raw statements of those selectors ask
`read_alias()` for their connection.

Read-your-writes, for everyone: an LSN fence. After every transaction that
wrote on the primary (any process, HTTP or socket), the writer reads
`pg_current_wal_lsn()` and raises the **watermark**, one cache key holding
the highest such LSN (an atomic max in Redis), before any of the commit's
after-commit work runs (cache version bumps, bus publishes). The write
position is past the commit record, which a synchronous commit (PostgreSQL's
default, kept by the app) has written before COMMIT returns. (The insert
position is past it too, but after a page header when the WAL ends on a page
boundary, where a replica's replayed position stops until the next record.) A replica serves a read only when it has replayed up to
the watermark read as the read begins; otherwise the read goes to the
primary. So a read never misses a write whose request had finished -- the
writer's own next read, another user's, another device's -- and a body built
on a replica for the shared cache (history page, project list, keyed by
version) holds every change its version stands for: the version was bumped
after the watermark rose. A per-user pin would give the writer its own writes
but let another reader store a replica's older body under the new version.

Health, cached per process: the replica's replayed LSN is remembered (it only
grows), so while it is past the watermark a read costs one cache GET and no
extra statement; when it is not, one statement on the replica reads it again.
A replica that has stayed short of a watermark reads needed for longer than
REPLICA_MAX_LAG_MS is skipped for LAG_RECHECK_SECONDS; one that fails to
connect is skipped for REPLICA_RETRY_SECONDS, then probed with one connection
of its own before it serves again; a read that fails on a replica's
connection runs again on the primary -- never a 5xx. Without the watermark
(the cache down) reads go to the primary.
"""

import contextvars
import functools
import itertools
import logging
import threading
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import Error as DatabaseError
from prometheus_client import Counter

logger = logging.getLogger(__name__)

REPLICA_READS = Counter(
    "chat_replica_reads_total",
    "Reads that may use a replica, by the alias that served them and why",
    ["alias", "reason"],
)
WATERMARK_ERRORS = Counter(
    "chat_replica_watermark_errors_total",
    "Failures to read or raise the replica watermark (reads then use the primary)",
    ["op"],
)

WATERMARK_KEY = "dbrouter:lsn"
# A replica found lagging past REPLICA_MAX_LAG_MS is not asked again for this long.
LAG_RECHECK_SECONDS = 1.0
_LOG_EVERY_SECONDS = 10.0
# Statements that change something (or may: a WITH may hold an INSERT).
_WRITE_PREFIXES = ("insert", "update", "delete", "with", "merge", "create", "alter",
                   "drop", "truncate", "copy", "grant", "revoke", "comment")
# Lua numbers are doubles: exact up to 2**53 bytes of WAL (8 PiB), plenty.
_RAISE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local lsn = tonumber(ARGV[1])
if lsn > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return tostring(current)
"""
_REPLAY_LSN_SQL = "SELECT pg_last_wal_replay_lsn() - '0/0'"

_read_alias = contextvars.ContextVar("chat_read_alias", default=None)


_aliases = {"of": None, "aliases": ()}


def replica_aliases():
    """The replicas' database aliases (replica1..N), empty without replicas
    (worked out once per DATABASES: every wrapped read asks)."""
    databases = settings.DATABASES
    if _aliases["of"] is not databases:
        _aliases["aliases"] = tuple(a for a in databases if a.startswith("replica"))
        _aliases["of"] = databases
    return _aliases["aliases"]


def usable_replica_aliases():
    """The replica aliases that are not the primary itself: a test run makes
    each one a mirror of the test database (settings: TEST MIRROR), and a
    replica URL equal to DATABASE_URL is no replica either."""
    primary = connections[DEFAULT_DB_ALIAS].settings_dict
    where = (primary["HOST"], primary["PORT"], primary["NAME"])
    usable = []
    for alias in replica_aliases():
        replica = connections[alias].settings_dict
        if (replica["HOST"], replica["PORT"], replica["NAME"]) != where:
            usable.append(alias)
    return tuple(usable)


def read_alias():
    """The alias a lag-tolerant selector's raw statements use right now: the
    replica chosen by the enclosing replica_read, else the primary."""
    return _read_alias.get() or DEFAULT_DB_ALIAS


class ReplicaRouter:
    """Django's router: reads inside replica_read go to its replica, all else
    to the primary; migrations only on the primary."""

    def db_for_read(self, model, **hints):
        return _read_alias.get() or DEFAULT_DB_ALIAS

    def db_for_write(self, model, **hints):
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints):
        return True  # the same rows on every alias

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == DEFAULT_DB_ALIAS


# --- the decorator ---------------------------------------------------------------------


def replica_read(func):
    """Run a read-only selector on a replica when one is fresh, else on the primary.

    The selector must only read, and return its rows materialized (a list, a
    body): a read that fails on the replica's connection runs again on the
    primary. Nested calls keep the outer choice.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if _read_alias.get() is not None or not replica_aliases():
            return func(*args, **kwargs)
        alias, reason = choose_alias()
        token = _read_alias.set(alias)
        try:
            result = func(*args, **kwargs)
        except DatabaseError as exc:
            if alias == DEFAULT_DB_ALIAS:
                raise
            _read_alias.reset(token)
            token = _read_alias.set(DEFAULT_DB_ALIAS)
            _read_failed(alias, exc)
            REPLICA_READS.labels(DEFAULT_DB_ALIAS, "failed").inc()
            return func(*args, **kwargs)
        finally:
            _read_alias.reset(token)
        REPLICA_READS.labels(alias, reason).inc()
        return result

    return wrapper


# --- choosing a replica ------------------------------------------------------------------


class ReplicaState:
    """What this process knows of one replica: its replayed LSN, since when it
    has been behind a watermark a read needed, and until when it is skipped
    (and why)."""

    def __init__(self):
        self.replay_lsn = -1
        self.behind_lsn = None
        self.behind_since = 0.0
        self.skip_until = 0.0
        self.skip_reason = ""

    def skip(self, seconds, reason):
        self.skip_until = time.monotonic() + seconds
        self.skip_reason = reason

    def refresh(self, alias):
        """Read the replica's replayed LSN (one statement)."""
        with connections[alias].cursor() as cursor:
            cursor.execute(_REPLAY_LSN_SQL)
            (replay_lsn,) = cursor.fetchone()
        if replay_lsn is None:
            raise NotAReplica(alias)
        self.replay_lsn = max(self.replay_lsn, int(replay_lsn))

    def lag_ms(self, watermark, now):
        """How long the replica has been short of a watermark: since this process
        first found it behind `behind_lsn`, which it has not replayed yet.

        Measured against the watermarks reads needed rather than with
        now() - pg_last_xact_replay_timestamp(), which after an idle spell
        counts the idle time too (the last replayed commit is old) and would
        call a replica a second behind that is a millisecond behind.
        """
        if self.behind_lsn is None or self.replay_lsn >= self.behind_lsn:
            self.behind_lsn, self.behind_since = watermark, now
        return (now - self.behind_since) * 1000


class NotAReplica(Exception):
    """The server behind a replica alias is not in recovery (promoted, or a primary)."""


_states = {}
_states_lock = threading.Lock()
_turn = itertools.count()


def _state(alias):
    state = _states.get(alias)
    if state is None:
        with _states_lock:
            state = _states.setdefault(alias, ReplicaState())
    return state


def choose_alias():
    """(alias, reason): a replica that has replayed the watermark, else the
    primary with the reason none could serve."""
    aliases = usable_replica_aliases()
    if not aliases:
        return DEFAULT_DB_ALIAS, "no_replica"
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS, "transaction"
    watermark = read_watermark()
    if watermark is None:
        return DEFAULT_DB_ALIAS, "no_watermark"
    reason = "down"
    start = next(_turn) % len(aliases)
    now = time.monotonic()
    for alias in aliases[start:] + aliases[:start]:
        state = _state(alias)
        if now < state.skip_until:
            reason = state.skip_reason
            continue
        if state.skip_reason == "down":
            if not _reachable(alias):
                state.skip(settings.REPLICA_RETRY_SECONDS, "down")
                continue
            state.skip_reason = ""
        if state.replay_lsn >= watermark:
            return alias, "fresh"
        try:
            state.refresh(alias)
        except NotAReplica:
            state.skip(settings.REPLICA_RETRY_SECONDS, "not_replica")
            reason = "not_replica"
            _log_once(f"not_replica:{alias}", "event=replica_not_in_recovery alias=%s", alias)
            continue
        except DatabaseError as exc:
            _read_failed(alias, exc)
            reason = "down"
            continue
        state.skip_reason = ""
        if state.replay_lsn >= watermark:
            return alias, "caught_up"
        if state.lag_ms(watermark, now) > settings.REPLICA_MAX_LAG_MS:
            state.skip(LAG_RECHECK_SECONDS, "lagging")
            reason = "lagging"
            continue
        reason = "behind"
    return DEFAULT_DB_ALIAS, reason


def _read_failed(alias, exc):
    """A replica's connection failed: skip it for REPLICA_RETRY_SECONDS and hand
    its connection back (the pool discards a broken one)."""
    connection = connections[alias]
    raw = connection.connection
    broken = raw is None or getattr(raw, "closed", False) or getattr(raw, "broken", False)
    if broken:
        _state(alias).skip(settings.REPLICA_RETRY_SECONDS, "down")
        _log_once(f"down:{alias}", "event=replica_down alias=%s error=%s", alias,
                  str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc))
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - already gone
        pass


def _reachable(alias):
    """Whether a replica found down accepts a connection again: one connection of
    its own, outside the pool, which would wait its whole timeout for a server
    that refuses (the pool reconnects in the background meanwhile)."""
    import psycopg

    try:
        psycopg.connect(**connections[alias].get_connection_params()).close()
    except psycopg.Error:
        return False
    return True


_last_logged = {}


def _log_once(key, message, *args):
    """Log a warning at most every _LOG_EVERY_SECONDS per key (an outage would
    otherwise log once per read)."""
    now = time.monotonic()
    if now - _last_logged.get(key, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
        _last_logged[key] = now
        logger.warning(message, *args)


# --- the watermark -------------------------------------------------------------------------


def _redis_client():
    """The default cache's redis-py client, or None when the cache is not Redis."""
    try:
        from django_redis import get_redis_connection

        return get_redis_connection("default")
    except (ImportError, NotImplementedError, AttributeError):
        return None


_scripts = {}
_local_lock = threading.Lock()


def _watermark_key():
    from django.core.cache import cache

    return cache.make_key(WATERMARK_KEY)


def raise_watermark(lsn):
    """Raise the watermark to `lsn` unless it is higher already (atomic in Redis;
    one process's lock on other caches, where only one process shares it)."""
    client = _redis_client()
    if client is not None:
        script = _scripts.get(id(client))
        if script is None:
            script = _scripts[id(client)] = client.register_script(_RAISE_SCRIPT)
        script(keys=[_watermark_key()], args=[int(lsn)])
        return
    from django.core.cache import cache

    with _local_lock:
        current = cache.get(WATERMARK_KEY)
        if current is None or current < lsn:
            cache.set(WATERMARK_KEY, int(lsn), None)


def read_watermark():
    """The watermark, or None when it cannot be read (then reads use the primary).

    A missing key (a flushed cache) starts from the primary's current WAL
    position, which is past every commit so far.
    """
    try:
        client = _redis_client()
        if client is not None:
            raw = client.get(_watermark_key())
            value = None if raw is None else int(raw)
        else:
            from django.core.cache import cache

            value = cache.get(WATERMARK_KEY)
        if value is None:
            value = primary_wal_lsn(connections[DEFAULT_DB_ALIAS])
            raise_watermark(value)
        return value
    except Exception:  # noqa: BLE001 - the primary answers instead
        WATERMARK_ERRORS.labels("read").inc()
        _log_once("watermark_read", "event=replica_watermark_unreadable")
        return None


def primary_wal_lsn(connection):
    """The primary's WAL write position as a number: past the commit record of
    every (synchronous) commit that has returned."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn() - '0/0'")
        return int(cursor.fetchone()[0])


# --- writes raise the watermark ------------------------------------------------------


def _is_write(sql):
    return str(sql).lstrip()[:8].lower().startswith(_WRITE_PREFIXES)


def record_commit(connection):
    """After a commit that wrote: raise the watermark past it. Never raises."""
    try:
        raise_watermark(primary_wal_lsn(connection))
    except Exception:  # noqa: BLE001 - the write has committed; log it
        WATERMARK_ERRORS.labels("raise").inc()
        _log_once("watermark_raise", "event=replica_watermark_not_raised")


def _record_default_commit():
    record_commit(connections[DEFAULT_DB_ALIAS])


def _record_on_commit(connection):
    """Have the open transaction raise the watermark first thing after its commit,
    before the after-commit work the code registered (version bumps, publishes)."""
    for _sids, func, _robust in connection.run_on_commit:
        if func is _record_default_commit:
            return
    connection.run_on_commit.insert(
        0, (set(connection.savepoint_ids), _record_default_commit, False))


def observe_writes(execute, sql, params, many, context):
    """Execute wrapper on the primary: a statement that writes raises the
    watermark after its transaction commits (at once in autocommit)."""
    result = execute(sql, params, many, context)
    if _is_write(sql) and usable_replica_aliases():
        connection = context["connection"]
        if connection.in_atomic_block:
            _record_on_commit(connection)
        elif connection.get_autocommit():
            record_commit(connection)
    return result


def install_write_observer(sender=None, connection=None, **kwargs):
    """Put observe_writes on the primary's connection (a connection_created
    receiver; connected only when replicas are configured)."""
    if connection.alias != DEFAULT_DB_ALIAS or connection.vendor != "postgresql":
        return
    if observe_writes not in connection.execute_wrappers:
        # First in the list: `with connection.execute_wrapper(...)` pops the
        # last entry when it ends, which must stay the caller's own.
        connection.execute_wrappers.insert(0, observe_writes)


def reset_state():
    """Forget what this process knows of the replicas (tests)."""
    with _states_lock:
        _states.clear()
