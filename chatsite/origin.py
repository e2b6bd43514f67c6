"""The Origin check in front of every socket (chatsite.asgi)."""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value):
    """Return (scheme, host, port) of an http(s) origin, or None for anything else."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def header(scope, name):
    """Return the first value of a handshake header as text, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def page_scheme(scope):
    """Return "https" when the socket came over TLS (wss, or the proxy says so), else "http"."""
    if scope.get("scheme") == "wss":
        return "https"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        # As Django's HttpRequest.is_secure(): "HTTP_X_FORWARDED_PROTO" is the
        # header x-forwarded-proto; only its first value counts.
        name, secure_value = proxy_header
        value = header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        if value is not None and value.split(",", 1)[0].strip() == secure_value:
            return "https"
    return "http"


def allowed_hosts():
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]  # Django's own default in DEBUG
    return hosts


def own_origin(scope, scheme, origin):
    """Return the origin the browser addressed this socket at: scheme://<Host header>.

    None when the Host is not one of ALLOWED_HOSTS. A handshake without a Host
    header (only in-process tests make one; HTTP/1.1 requires it) counts as
    addressed to the Origin's host on the scheme's default port.
    """
    host = header(scope, b"host")
    if host is None:
        host = origin[1] if ":" not in origin[1] else f"[{origin[1]}]"
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, allowed_hosts()):
        return None
    return parse_origin(f"{scheme}://{host}")


def is_trusted(origin):
    """Return True when an origin is one of CSRF_TRUSTED_ORIGINS (with Django's *. subdomains)."""
    scheme, host, port = origin
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*." in entry
        trusted = parse_origin(entry.replace("://*.", "://", 1) if wildcard else entry)
        if trusted is None or trusted[0] != scheme or trusted[2] != port:
            continue
        if host == trusted[1] or (wildcard and is_same_domain(host, "." + trusted[1])):
            return True
    return False


def origin_allowed(scope):
    """Return True when the socket's Origin is a page of this site (see StrictOriginValidator)."""
    value = header(scope, b"origin")
    origin = parse_origin(value) if value is not None else None
    if origin is None:
        return False
    if is_trusted(origin):
        return True
    scheme = page_scheme(scope)
    return origin[0] == scheme and origin == own_origin(scope, scheme, origin)


class StrictOriginValidator:
    """Accept a socket only from a page of this site: scheme, host and port must match.

    The Origin is accepted when it is
      * this socket's own origin as the browser addressed it: http for ws,
        https for wss (or a proxy's SECURE_PROXY_SSL_HEADER), and the Host
        header's host and port, the host one of ALLOWED_HOSTS. This covers one
        server for pages and sockets (runserver, one uvicorn) and a proxy that
        routes /ws/ on the page's own origin; or
      * one of CSRF_TRUSTED_ORIGINS (exact scheme, host and port; *.domain
        as Django reads it). A page served from another port or host than its
        sockets, as `make serve`'s HTTP server (PORT) with sockets on PORT+1
        (WS_PUBLIC_URL), must be listed there for the socket server.

    Anything else is refused before the handshake completes (HTTP 403): a page
    on another port of the same host (http://host:6666), the other scheme, and
    a missing or opaque ("null") Origin, which no browser page sends.
    """

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("StrictOriginValidator guards WebSocket connections only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
