"""Django's cached_db sessions, loaded together with the signed-in user's stamp.

Every signed-in request on Django's path reads its session and then checks the
user's stamp (accounts.backends: the number every revocation moves). Once a
process has seen which user a session key belongs to (a key never changes
hands: Django makes a new one at every sign-in), it fetches the two in one
round trip, as the hot path does, and hands the stamp to the backend for this
request only.
"""

import threading

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.cached_db import SessionStore as CachedDbStore
from django.core.signals import request_started
from django.dispatch import receiver

_session_users = {}  # session key -> user id
_SESSION_USERS_MAX = 50000
_request = threading.local()  # the stamp fetched with this request's session


@receiver(request_started)
def _forget_prefetched_stamp(sender, **kwargs):
    _request.stamp = None


def prefetched_stamp(user_id):
    """The user's stamp if this request's session load fetched it, else None."""
    found = getattr(_request, "stamp", None)
    if found is not None and found[0] == user_id:
        _request.stamp = None
        return found[1]
    return None


class SessionStore(CachedDbStore):
    def load(self):
        from accounts.backends import user_stamp_key
        from chatsite.hotpath import Declined, fetch

        _request.stamp = None  # only what this load fetches counts
        user_id = _session_users.get(self.session_key)
        if user_id is not None:
            try:
                data, stamp = fetch([(settings.SESSION_CACHE_ALIAS, self.cache_key),
                                     ("default", user_stamp_key(user_id))])
            except Declined:  # the cache is away: Django's own load decides
                data = stamp = None
            if isinstance(data, dict) and str(data.get(SESSION_KEY)) == str(user_id):
                _request.stamp = (user_id, stamp) if stamp is not None else None
                return data
        data = super().load()
        user = data.get(SESSION_KEY)
        if user is not None and self.session_key:
            if len(_session_users) >= _SESSION_USERS_MAX:
                _session_users.clear()
            try:
                _session_users[self.session_key] = int(user)
            except (TypeError, ValueError):
                pass
        return data
