"""Brotli and gzip for responses over COMPRESSION_MIN_SIZE (the guide's compression).

Negotiated by Accept-Encoding with Brotli preferred. Streaming responses (static
files from whitenoise, which are precompressed at collectstatic) and responses
that already carry a Content-Encoding are left alone. BREACH: pages carrying
the CSRF token are compressed too; Django masks the token differently on every
response, which is the mitigation Django documents, and session cookies never
appear in bodies.
"""

import gzip

import brotli
from django.conf import settings
from django.utils.cache import patch_vary_headers
from django.utils.regex_helper import _lazy_re_compile

_token = _lazy_re_compile(r"\s*([a-z*]+)\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*", 0)


def accepted_encodings(header):
    """Return the set of encodings the client accepts (q > 0)."""
    accepted = set()
    for part in header.lower().split(","):
        match = _token.fullmatch(part)
        if not match:
            continue
        name, q = match.group(1), match.group(2)
        try:
            if q is not None and float(q) <= 0:
                continue
        except ValueError:
            continue
        accepted.add(name)
    return accepted


def choose_encoding(header):
    accepted = accepted_encodings(header or "")
    if "br" in accepted:
        return "br"
    if "gzip" in accepted or "*" in accepted:
        return "gzip"
    return None


def compress(content, encoding, level):
    if encoding == "br":
        return brotli.compress(content, quality=level)
    return gzip.compress(content, compresslevel=level, mtime=0)


class CompressionMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not settings.ENABLE_COMPRESSION:
            return response
        if response.streaming or response.has_header("Content-Encoding"):
            return response
        content = response.content
        if len(content) < settings.COMPRESSION_MIN_SIZE:
            return response
        patch_vary_headers(response, ("Accept-Encoding",))
        encoding = choose_encoding(request.META.get("HTTP_ACCEPT_ENCODING"))
        if encoding is None:
            return response
        compressed = compress(content, encoding, settings.COMPRESSION_LEVEL)
        if len(compressed) >= len(content):
            return response
        response.content = compressed
        response["Content-Length"] = str(len(compressed))
        response["Content-Encoding"] = encoding
        etag = response.get("ETag")
        if etag and etag.startswith('"'):
            response["ETag"] = "W/" + etag
        return response
