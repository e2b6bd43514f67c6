"""Caching of hot reads: versioned keys, one rebuild per burst, never a failed request.

* Invalidation never scans keys: each project has a version number in the cache
  (``pv:<id>``), bumped after every committed change in the project; keys of
  cached reads include it, so a bump retires them all at once and they expire
  by TTL.
* A burst of requests on a cold or just-retired key rebuilds it once: the first
  request takes a short lock (``cache.add``), the others wait briefly for its
  result and only build themselves if it does not come.
* Redis errors never fail a request: every call here catches them, logs them
  and counts them, and the caller falls back to the database. A version bump
  that fails is tried again, then owed until Redis takes it (bump_version).
"""

import functools
import hashlib
import itertools
import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django_redis.cache import RedisCache
from prometheus_client import Counter

logger = logging.getLogger(__name__)

CACHE_ERRORS = Counter("chat_cache_errors_total", "Cache operations that failed", ["op"])
CACHE_LOOKUPS = Counter("chat_cache_lookups_total", "Cached reads by result", ["name", "result"])
MISSING = object()
LOCK_SECONDS = 5
WAIT_SECONDS = 0.5
_local_locks = {}
_local_locks_guard = threading.Lock()


def ttl():
    return settings.CACHE_TTL


def safe_get(key, default=None):
    try:
        return cache.get(key, default)
    except Exception:  # noqa: BLE001 - a cache outage degrades to the database
        CACHE_ERRORS.labels("get").inc()
        logger.warning("event=cache_error op=get key=%s", key[:100], exc_info=True)
        return default


def safe_get_many(keys):
    try:
        return cache.get_many(keys)
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("get_many").inc()
        logger.warning("event=cache_error op=get_many", exc_info=True)
        return {}


def safe_set(key, value, timeout=None):
    try:
        cache.set(key, value, ttl() if timeout is None else timeout)
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("set").inc()
        logger.warning("event=cache_error op=set key=%s", key[:100], exc_info=True)


def safe_delete_many(keys):
    try:
        cache.delete_many(keys)
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("delete").inc()
        logger.warning("event=cache_error op=delete", exc_info=True)


# --- versions -----------------------------------------------------------------------


def version_key(scope, ident):
    """The cache key of a scope's version number (chatsite.hotpath reads it too)."""
    return f"v:{scope}:{ident}"


def _fresh_version():
    # A never-reused starting number, so that a version key lost to eviction
    # cannot bring back bodies cached under an old number.
    return int(time.time() * 1000)


def get_versions(scope, idents):
    """Return {ident: version} for many ids in one round trip; creates missing ones."""
    pay_owed_bumps()
    keys = {version_key(scope, i): i for i in idents}
    found = safe_get_many(list(keys))
    versions = {}
    for key, ident in keys.items():
        value = found.get(key)
        if value is None:
            value = _fresh_version()
            try:
                if not cache.add(key, value, None):
                    value = cache.get(key, value)
            except Exception:  # noqa: BLE001
                CACHE_ERRORS.labels("add").inc()
        versions[ident] = value
    return versions


def get_version(scope, ident):
    return get_versions(scope, [ident])[ident]


def _incr_version(key):
    """Bump one version key (raises on a cache error)."""
    try:
        return cache.incr(key)
    except ValueError:  # missing: start fresh
        value = _fresh_version()
        cache.set(key, value, None)
        return value


def bump_version(scope, ident):
    """Retire every key built on this version. Call after commit.

    Return the new version, or None when the cache could not be written.

    A bump that fails leaves the bodies built before the change current until
    their TTL: readers, and the hot path (chatsite.hotpath), would keep serving
    a page without the change that was just acknowledged. So a failed bump is
    tried again at once (a blip of one connection), and if that fails too it is
    *owed* (_owe_bump): this process pays it as soon as the cache takes writes
    again -- before its next bump, version read or slot read, and from a retry
    thread once a second, so it is paid even when no request comes -- and until
    then this process's Django reads of the scope skip the cache
    (chat.history_cache.get_cached_page), as the database is the only current
    answer. What this cannot cover: another process's hot path answering from
    a Redis that comes back before this process has paid (at most the retry
    interval), or this process exiting first (until CACHE_TTL). Nothing better
    is possible without Redis: the entries to retire are in it.
    """
    pay_owed_bumps()
    key = version_key(scope, ident)
    # No second try when an owed bump failed again within OWED_RETRY_SECONDS:
    # the cache is down, not blipping, and a try would only wait out a timeout.
    for _attempt in range(1 if _cache_failing() else 2):
        try:
            return _incr_version(key)
        except Exception:  # noqa: BLE001
            CACHE_ERRORS.labels("incr").inc()
            logger.warning("event=cache_error op=incr key=%s", key, exc_info=True)
    _owe_bump(scope, ident)
    return None


