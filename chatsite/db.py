"""Observe every database statement: duration metrics, slow-query log, SQL echo.

`observe_query` is a Django execute wrapper, installed on every connection when
it is created (connection_created), so it also covers pooled psycopg
connections and Channels' database_sync_to_async threads without swapping the
database engine.

The slow-query log and the admin performance page show statement shapes only
(`normalize_sql`): parameters carry message text and session keys, and a
statement may inline them as literals.
"""

import heapq
import logging
import re
import threading
import time
from datetime import UTC, datetime

from django.conf import settings
from django.utils.crypto import salted_hmac
from django_prometheus.db import metrics as django_db_metrics

from chatsite.metrics import DATABASE_QUERY_DURATION

logger = logging.getLogger(__name__)

QUERY_PREVIEW_CHARS = 200
# Only the start of a statement is normalized: a long IN list or bulk VALUES
# costs nothing past it, and an unterminated literal at the cut is still scrubbed.
NORMALIZE_CHARS = 2000
PARAMS_HASH_CHARS = 12
QUERY_TYPES = ("select", "insert", "update", "delete")
_QUERY_TIMERS = {kind: DATABASE_QUERY_DURATION.labels(kind) for kind in (*QUERY_TYPES, "other")}
_DJANGO_METRICS = {}


def query_type(sql):
    """Return select/insert/update/delete/other for one SQL statement."""
    kind = sql.lstrip()[:6].lower()
    return kind if kind in QUERY_TYPES else "other"


# One pass over a statement: quoted identifiers are kept; string, dollar-quoted and
# numeric literals and %s/$1/? placeholders become "?"; comments are dropped.
# Backslash escapes count only in E'' strings, as in standard SQL (Django's
# ESCAPE '\' is one whole string).
_SQL_TOKEN = re.compile(
    r"""(?P<identifier>"(?:[^"]|"")*")
    |(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<literal>
        (?<!\w)[Ee]'(?:[^'\\]|''|\\.)*(?:'|\Z)
        |(?:(?<!\w)[BbXxNn])?'(?:[^']|'')*(?:'|\Z)
        |\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z)
        |%s|\$\d+|\?
        |(?<![\w.])\d+(?:\.\d*)?(?:[Ee][-+]?\d+)?
        |(?<![\w.])\.\d+(?:[Ee][-+]?\d+)?
    )""",
    re.VERBOSE | re.DOTALL,
)
_PLACEHOLDER_LIST = re.compile(r"\?(?:\s*,\s*\?)+")
_ROW_LIST = re.compile(r"\(\?, \.\.\.\)(?:\s*,\s*\(\?, \.\.\.\))+")


def _normalize_token(match):
    if match.group("identifier") is not None:
        return match.group()
    return " " if match.group("comment") is not None else "?"


def normalize_sql(sql, limit=QUERY_PREVIEW_CHARS):
    """Return the statement's shape on one line: every value a "?", lists shortened.

    Safe to show anyone who may see the schema: no parameter and no literal of
    the statement survives.
    """
    shape = _SQL_TOKEN.sub(_normalize_token, str(sql)[:NORMALIZE_CHARS])
    shape = _PLACEHOLDER_LIST.sub("?, ...", shape)
    shape = _ROW_LIST.sub("(?, ...), ...", shape)
    return " ".join(shape.split())[:limit]


def params_hash(params):
    """Return a short keyed hash of a statement's parameters, or "-" without any.

    Equal parameters hash alike, so repeats of one slow statement can be told
    apart from different ones; keyed with SECRET_KEY, so a guessed message text
    cannot be checked against it.
    """
    if not params:
        return "-"
    digest = salted_hmac("chatsite.db.params_hash", repr(params)).hexdigest()
    return digest[:PARAMS_HASH_CHARS]


def one_line(text, limit):
    """Return the first `limit` characters of text with whitespace runs collapsed."""
    if isinstance(text, (list, tuple)) and len(text) > 50:
        # A bulk statement's parameters can be huge; render only the start.
        text = f"{str(text[:50])[:-1]}, ...]"
    return " ".join(str(text)[:limit].split())


