import threading
import time

from django.conf import settings
from django.contrib.auth.backends import ModelBackend

from chatsite.cache import safe_delete_many, safe_get, safe_set

# A few seconds of users in process memory saves one Redis round trip on every
# signed-in request (measured in docs/PERFORMANCE.md). Saving a user clears it
# here at once and, in other processes, within USER_LOCAL_CACHE_SECONDS.
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
            user = safe_get(user_cache_key(user_id))
            if user is None:
                user = super().get_user(user_id)
                if user is None:
                    return None
                safe_set(user_cache_key(user_id), user)
            _local_set(user_id, user)
        return user if self.user_can_authenticate(user) else None


# For chatsite.hotpath, which reads users the way get_user does.
local_user = _local_get
remember_user = _local_set


def forget_user(user_id):
    _local.pop(user_id, None)
    safe_delete_many([user_cache_key(user_id)])
