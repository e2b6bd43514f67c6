"""Whether a session still signs its user in, read fresh (for open sockets)."""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.utils.crypto import constant_time_compare

from accounts.models import User


def session_grants_user(session_key, user_id):
    """Return whether the session still signs in this active user.

    What django.contrib.auth.get_user checks, with the user read from the
    database (not a cache that a revocation may not have reached): the session
    exists and names the user and a configured backend, the user is active, and
    the session's hash matches the current password. A socket opened without a
    session (tests that place a user in the scope) is checked for the user only.
    """
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return False
    if session_key is None:
        return True
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    data = store.load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return False
    if data.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
        return False
    session_hash = data.get(HASH_SESSION_KEY)
    return bool(session_hash) and constant_time_compare(
        session_hash, user.get_session_auth_hash())
