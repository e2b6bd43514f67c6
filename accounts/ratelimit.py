"""Login throttling: LOGIN_FAILURE_LIMIT failed sign-ins a minute per IP and per username.

One throttle for every way to sign in: POST /api/auth/login, the /login page and
/admin/login/ all check and record through this module, so failures on one count
toward the others (the forms share accounts.views.ThrottledLoginFormMixin). The
IP is the client's own behind TRUSTED_PROXY_COUNT proxies (``client_ip``).

The throttle fails closed: the limit holds whatever is down.

* Counters live in the cache (Redis): one key per IP and per username and minute.
* While the cache is unreachable, failures are counted in the database instead
  (``LoginFailure``: an ``F()`` increment of one row per key and minute; rows of
  older minutes are pruned on write). The check always adds the database's
  counts of this minute to the cache's (one indexed query), so failures counted
  during an outage still count once Redis is back, and the reverse. Sign-in
  keeps working during a Redis outage; the fallback is logged
  (``event=login_throttle_fallback``) and counted in ``chat_cache_errors_total``
  (``op="login_throttle_*"``).
* If neither the cache nor the database can be consulted (or a failure cannot be
  recorded anywhere), the attempt is refused with 503 and Retry-After
  (``ThrottleUnavailable``), never let through unchecked.

Why this module and not django-axes: axes's database handler adds a database
write to every attempt (this writes to Redis, and to the database only while
Redis is down); its cache handler has no fallback that keeps counting, and
refusing, while Redis is down; and it would be a second counter beside this one,
which the API needs anyway, so failures on one form would not count toward the
others' limit.
"""

import hashlib
import ipaddress
import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from chatsite.cache import CACHE_ERRORS
from chatsite.errors import Unavailable

logger = logging.getLogger(__name__)
WINDOW_SECONDS = 60
UNAVAILABLE_RETRY_SECONDS = 5


class ThrottleUnavailable(Unavailable):
    """Neither the cache nor the database could count sign-in failures."""

    def __init__(self):
        super().__init__("Sign-in is unavailable for a moment; try again shortly.",
                         retry_after=UNAVAILABLE_RETRY_SECONDS)


def _window():
    return int(time.time() // WINDOW_SECONDS)


def _names(ip, username):
    # Usernames are user input (spaces, control characters): hash them into the key.
    user = hashlib.blake2b(username.lower().encode("utf-8", "replace"), digest_size=12)
    return [f"ip:{ip}"[:100], f"user:{user.hexdigest()}"]


def _cache_key(name, window):
    return f"login-fail:{name}:{window}"


def retry_after():
    return WINDOW_SECONDS - int(time.time() % WINDOW_SECONDS) or 1


def _cache_failed(op):
    CACHE_ERRORS.labels(f"login_throttle_{op}").inc()
    logger.warning("event=login_throttle_fallback store=database op=%s", op, exc_info=True)


def failure_counts(ip, username):
    """Return {name: failures in this minute} for the IP and the username.

    Sums the cache's and the database's counters; raises ThrottleUnavailable
    when neither answers.
    """
    from accounts.models import LoginFailure

    window = _window()
    names = _names(ip, username)
    counts = dict.fromkeys(names, 0)
    answered = False
    try:
        found = cache.get_many([_cache_key(n, window) for n in names])
    except Exception:  # noqa: BLE001 - any cache error: count in the database
        _cache_failed("read")
    else:
        answered = True
        for name in names:
            counts[name] += int(found.get(_cache_key(name, window)) or 0)
    try:
        rows = LoginFailure.objects.filter(key__in=names, window=window).values_list(
            "key", "count")
        for name, count in rows:
            counts[name] += count
    except DatabaseError:
        logger.warning("event=login_throttle_database_error op=read", exc_info=True)
    else:
        answered = True
    if not answered:
        logger.error("event=login_throttle_unavailable op=read")
        raise ThrottleUnavailable
    return counts


def is_login_blocked(ip, username):
    """Whether this IP or username used up its failures in this minute.

    Raises ThrottleUnavailable (a 503) when that cannot be known.
    """
    limit = settings.LOGIN_FAILURE_LIMIT
    return any(n >= limit for n in failure_counts(ip, username).values())


def record_login_failure(ip, username):
    """Count a failed sign-in; in the database when the cache is unreachable.

    Raises ThrottleUnavailable when it can be counted nowhere.
    """
    window = _window()
    cache_down = False
    for name in _names(ip, username):
        if not cache_down:
            key = _cache_key(name, window)
            try:
                try:
                    cache.add(key, 0, WINDOW_SECONDS + 1)
                    cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, WINDOW_SECONDS + 1)
                continue
            except Exception:  # noqa: BLE001 - any cache error: count in the database
                _cache_failed("write")
                cache_down = True  # do not wait for a second timeout
        try:
            _increment_in_database(name, window)
        except DatabaseError:
            logger.error("event=login_throttle_unavailable op=write", exc_info=True)
            raise ThrottleUnavailable from None


def _increment_in_database(name, window):
    from accounts.models import LoginFailure

    rows = LoginFailure.objects.filter(key=name, window=window)
    if not rows.update(count=F("count") + 1):
        try:
            with transaction.atomic():
                LoginFailure.objects.create(key=name, window=window, count=1)
        except IntegrityError:  # a concurrent first failure created the row
            rows.update(count=F("count") + 1)
    # Older minutes are never read again; a cheap indexed delete keeps the table small.
    LoginFailure.objects.filter(window__lt=window - 1).delete()


def client_ip(request):
    """Return the client address sign-in failures are counted against.

    With TRUSTED_PROXY_COUNT = 0, REMOTE_ADDR: X-Forwarded-For is whatever the
    client says. With N > 0, the N-th X-Forwarded-For entry from the right, the
    address the outermost trusted proxy saw: each proxy appends its peer, so
    entries left of it are the client's own and never chosen. A header with
    fewer than N entries, or an entry there that is no IP address, falls back to
    REMOTE_ADDR (the nearest proxy): such requests share one counter, which is
    stricter, never a way to pick a fresh one.
    """
    remote_addr = request.META.get("REMOTE_ADDR") or "unknown"
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote_addr
    entries = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if len(entries) < proxies:
        return remote_addr
    try:
        # Normalised, so one address spelled two ways is one counter.
        return str(ipaddress.ip_address(entries[-proxies].strip()))
    except ValueError:
        return remote_addr
