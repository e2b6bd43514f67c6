import threading
import time

from django.conf import settings
from django.contrib.auth.backends import ModelBackend

from chatsite.cache import safe_delete_many, safe_get
from chatsite.retired import RETIRED, refill, retire

# Users in process memory save one Redis round trip on every signed-in request
# of the Django path, but saving a user clears them only in its own process:
# others keep theirs for USER_LOCAL_CACHE_SECONDS (default 0, off: access ends
# at once everywhere; docs/RELIABILITY.md, "Threat model").
_local = {}
_local_lock = threading.Lock()
_LOCAL_MAX = 10000


def user_cache_key(user_id):
    return f"user:{user_id}"


def _local_get(user_id):
    entry = _local.get(user_id)
    if entry is not None and entry[0] > time.monotonic():
        return entry[1]
    return None


def _local_set(user_id, user):
    seconds = settings.USER_LOCAL_CACHE_SECONDS
    if seconds <= 0:
        return
    with _local_lock:
        if len(_local) >= _LOCAL_MAX:
            _local.clear()
        _local[user_id] = (time.monotonic() + seconds, user)


class CachedModelBackend(ModelBackend):
    """ModelBackend whose get_user reads the user from memory, then the cache.

    Django calls get_user on every request that touches request.user; served
    from the cache, a hot authenticated read touches no table. Django still
    verifies the session hash against the cached password hash, and saving or
    deleting a user drops the entries (accounts.signals).
    """

    def get_user(self, user_id):
        try:
            user_id = int(user_id)
        except (TypeError, ValueError):
            return None
        user = _local_get(user_id)
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
            _local_set(user_id, user)
        return user if self.user_can_authenticate(user) else None


# For chatsite.hotpath, which reads users the way get_user does.
local_user = _local_get
remember_user = _local_set


def forget_user(user_id, *, revoked=True):
    """Drop a user's cached entries; `revoked`: keep stale readers from refilling."""
    _local.pop(user_id, None)
    if revoked:
        retire([user_cache_key(user_id)])
    else:
        safe_delete_many([user_cache_key(user_id)])
