"""Caching of hot reads: versioned keys, one rebuild per burst, never a failed request.

* Invalidation never scans keys: each project has a version number in the cache
  (``pv:<id>``), bumped after every committed change in the project; keys of
  cached reads include it, so a bump retires them all at once and they expire
  by TTL.
* A burst of requests on a cold or just-retired key rebuilds it once: the first
  request takes a short lock (``cache.add``), the others wait briefly for its
  result and only build themselves if it does not come.
* Redis errors never fail a request: every call here catches them, logs them
  and counts them, and the caller falls back to the database.
"""

import functools
import hashlib
import logging
import threading
import time

from django.conf import settings
from django.core.cache import cache
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


def bump_version(scope, ident):
    """Retire every key built on this version. Call after commit.

    Return the new version, or None when the cache could not be written.
    """
    key = version_key(scope, ident)
    try:
        try:
            return cache.incr(key)
        except ValueError:  # missing: start fresh
            value = _fresh_version()
            cache.set(key, value, None)
            return value
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("incr").inc()
        logger.warning("event=cache_error op=incr key=%s", key, exc_info=True)
        return None


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


def get_slot(slot, scope, ident, build, *, name="read", extra_keys=(), check=None):
    """Return a cached read tagged with its scope's version.

    One round trip fetches the version, the slot and any extra keys the caller
    needs; ``check(extras)`` runs before anything is served or built (an access
    check that raises). The slot holds (version, value) and is used only when
    its version is current, else rebuilt once per burst.
    """
    vkey = version_key(scope, ident)
    found = safe_get_many([vkey, slot, *extra_keys])
    if check is not None:
        check({k: found.get(k) for k in extra_keys})
    if not settings.CACHE_HOT_READS:
        return build()
    version = found.get(vkey)
    if version is None:
        version = get_version(scope, ident)
    entry = found.get(slot)
    if entry is not None and entry[0] == version:
        CACHE_LOOKUPS.labels(name, "hit").inc()
        return entry[1]

    def build_tagged():
        return (version, build())

    entry = get_or_build(f"{slot}@{version}", build_tagged, name=name)
    safe_set(slot, entry)
    return entry[1]