# --- bumps owed: failed twice, paid when the cache takes writes again ---------------

OWED_RETRY_SECONDS = 1.0
_owed = {}  # (scope, ident) -> (serial, monotonic time) of its latest failure
_owed_serials = itertools.count()
_owed_state = {"next_try": 0.0, "retrier": None}
_owed_guard = threading.Lock()


def _owe_bump(scope, ident):
    with _owed_guard:
        # (serial, when): a failure recorded while a payment is in flight stays owed.
        _owed[(scope, ident)] = (next(_owed_serials), time.monotonic())
        if _owed_state["retrier"] is None:
            retrier = threading.Thread(target=_retry_owed, name="owed-bumps", daemon=True)
            _owed_state["retrier"] = retrier
            retrier.start()
    logger.error("event=version_bump_owed scope=%s ident=%s", scope, ident)


def is_bump_owed(scope, ident):
    """Whether this process owes the scope a bump (its cached reads may be stale)."""
    return bool(_owed) and (scope, ident) in _owed


def _cache_failing():
    return bool(_owed) and time.monotonic() < _owed_state["next_try"]


def pay_owed_bumps(*, force=False):
    """Bump the versions whose bump failed, if the cache takes writes now. Never raises.

    No cost when nothing is owed; while the cache still fails, tried at most
    once per OWED_RETRY_SECONDS (a request must not wait out a dead Redis twice).
    A bump owed for longer than CACHE_TTL is dropped: every entry built before
    its change has expired by then.
    """
    if not _owed:
        return
    now = time.monotonic()
    with _owed_guard:
        if not force and now < _owed_state["next_try"]:
            return
        owed = list(_owed.items())
    for scope_ident, mark in owed:
        if now - mark[1] <= ttl():
            try:
                _incr_version(version_key(*scope_ident))
            except Exception:  # noqa: BLE001 - still down: a later try pays
                CACHE_ERRORS.labels("incr").inc()
                logger.warning("event=cache_error op=incr_owed", exc_info=True)
                with _owed_guard:
                    _owed_state["next_try"] = time.monotonic() + OWED_RETRY_SECONDS
                return
        with _owed_guard:
            if _owed.get(scope_ident) == mark:
                del _owed[scope_ident]


def _retry_owed():
    """The retry thread: pays owed bumps once a second until none is owed."""
    while True:
        time.sleep(OWED_RETRY_SECONDS)
        pay_owed_bumps(force=True)
        with _owed_guard:
            if not _owed:
                _owed_state["retrier"] = None
                return


# --- counters --------------------------------------------------------------------------


def count_in_window(name, window_seconds):
    """Count one event on a fixed-window counter (one round trip to Redis).

    Return (count in this window, counter key, seconds left in the window), or
    None when the cache could not count (the caller decides whether to fail open).
    """
    now = time.time()
    key = f"{name}:{int(now // window_seconds)}"
    left = window_seconds - now % window_seconds
    try:
        if _is_redis():
            count = _add_in_redis(key, 1, window_seconds)
        else:
            cache.add(key, 0, window_seconds + 1)
            try:
                count = cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, window_seconds + 1)
                count = 1
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("count").inc()
        logger.warning("event=cache_error op=count key=%s", key[:100], exc_info=True)
        return None
    return count, key, left


def _add_in_redis(key, delta, window_seconds):
    """INCRBY and EXPIRE pipelined: one round trip. The window number is in the
    key, so renewing its expiry on every count is harmless."""
    full_key = cache.make_key(key)
    pipe = cache.client.get_client(write=True).pipeline(transaction=False)
    pipe.incrby(full_key, delta)
    pipe.expire(full_key, int(window_seconds) + 1)
    return pipe.execute()[0]


