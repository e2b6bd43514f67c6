from django.contrib.auth.backends import ModelBackend

from chatsite.cache import safe_delete_many, safe_get, safe_set


def user_cache_key(user_id):
    return f"user:{user_id}"


class CachedModelBackend(ModelBackend):
    """ModelBackend whose get_user reads the user from the cache.

    Django calls get_user on every request that touches request.user; served
    from the cache, a hot authenticated read touches no table. Django still
    verifies the session hash against the cached password hash, and saving or
    deleting a user drops the entry (accounts.signals).
    """

    def get_user(self, user_id):
        key = user_cache_key(user_id)
        user = safe_get(key)
        if user is None:
            user = super().get_user(user_id)
            if user is not None:
                safe_set(key, user)
            return user
        return user if self.user_can_authenticate(user) else None


def forget_user(user_id):
    safe_delete_many([user_cache_key(user_id)])
