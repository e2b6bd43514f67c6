"""The hot read, served before Django's request stack: a project's first history page.

Every open chat polls or reloads its first history page, so this one read gets a
path of its own at the WSGI level (docs/PERFORMANCE.md, "The hot path"): one
cache round trip fetches the session, the project's version, the cached body and
the caller's access entry (and the user, if this process has not kept it), and
when everything is there and valid the cached body is answered as it is. Anything
else — no session cookie, a session or user not in the cache, a session hash that
does not match, a non-member, a stale or missing body, a bad Host, another query
— is *declined*: the request goes to Django unchanged, which answers it (and
fills the cache for the next one). So the hot path only ever answers what the
Django path would answer from the same cache entries, with the same headers;
chatsite/tests/test_hotpath.py compares the two response by response.

What it checks on every request, as Django would: the Host against
ALLOWED_HOSTS, the session (read from the cache, so a sign-out is seen at once),
the session's backend and its hash against the user's password hash, the user
being active, and the caller's membership (the access entry that membership
changes drop). What it keeps in process memory: which user a session key
belongs to (a session key never changes hands: Django makes a new key at every
sign-in), users for USER_LOCAL_CACHE_SECONDS as accounts.backends does, and the
compressed forms of a body version.
"""

import re
import threading
import time

from django.conf import settings
from django.core.cache import caches
from django.http.request import split_domain_port, validate_host
from django.utils.crypto import constant_time_compare
from prometheus_client import Counter

from chatsite import metrics
from chatsite.cache import CACHE_ERRORS, CACHE_LOOKUPS
from chatsite.compression import choose_encoding, compress
from chatsite.logging import REQUEST_ID_HEADER, accept_request_id

HOT_PATH = Counter(
    "chat_hot_path_total", "First history page requests by hot-path outcome", ["result"]
)

PATH = re.compile(r"/api/projects/([1-9][0-9]{0,17})/messages")
QUERY = re.compile(r"(?:limit=([1-9][0-9]{0,2}))?")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200  # chat.api.MAX_CURSOR_LIMIT
SESSION_KEY_CHARS = re.compile(r"[a-z0-9]{8,64}")
_MAP_MAX = 50000
_COMPRESSED_MAX = 256


class Declined(Exception):
    """This request is not for the hot path; Django answers it."""


