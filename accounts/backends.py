"""Signed-in users read from memory or the cache, and never past a revocation.

Django calls ``get_user`` on every request that touches ``request.user``. A
process keeps users in memory, each under the user's **stamp**: a number in the
cache (``ustamp:<id>``) that every change ending access (a deactivation, a new
password, a deletion: accounts.signals) replaces. A kept user is used only
while the stamp it was kept under is still the cache's, so a revocation in any
process ends it in every process at the next request, and no process keeps a
user it read before the revocation (it kept it under the old stamp). Checking
the stamp costs no round trip of its own once a process knows a session's user:
it comes with the session (accounts.session_store; the hot path reads it in
its one round trip too); the pickled user is fetched and decoded only when the stamp
moved or the process has not kept it. Without a stamp (the cache is
unreachable) nothing is kept: the user is read from the database.
"""

import secrets
import threading

from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache

from chatsite.cache import CACHE_ERRORS, safe_delete_many, safe_get
from chatsite.retired import RETIRED, refill, retire

_local = {}  # user id -> (stamp, user)
_local_lock = threading.Lock()
_LOCAL_MAX = 10000


def user_cache_key(user_id):
    return f"user:{user_id}"


def user_stamp_key(user_id):
    return f"ustamp:{user_id}"


def local_user(user_id, stamp):
    """The user this process kept under this stamp, else None."""
    entry = _local.get(user_id)
    if entry is not None and stamp is not None and entry[0] == stamp:
        return entry[1]
    return None


def keeps_user(user_id):
    """Whether this process keeps the user under some stamp (maybe an old one)."""
    return user_id in _local


def remember_user(user_id, stamp, user):
    if stamp is None:
        return
    with _local_lock:
        if len(_local) >= _LOCAL_MAX:
            _local.clear()
        _local[user_id] = (stamp, user)


def _new_stamp():
    return secrets.randbits(62)


def current_stamp(user_id, found=None):
    """The user's stamp (`found`: as already fetched), created when missing;
    None when the cache cannot be reached."""
    key = user_stamp_key(user_id)
    stamp = found if found is not None else safe_get(key)
    if stamp is None:
        try:
            cache.add(key, _new_stamp(), None)
            stamp = cache.get(key)
        except Exception:  # noqa: BLE001 - without a stamp nothing is kept
            CACHE_ERRORS.labels("stamp").inc()
            return None
    return stamp


class CachedModelBackend(ModelBackend):
    """ModelBackend whose get_user reads the user from memory, then the cache.

    Served from memory or the cache, a hot authenticated read touches no
    table. Django still verifies the session hash against the user's password
    hash, and a change that ends access moves the stamp and retires the cached
    entry (accounts.signals).
    """

    def get_user(self, user_id):
        try:
            user_id = int(user_id)
        except (TypeError, ValueError):
            return None
        from accounts.session_store import prefetched_stamp

        stamp = current_stamp(user_id, prefetched_stamp(user_id))
        user = local_user(user_id, stamp)
        if user is None:
            cached = safe_get(user_cache_key(user_id))
            if cached is None or cached == RETIRED:
                user = super().get_user(user_id)
                if user is None:
                    return None
                if cached is None:  # a retired entry is not refilled (chatsite.retired)
                    refill(user_cache_key(user_id), user)
            else:
                user = cached
            # Kept under the stamp read *before* the user: a revocation since
            # moved it, and the next request reads the user again.
            remember_user(user_id, stamp, user)
        return user if self.user_can_authenticate(user) else None


def forget_user(user_id, *, revoked=True):
    """Drop a user's cached entries; `revoked`: move the stamp (every process
    drops its kept user) and keep stale readers from refilling the entry."""
    _local.pop(user_id, None)
    if not revoked:
        safe_delete_many([user_cache_key(user_id)])
        return
    retire([user_cache_key(user_id)])
    try:
        cache.set(user_stamp_key(user_id), _new_stamp(), None)
    except Exception:  # noqa: BLE001 - an unreachable cache keeps nothing either
        CACHE_ERRORS.labels("stamp").inc()