class SlowestQueries:
    """The slowest statements of the last few minutes in this process.

    Two windows of `window` seconds (current and previous), each a min-heap of
    at most `size` entries, so a statement that is not among the slowest costs
    one comparison and no lock.
    """

    def __init__(self, size=20, window=300.0):
        self.size = size
        self.window = window
        self._lock = threading.Lock()
        self._current = []
        self._previous = []
        self._started = time.monotonic()
        self._sequence = 0

    def _rotate(self, now):
        if now - self._started >= self.window:
            expired = now - self._started >= 2 * self.window
            self._previous = [] if expired else self._current
            self._current = []
            self._started = now

    def record(self, duration, sql, params, alias):
        """Keep the statement's shape if it is among the slowest of the current window.

        `params` is never kept (nor shown): only the shape of `sql`.
        """
        current = self._current
        now = time.monotonic()
        if (len(current) >= self.size and duration <= current[0][0]
                and now - self._started < self.window):
            return
        shape = normalize_sql(sql, 1000)
        with self._lock:
            self._rotate(now)
            self._sequence += 1
            entry = (duration, self._sequence, time.time(), shape, alias)
            if len(self._current) < self.size:
                heapq.heappush(self._current, entry)
            elif duration > self._current[0][0]:
                heapq.heapreplace(self._current, entry)

    def snapshot(self):
        """Return the slowest entries of both windows as dicts, slowest first."""
        with self._lock:
            self._rotate(time.monotonic())
            entries = sorted(self._current + self._previous, reverse=True)[: self.size]
        return [
            {"duration_ms": duration * 1000, "at": datetime.fromtimestamp(at, tz=UTC),
             "query": shape, "alias": alias}
            for duration, _, at, shape, alias in entries
        ]

    def clear(self):
        with self._lock:
            self._current, self._previous = [], []
            self._started = time.monotonic()


SLOWEST_QUERIES = SlowestQueries()


def _django_metrics(alias, vendor):
    """Return django-prometheus's labelled statement counters for one connection.

    Its django_db_query_duration_seconds is left out: database_query_duration_seconds
    times the same statements, and a second histogram would double the cost.
    """
    metrics = _DJANGO_METRICS.get(alias)
    if metrics is None:
        metrics = _DJANGO_METRICS[alias] = (
            django_db_metrics.execute_total.labels(alias, vendor),
            django_db_metrics.execute_many_total.labels(alias, vendor),
        )
    return metrics


def observe_query(execute, sql, params, many, context):
    """Time one statement; log it when slow (or always with SQL_ECHO)."""
    start = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    except Exception as exc:
        connection = context["connection"]
        django_db_metrics.errors_total.labels(
            connection.alias, connection.vendor, type(exc).__name__
        ).inc()
        raise
    finally:
        duration = time.perf_counter() - start
        connection = context["connection"]
        if settings.ENABLE_METRICS:
            _QUERY_TIMERS[query_type(sql)].observe(duration)
            executed, executed_many = _django_metrics(connection.alias, connection.vendor)
            (executed_many if many else executed).inc()
        SLOWEST_QUERIES.record(duration, sql, params, connection.alias)
        if duration > settings.SLOW_QUERY_THRESHOLD:
            log_slow_query(duration, sql, params, connection.alias)
        if settings.SQL_ECHO:
            logger.info(
                "event=sql duration=%.4f query=%s params=%s", duration, one_line(sql, 10000),
                one_line(params, 1000),
                extra={"event": "sql", "duration_ms": round(duration * 1000, 3),
                       "alias": connection.alias},
            )


def log_slow_query(duration, sql, params, alias):
    """Log one statement over SLOW_QUERY_THRESHOLD as one line: its shape, never values."""
    query = normalize_sql(sql, QUERY_PREVIEW_CHARS)
    digest = params_hash(params)
    logger.warning(
        "event=slow_query duration=%.4f query=%s params_hash=%s", duration, query, digest,
        extra={"event": "slow_query", "duration_ms": round(duration * 1000, 3),
               "query": query, "params_hash": digest, "alias": alias},
    )


def install_query_observer(sender=None, connection=None, **kwargs):
    """Put observe_query on a connection once (a connection_created receiver)."""
    django_db_metrics.connections_total.labels(connection.alias, connection.vendor).inc()
    # Outermost, and first in the list: `with connection.execute_wrapper(...)`
    # pops the last entry when it ends, which must stay the caller's own.
    if observe_query not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, observe_query)