class HotHistory:
    """WSGI middleware answering cached first history pages; everything else passes."""

    def __init__(self, app):
        self.app = app
        self._session_users = {}  # session key -> user id
        self._compressed = {}  # (slot, version, encoding) -> bytes
        self._lock = threading.Lock()
        self._children = None
        self._session_prefix = session_cache_prefix()
        self._static_headers = None

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        match = PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or not settings.CACHE_HOT_READS:
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            status, headers, body = self.answer(environ, int(match.group(1)))
        except Declined as why:
            HOT_PATH.labels(str(why)).inc()
            return self.app(environ, start_response)
        start_response(status, headers)
        served, hit, duration, requests = self.children()
        served.inc()
        hit.inc()
        if settings.ENABLE_METRICS:
            duration.observe(time.perf_counter() - started)
            requests.inc()
        return [body]

    # --- the read --------------------------------------------------------------------

    def answer(self, environ, project_id):
        query = QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        if query is None:
            raise Declined("query")
        limit = int(query.group(1) or DEFAULT_LIMIT)
        if limit > MAX_LIMIT:
            raise Declined("query")
        secure = self.is_secure(environ)
        if settings.SECURE_SSL_REDIRECT and not secure:
            raise Declined("scheme")  # Django answers with its redirect
        host = environ.get("HTTP_HOST", "")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            raise Declined("host")
        session_key = self.session_key(environ)
        user_id = self._session_users.get(session_key)
        if user_id is None:
            user_id = self.learn_session_user(session_key)

        from accounts.backends import local_user, remember_user, user_cache_key
        from chat.selectors import history_slot
        from chatsite.cache import version_key
        from projects.access import access_key

        slot = history_slot(project_id, None, None, limit)
        vkey = version_key("project", project_id)
        akey = access_key(user_id, project_id)
        user = local_user(user_id)
        pairs = [(settings.SESSION_CACHE_ALIAS, self.session_cache_key(session_key)), ("default", vkey),
                 ("default", slot), ("default", akey)]
        if user is None:
            pairs.append(("default", user_cache_key(user_id)))
        found = fetch(pairs)

        session = found[0]
        if not isinstance(session, dict):
            raise Declined("session")
        if user is None:
            user = found[4]
            if user is None:
                raise Declined("user")
            remember_user(user_id, user)
        self.check_session(session, user, user_id)

        version, entry, role = found[1:4]
        if not isinstance(role, str) or role.startswith("!"):
            raise Declined("access")
        if version is None or entry is None or entry[0] != version:
            raise Declined("stale")
        return self.response(environ, slot, version, entry[1], secure)

    def is_secure(self, environ):
        """HttpRequest.is_secure: the proxy's header when configured, else the scheme."""
        header = settings.SECURE_PROXY_SSL_HEADER
        if header:
            name, value = header
            forwarded = environ.get(name)
            if forwarded is not None:
                return forwarded.split(",", 1)[0].strip() == value
        return environ.get("wsgi.url_scheme") == "https"

    def session_key(self, environ):
        cookie = environ.get("HTTP_COOKIE", "")
        name = settings.SESSION_COOKIE_NAME + "="
        for part in cookie.split(";"):
            part = part.strip()
            if part.startswith(name):
                key = part[len(name):]
                if SESSION_KEY_CHARS.fullmatch(key):
                    return key
                break
        raise Declined("anonymous")

    def session_cache_key(self, session_key):
        return self._session_prefix + session_key

    def learn_session_user(self, session_key):
        """The user id a session key belongs to (read once per process and key)."""
        from django.contrib.auth import SESSION_KEY

        session = fetch([(settings.SESSION_CACHE_ALIAS, self.session_cache_key(session_key))])[0]
        try:
            user_id = int(session[SESSION_KEY])
        except (TypeError, KeyError, ValueError):
            raise Declined("session") from None
        with self._lock:
            if len(self._session_users) >= _MAP_MAX:
                self._session_users.clear()
            self._session_users[session_key] = user_id
        return user_id

    def check_session(self, session, user, user_id):
        """What django.contrib.auth.get_user checks, else decline (Django decides)."""
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

        if str(session.get(SESSION_KEY)) != str(user_id) or user.pk != user_id:
            raise Declined("session")
        if session.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
            raise Declined("session")
        if not user.is_active:
            raise Declined("user")
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash or not constant_time_compare(session_hash,
                                                         user.get_session_auth_hash()):
            raise Declined("session")  # fallback keys and flushing: Django's job

    # --- the answer ------------------------------------------------------------------

    def response(self, environ, slot, version, body, secure):
        headers = list(self.static_headers())
        if secure and settings.SECURE_HSTS_SECONDS:
            headers.append(("Strict-Transport-Security", self.hsts()))
        if len(body) >= settings.COMPRESSION_MIN_SIZE and settings.ENABLE_COMPRESSION:
            headers.append(("Vary", "Cookie, Accept-Encoding"))
            encoding = choose_encoding(environ.get("HTTP_ACCEPT_ENCODING"))
            if encoding is not None:
                packed = self.compressed(slot, version, encoding, body)
                if len(packed) < len(body):
                    body = packed
                    headers.append(("Content-Encoding", encoding))
        else:
            headers.append(("Vary", "Cookie"))
        headers.append(("Content-Length", str(len(body))))
        headers.append((REQUEST_ID_HEADER, accept_request_id(environ.get("HTTP_X_REQUEST_ID"))))
        return "200 OK", headers, body

    def hsts(self):
        """SecurityMiddleware's Strict-Transport-Security value."""
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        return value

    def compressed(self, slot, version, encoding, body):
        key = (slot, version, encoding)
        packed = self._compressed.get(key)
        if packed is None:
            packed = compress(body, encoding, settings.COMPRESSION_LEVEL)
            with self._lock:
                if len(self._compressed) >= _COMPRESSED_MAX:
                    self._compressed.clear()
                self._compressed[key] = packed
        return packed

    def static_headers(self):
        """The headers Django's middleware puts on this JSON response (settings-derived)."""
        if self._static_headers is None:
            from chat.csp import POLICY

            headers = [("Content-Type", "application/json")]
            if settings.X_FRAME_OPTIONS:
                headers.append(("X-Frame-Options", settings.X_FRAME_OPTIONS))
            headers.append(("Content-Security-Policy", POLICY))
            if settings.SECURE_CONTENT_TYPE_NOSNIFF:
                headers.append(("X-Content-Type-Options", "nosniff"))
            if settings.SECURE_REFERRER_POLICY:
                headers.append(("Referrer-Policy", settings.SECURE_REFERRER_POLICY))
            if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
                headers.append(("Cross-Origin-Opener-Policy",
                                settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
            self._static_headers = headers
        return self._static_headers

    def children(self):
        """The labelled metrics a served request counts in (looked up once)."""
        if self._children is None:
            from django.urls import resolve

            endpoint = metrics.readable_route(resolve("/api/projects/1/messages").route)
            self._children = (
                HOT_PATH.labels("served"),
                CACHE_LOOKUPS.labels("history", "hit"),
                metrics.HTTP_REQUEST_DURATION.labels("GET", endpoint),
                metrics.HTTP_REQUESTS_TOTAL.labels("GET", endpoint, "200"),
            )
        return self._children


def fetch(pairs):
    """[(alias, key)] -> [value or None], in one Redis round trip when the aliases
    share one Redis server (production shape), else one get_many per alias."""
    aliases = {alias for alias, _ in pairs}
    try:
        if all(_is_redis(a) for a in aliases) and len({_location(a) for a in aliases}) == 1:
            from django_redis import get_redis_connection

            raw = get_redis_connection(pairs[0][0]).mget(
                [caches[alias].make_key(key) for alias, key in pairs])
            return [None if value is None else caches[alias].client.decode(value)
                    for (alias, _), value in zip(pairs, raw)]
        found = {a: caches[a].get_many([k for alias, k in pairs if alias == a])
                 for a in aliases}
        return [found[alias].get(key) for alias, key in pairs]
    except Exception:  # noqa: BLE001 - a cache outage: Django's path degrades gracefully
        CACHE_ERRORS.labels("hot_get_many").inc()
        raise Declined("cache_error") from None


def _is_redis(alias):
    return settings.CACHES[alias]["BACKEND"] == "django_redis.cache.RedisCache"


def _location(alias):
    return str(settings.CACHES[alias]["LOCATION"])


def session_cache_prefix():
    """The cache key prefix of the session engine's entries, or None when the
    engine does not keep sessions in the cache (then there is no hot path)."""
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore
    return getattr(store, "cache_key_prefix", None)


def wrap(app):
    """The WSGI app with the hot path in front; left out with HOT_PATH=false or a
    session engine that keeps no sessions in the cache."""
    return HotHistory(app) if settings.HOT_PATH and session_cache_prefix() else app

