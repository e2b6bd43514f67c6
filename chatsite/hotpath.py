"""The hot reads, served before Django's request stack: a project's first history
page (in both shapes: the cursor history and the guide's page-numbered one) and
the caller's project list.

Every open chat polls or reloads its first history page and its project list
(with the unread counts), so these reads get a path of their own at the WSGI
level (docs/PERFORMANCE.md, "The hot path"): one cache round trip fetches the
session (and the user, if this process has not kept it) together with what the
read needs.

- First history page: the project's version, the cached body (a
  chat.history_cache.CachedPage) and the caller's access entry; when everything
  is there and valid the cached body is answered as it is. A stale or missing
  body (or one of a shape from before a deploy) is declined. Two shapes, one
  code path (cached_page), each from its own slot: the cursor history
  (`/api/projects/N/messages`, no query or `limit=<default>`: history_slot) and
  the guide's page-numbered history (`/api/messages?project_id=N`, with at most
  `page=1` and `per_page=<default>`: message_page_slot, whose body carries the
  project's `total`; every send, edit and delete bumps the version it is tagged
  with, so a stale `total` is declined, never served). Other pages and sizes,
  and `/api/messages` without project_id (the all-messages view), are Django's.
- Project list: projects.selectors.ProjectListRead's keys (the user's
  version and memberships, the listed projects' versions and reset marks); the
  list is assembled from them and this process's project cards
  (projects.list_cache), and cards a change retired are refreshed from the
  database here: under writes most reads find one, so declining would send
  them through Django's stack. A database outage gets the API's 503
  (chatsite.api.on_database_down), Retry-After included.

Anything else — no session cookie, a session or user not in the cache, a session
hash that does not match, a non-member, a bad Host, another query — is
*declined*: the request goes to Django unchanged, which answers it (and fills
the cache for the next one). So the hot path only ever answers what the Django
path would answer, with the same headers; chatsite/tests/test_hotpath.py
compares the two response by response.

What it checks on every request, as Django would: the Host against
ALLOWED_HOSTS, the session (read from the cache, so a sign-out is seen at once),
the session's backend and its hash against the user's password hash, the user
being active, and for a history page the caller's membership (the access entry
that membership changes drop; the project list is the caller's own). What it
keeps in process memory: which user a session key belongs to (a session key
never changes hands: Django makes a new key at every sign-in), users under
their stamp as accounts.backends keeps them (the stamp is read in the same
round trip, so a revocation in any process is seen at once), the session auth
hash of a password hash, and the compressed forms of a body version.
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
from chatsite.cache import CACHE_ERRORS, CACHE_LOOKUPS, is_redis_cache
from chatsite.compression import choose_encoding, compress
from chatsite.logging import REQUEST_ID_HEADER, accept_request_id
from chatsite.pagination import DEFAULT_LIMIT, DEFAULT_PER_PAGE, MAX_LIMIT, MAX_PER_PAGE

HOT_PATH = Counter(
    "chat_hot_path_total", "Hot-read requests (history pages, project list) by outcome",
    ["result"],
)

PATH = re.compile(r"/api/projects/([1-9][0-9]{0,17})/messages")
LIST_PATH = "/api/projects"
MESSAGE_PAGE_PATH = "/api/messages"
QUERY = re.compile(r"(?:limit=([1-9][0-9]{0,2}))?")
LIST_QUERY_PART = re.compile(r"(page|per_page)=([1-9][0-9]{0,8})")
MESSAGE_PAGE_QUERY_PART = re.compile(r"(project_id|page|per_page)=([1-9][0-9]{0,17})")
# The metrics a served route counts in: the Django route it stands for, and its
# cache-hit label (chat.selectors names the same lookups; None: counted by the read).
ROUTE_METRICS = {
    "history": ("/api/projects/1/messages", "history"),
    "message_page": (MESSAGE_PAGE_PATH, "message_page"),
    "project_list": (LIST_PATH, None),
}
SESSION_KEY_CHARS = re.compile(r"[a-z0-9]{8,64}")
_MAP_MAX = 50000
_COMPRESSED_MAX = 256


class Declined(Exception):
    """This request is not for the hot path; Django answers it."""


class HotReads:
    """WSGI middleware answering the hot reads; everything else passes to Django."""

    def __init__(self, app):
        self.app = app
        self._session_users = {}  # session key -> user id
        self._auth_hashes = {}  # (user id, password hash) -> session auth hash
        self._compressed = {}  # (slot, version, encoding) -> bytes
        self._lock = threading.Lock()
        self._children = {}
        self._session_prefix = session_cache_prefix()
        self._static_headers = None

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "GET" or not settings.CACHE_HOT_READS:
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path == LIST_PATH:
            route, args = self.project_list, ()
        elif path == MESSAGE_PAGE_PATH:
            route, args = self.message_page, ()
        else:
            match = PATH.fullmatch(path)
            if match is None:
                return self.app(environ, start_response)
            route, args = self.history, (int(match.group(1)),)
        started = time.perf_counter()
        try:
            status, headers, body = route(environ, *args)
        except Declined as why:
            HOT_PATH.labels(str(why)).inc()
            return self.app(environ, start_response)
        start_response(status, headers)
        served, hit, duration, requests = self.children(route.__name__, status)
        served.inc()
        if hit is not None:
            hit.inc()
        if settings.ENABLE_METRICS:
            duration.observe(time.perf_counter() - started)
            requests.inc()
        return [body]

    # --- the reads -------------------------------------------------------------------

    def history(self, environ, project_id):
        query = QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        if query is None:
            raise Declined("query")
        limit = int(query.group(1) or DEFAULT_LIMIT)
        if limit > MAX_LIMIT:
            raise Declined("query")
        from chat.history_cache import history_slot

        return self.cached_page(environ, project_id,
                                history_slot(project_id, None, None, limit))

    def message_page(self, environ):
        """The guide's page-numbered first page, `/api/messages?project_id=N`: in the
        forms whose body is the cached slot (chat.selectors.get_message_page_body)."""
        from chat.history_cache import is_cached_message_page, message_page_slot

        found = self.query_numbers(environ.get("QUERY_STRING", ""), MESSAGE_PAGE_QUERY_PART)
        project_id = found.get("project_id")
        page = found.get("page", 1)
        per_page = min(found.get("per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
        if project_id is None or not is_cached_message_page(page, per_page):
            raise Declined("query")  # all messages, another page or size: Django's
        return self.cached_page(environ, project_id,
                                message_page_slot(project_id, page, per_page))

    def cached_page(self, environ, project_id, slot):
        """A project's cached page in `slot`, answered when the project's version,
        the slot and the caller's access entry (one round trip with the session)
        say it is current and the caller a member; else declined."""
        from chat.history_cache import current_page
        from chatsite.cache import is_bump_owed, version_key
        from projects.access import access_key

        secure = self.validate_request(environ)
        session_key, user_id = self.session_user(environ)
        _user, (version, entry, role) = self.fetch_with_session(
            session_key, user_id, [version_key("project", project_id), slot,
                                   access_key(user_id, project_id)])
        if not isinstance(role, str) or role.startswith("!"):
            raise Declined("access")
        if is_bump_owed("project", project_id):
            raise Declined("owed")  # the cached version may be behind: Django reads
        page = None if version is None else current_page(entry, version)
        if page is None:
            raise Declined("stale")
        return self.response(environ, page.body, secure, packed_as=(slot, version))

    def project_list(self, environ):
        from django.core import signals
        from django.db import OperationalError

        from projects.selectors import ProjectListRead, is_cached_list_form

        page, per_page = self.list_query(environ.get("QUERY_STRING", ""))
        if not is_cached_list_form(page, per_page):
            raise Declined("query")  # an uncached form: Django reads it
        secure = self.validate_request(environ)
        session_key, user_id = self.session_user(environ)
        read = ProjectListRead(user_id, page, per_page)
        user, values = self.fetch_with_session(session_key, user_id, read.keys)
        body = read.current(values)
        if body is not None:
            return self.response(environ, body, secure)
        # A miss reads the database: as a request to Django would, with its
        # connection given back (to the pool) when the request ends.
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            body = read.body(user, values)
        except OperationalError as exc:
            return self.unavailable(environ, exc, secure)
        finally:
            signals.request_finished.send(sender=self.__class__)
        return self.response(environ, body, secure)

    def list_query(self, query):
        """page and per_page as projects.api.page_params reads them, in their plain
        form (anything else is Django's to answer)."""
        found = self.query_numbers(query, LIST_QUERY_PART)
        return (found.get("page", 1),
                min(found.get("per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE))

    def query_numbers(self, query, part):
        """{name: number} of a query made only of `part`s (a name and a plain
        positive number), each name at most once; anything else is declined."""
        found = {}
        for piece in query.split("&") if query else ():
            match = part.fullmatch(piece)
            if match is None or match.group(1) in found:
                raise Declined("query")
            found[match.group(1)] = int(match.group(2))
        return found

    # --- the caller ------------------------------------------------------------------

    def validate_request(self, environ):
        """Django's checks before any view: the scheme and the Host. Returns is_secure."""
        secure = self.is_secure(environ)
        if settings.SECURE_SSL_REDIRECT and not secure:
            raise Declined("scheme")  # Django answers with its redirect
        host = environ.get("HTTP_HOST", "")
        domain, _port = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            raise Declined("host")
        return secure

    def session_user(self, environ):
        """(session key, user id) of the request's session cookie, else declined."""
        session_key = self.session_key(environ)
        user_id = self._session_users.get(session_key)
        if user_id is None:
            user_id = self.learn_session_user(session_key)
        return session_key, user_id

    def fetch_with_session(self, session_key, user_id, keys):
        """One round trip for the session, the user's stamp, the user (unless kept)
        and `keys` of the default cache; checks the session as Django would.
        Returns (user, values)."""
        from accounts.backends import (
            keeps_user,
            local_user,
            remember_user,
            user_cache_key,
            user_stamp_key,
        )

        kept = keeps_user(user_id)
        pairs = [(settings.SESSION_CACHE_ALIAS, self.session_cache_key(session_key)),
                 *(("default", key) for key in keys), ("default", user_stamp_key(user_id))]
        if not kept:
            pairs.append(("default", user_cache_key(user_id)))
        found = fetch(pairs)
        session = found[0]
        if not isinstance(session, dict):
            raise Declined("session")
        stamp = found[1 + len(keys)]
        if stamp is None:
            raise Declined("user")  # Django's path makes one
        if kept:
            user = local_user(user_id, stamp)
            if user is None:
                raise Declined("user")  # the stamp moved: Django reads the user again
        else:
            user = found[-1]
            if user is None or isinstance(user, str):  # missing, or retired by a revocation
                raise Declined("user")
            remember_user(user_id, stamp, user)
        self.validate_session(session, user, user_id)
        return user, found[1:1 + len(keys)]

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
        """The session cookie's value; two cookies of that name are Django's to
        answer (it reads the last, and so do Channels' sockets: one reading for
        every path)."""
        cookie = environ.get("HTTP_COOKIE", "")
        name = settings.SESSION_COOKIE_NAME + "="
        key = None
        for part in cookie.split(";"):
            part = part.strip()
            if part.startswith(name):
                if key is not None:
                    raise Declined("cookies")
                key = part[len(name):]
        if key is not None and SESSION_KEY_CHARS.fullmatch(key):
            return key
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

    def validate_session(self, session, user, user_id):
        """What django.contrib.auth.get_user checks, else decline (Django decides)."""
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

        if str(session.get(SESSION_KEY)) != str(user_id) or user.pk != user_id:
            raise Declined("session")
        if session.get(BACKEND_SESSION_KEY) not in settings.AUTHENTICATION_BACKENDS:
            raise Declined("session")
        if not user.is_active:
            raise Declined("user")
        session_hash = session.get(HASH_SESSION_KEY)
        if not session_hash or not constant_time_compare(session_hash, self.auth_hash(user)):
            raise Declined("session")  # fallback keys and flushing: Django's job

    def auth_hash(self, user):
        """user.get_session_auth_hash() (an HMAC of the password hash), kept per
        password hash: a changed password is a new key."""
        key = (user.pk, user.password)
        found = self._auth_hashes.get(key)
        if found is None:
            found = user.get_session_auth_hash()
            with self._lock:
                if len(self._auth_hashes) >= _MAP_MAX:
                    self._auth_hashes.clear()
                self._auth_hashes[key] = found
        return found

    # --- the answer ------------------------------------------------------------------

    def response(self, environ, body, secure, *, packed_as=None, status="200 OK",
                 content_type="application/json"):
        """Django's answer with this JSON body: its headers, compressed as
        CompressionMiddleware would (the compressed forms of a cached body version
        are kept: `packed_as` = (slot, version))."""
        headers = [("Content-Type", content_type), *self.static_headers()]
        if secure and settings.SECURE_HSTS_SECONDS:
            headers.append(("Strict-Transport-Security", self.hsts()))
        if len(body) >= settings.COMPRESSION_MIN_SIZE and settings.ENABLE_COMPRESSION:
            headers.append(("Vary", "Cookie, Accept-Encoding"))
            encoding = choose_encoding(environ.get("HTTP_ACCEPT_ENCODING"))
            if encoding is not None:
                if packed_as is None:
                    packed = compress(body, encoding, settings.COMPRESSION_LEVEL)
                else:
                    packed = self.compressed(*packed_as, encoding, body)
                if len(packed) < len(body):
                    body = packed
                    headers.append(("Content-Encoding", encoding))
        else:
            headers.append(("Vary", "Cookie"))
        headers.append(("Content-Length", str(len(body))))
        headers.append((REQUEST_ID_HEADER, accept_request_id(environ.get("HTTP_X_REQUEST_ID"))))
        return status, headers, body

    def unavailable(self, environ, exc, secure):
        """The API's 503 for a database outage (chatsite.api.on_database_down)."""
        import orjson

        from chatsite.api import DATABASE_DOWN, DATABASE_RETRY_AFTER, error_body, log_database_down

        log_database_down(environ.get("PATH_INFO", ""), exc)
        status, headers, body = self.response(
            environ, orjson.dumps(error_body(*DATABASE_DOWN)), secure,
            status="503 Service Unavailable", content_type="application/json; charset=utf-8")
        headers.append(("Retry-After", DATABASE_RETRY_AFTER))
        return status, headers, body

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
        """The headers Django's middleware puts on a JSON response (settings-derived)."""
        if self._static_headers is None:
            from chat.csp import POLICY

            headers = []
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

    def children(self, route, status):
        """The labelled metrics an answered request counts in (looked up once)."""
        children = self._children.get((route, status))
        if children is None:
            from django.urls import resolve

            path, hit_label = ROUTE_METRICS[route]
            endpoint = metrics.readable_route(resolve(path).route)
            hit = None if hit_label is None else CACHE_LOOKUPS.labels(hit_label, "hit")
            children = self._children[(route, status)] = (
                HOT_PATH.labels("served"),
                hit,  # the project list counts its own hits and misses
                metrics.HTTP_REQUEST_DURATION.labels("GET", endpoint),
                metrics.HTTP_REQUESTS_TOTAL.labels("GET", endpoint, status.split()[0]),
            )
        return children


def fetch(pairs):
    """[(alias, key)] -> [value or None], in one Redis round trip when the aliases
    share one Redis server (production shape), else one get_many per alias. On a
    Redis Cluster the keys span hash slots: one MGET per slot, sent to every
    shard at once (chatsite.scaleout.redis_client.multi_get)."""
    aliases = {alias for alias, _ in pairs}
    try:
        if (all(is_redis_cache(a) for a in aliases)
                and len({_location(a) for a in aliases}) == 1):
            from django_redis import get_redis_connection

            from chatsite.scaleout.redis_client import multi_get

            raw = multi_get(get_redis_connection(pairs[0][0]),
                            [caches[alias].make_key(key) for alias, key in pairs])
            return [None if value is None else caches[alias].client.decode(value)
                    for (alias, _), value in zip(pairs, raw)]
        found = {a: caches[a].get_many([k for alias, k in pairs if alias == a])
                 for a in aliases}
        return [found[alias].get(key) for alias, key in pairs]
    except Exception:  # noqa: BLE001 - a cache outage: Django's path degrades gracefully
        CACHE_ERRORS.labels("hot_get_many").inc()
        raise Declined("cache_error") from None


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
    return HotReads(app) if settings.HOT_PATH and session_cache_prefix() else app

