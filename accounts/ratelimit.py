"""Login throttling: failures a minute per IP and per username, in the cache."""

import hashlib
import logging
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)
WINDOW_SECONDS = 60


def _keys(ip, username):
    window = int(time.time() // WINDOW_SECONDS)
    # Usernames are user input (spaces, control characters): hash them into the key.
    user = hashlib.blake2b(username.lower().encode("utf-8", "replace"), digest_size=12)
    return [f"login-fail:ip:{ip}:{window}", f"login-fail:user:{user.hexdigest()}:{window}"]


def retry_after():
    return WINDOW_SECONDS - int(time.time() % WINDOW_SECONDS) or 1


def is_login_blocked(ip, username):
    """Whether this IP or username used up its failures in this minute."""
    from chatsite.cache import safe_get_many

    # Fails open: while Redis is down nobody is throttled, rather than nobody
    # can sign in (tests/test_reliability_faults.py signs in during an outage).
    counts = safe_get_many(_keys(ip, username))
    return any(int(n) >= settings.LOGIN_FAILURE_LIMIT for n in counts.values())


def record_login_failure(ip, username):
    for key in _keys(ip, username):
        try:
            try:
                cache.add(key, 0, WINDOW_SECONDS + 1)
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, WINDOW_SECONDS + 1)
        except Exception:  # noqa: BLE001 - a cache outage must not fail the sign-in
            logger.warning("event=login_throttle_unavailable", exc_info=True)
            return


def client_ip(request):
    return request.META.get("REMOTE_ADDR") or "unknown"