def uncount(key, window_seconds):
    """Take back one event counted by count_in_window under `key`. Never raises."""
    try:
        if _is_redis():
            _add_in_redis(key, -1, window_seconds)
        else:
            cache.decr(key)
    except ValueError:  # the window's counter is gone already
        pass
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("uncount").inc()
        logger.warning("event=cache_error op=uncount key=%s", key[:100], exc_info=True)


def _is_redis():
    return is_redis_cache("default")


def is_redis_cache(alias):
    """Whether a cache alias is django-redis's (its class or a subclass such as
    SharedClientRedisCache): then its raw client serves pipelines and one-trip
    MGETs."""
    from django.utils.module_loading import import_string
    from django_redis.cache import RedisCache

    return issubclass(import_string(settings.CACHES[alias]["BACKEND"]), RedisCache)


# --- one rebuild per burst -------------------------------------------------------------


def _local_lock(key):
    with _local_locks_guard:
        lock = _local_locks.get(key)
        if lock is None:
            if len(_local_locks) > 10000:
                _local_locks.clear()
            lock = _local_locks[key] = threading.Lock()
        return lock


def get_or_build(key, build, *, name="read", timeout=None):
    """Return the cached value of key, building it at most once per burst."""
    if not settings.CACHE_HOT_READS:
        return build()
    value = safe_get(key, MISSING)
    if value is not MISSING:
        CACHE_LOOKUPS.labels(name, "hit").inc()
        return value
    CACHE_LOOKUPS.labels(name, "miss").inc()
    # Threads of this process queue on a local lock; processes on a cache lock.
    with _local_lock(key):
        value = safe_get(key, MISSING)
        if value is not MISSING:
            return value
        lock_key = f"lock:{key}"
        try:
            owner = cache.add(lock_key, 1, LOCK_SECONDS)
        except Exception:  # noqa: BLE001
            CACHE_ERRORS.labels("add").inc()
            owner = True
        if not owner:
            deadline = time.monotonic() + WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.01)
                value = safe_get(key, MISSING)
                if value is not MISSING:
                    return value
        try:
            value = build()
            safe_set(key, value, timeout)
        finally:
            if owner:
                try:
                    cache.delete(lock_key)
                except Exception:  # noqa: BLE001
                    CACHE_ERRORS.labels("delete").inc()
        return value


def make_key(prefix, *parts):
    """A safe cache key from any parts (long or odd ones are hashed)."""
    raw = ":".join(str(p) for p in parts)
    if len(raw) > 150 or any(c.isspace() or ord(c) < 33 for c in raw):
        raw = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
    return f"{prefix}:{raw}"


def cache_result(ttl_seconds=None, *, prefix=None):
    """Cache a function's result under a key built from its name and arguments.

    The guide's ``@cache_result(ttl)`` idea: arguments must have stable ``str``
    forms (ids, numbers, strings). Works for sync functions; for async code call
    the function through ``sync_to_async``.
    """

    def decorate(fn):
        name = prefix or f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            key = make_key(name, *args, *sorted(kwargs.items()))
            return get_or_build(key, lambda: fn(*args, **kwargs), name=name,
                                timeout=ttl_seconds)

        wrapper.uncached = fn
        return wrapper

    return decorate



class SharedClientRedisCache(RedisCache):
    """django-redis with one client per process and cache, not one per context.

    Django keeps a cache backend per async context (asgiref's Local), and
    django-redis builds a client, with a redis-py ``Redis`` of its own, for
    each: every socket's consumer task held one, 13 KiB apiece
    (docs/PERFORMANCE.md, "Sockets"). The client is thread-safe (its
    connections come from a shared pool), so one serves them all.
    """

    _shared = {}
    _shared_lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            key = (self._server, repr(sorted(self._params.items())))
            with self._shared_lock:
                shared = self._shared.get(key)
                if shared is None:
                    shared = self._shared[key] = self._client_cls(self._server, self._params, self)
            self._client = shared
        return self._client
