"""The load test's cookie jar: Secure cookies go back to loopback over plain http, as browsers send them.

In production shape the server marks its cookies `Secure` (SESSION_COOKIE_SECURE,
CSRF_COOKIE_SECURE). Browsers treat http://127.0.0.1, http://localhost and
http://[::1] as secure contexts and send such cookies back there; the standard
library's jar (and so requests' and geventhttpclient's) sends them over https
only. A generator on loopback then signs in without its csrftoken cookie and
gets "CSRF check failed". `LoopbackSecureCookiePolicy` sends Secure cookies to
https and wss, and to loopback hosts over http or ws -- never to any other host
over plain http.

No Django here: the locustfile imports this module in locust's own process,
and `manage.py loadtest` uses the same policy for its sign-in check.
"""

import ipaddress
import time
import urllib.request
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit


def is_loopback(host):
    """Whether host (a name or address, IPv6 with or without brackets) is this machine."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackSecureCookiePolicy(DefaultCookiePolicy):
    """The standard policy, except that Secure cookies also go to loopback over http/ws."""

    def return_ok_secure(self, cookie, request):
        if cookie.secure and request.type not in self.secure_protocols:
            return is_loopback(urlsplit(request.get_full_url()).hostname)
        return True


class SteadyCookieJar(CookieJar):
    """A load user's cookie jar that builds its Cookie header once per host.

    The standard library's jar matches every cookie against every request
    (domain, path, expiry, Secure): 8 % of this generator's samples at 1,000
    requests/s went there. A load user talks to one or two hosts (the HTTP
    server, the socket server) and its cookies (session, CSRF) are site-wide,
    so the header is matched once per scheme and host -- by the standard
    matching, under LoopbackSecureCookiePolicy -- and kept until a response
    sets a cookie; the jar itself still takes every Set-Cookie.
    """

    def __init__(self):
        super().__init__(policy=LoopbackSecureCookiePolicy())
        self._headers = {}  # (scheme, host with port) -> Cookie header

    def _header_for(self, request):
        key = (request.type, request.host)
        header = self._headers.get(key)
        if header is None:
            with self._cookies_lock:
                self._policy._now = self._now = int(time.time())
                header = "; ".join(self._cookie_attrs(self._cookies_for_request(request)))
            self._headers[key] = header
        return header

    def header(self, url):
        """The Cookie header this jar sends to url (an http(s) or ws(s) URL)."""
        return self._header_for(urllib.request.Request(url))

    def add_cookie_header(self, request):
        header = self._header_for(request)
        if header and not request.has_header("Cookie"):
            request.add_unredirected_header("Cookie", header)

    def extract_cookies(self, response, request):
        if response.headers.get("Set-Cookie") is not None:
            super().extract_cookies(response, request)
            self._headers.clear()

    def set_cookie(self, cookie):
        super().set_cookie(cookie)
        self._headers.clear()

    def clear(self, domain=None, path=None, name=None):
        super().clear(domain, path, name)
        self._headers.clear()
