"""Structured logs: a request id on every line, JSON lines in production shape.

The id lives in a context variable, so every line logged while a request (or a
WebSocket connection) is being handled carries it, whichever module logs it.
"""

import logging
import os
import re
import time
from contextvars import ContextVar

import orjson

REQUEST_ID = ContextVar("request_id", default="-")
REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed into logs and headers, so only short plain tokens
# are trusted; anything else is replaced by a fresh id.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# Attributes every LogRecord has; anything else on a record came in `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
) | {"message", "asctime", "request_id", "taskName"}


def new_request_id():
    """Return a fresh random request id (16 hex digits)."""
    return os.urandom(8).hex()


def accept_request_id(candidate):
    """Return the candidate id if it is a sane token, else a fresh one."""
    if candidate and SANE_REQUEST_ID.fullmatch(candidate):
        return candidate
    return new_request_id()


def bind_connection_id(scope):
    """Bind a request id to the current WebSocket connection's task and return it.

    Honours an X-Request-ID header of the handshake; call first in connect().
    """
    candidate = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            break
    request_id = accept_request_id(candidate)
    REQUEST_ID.set(request_id)
    return request_id


class RequestIdMiddleware:
    """Bind a request id to every log line of a request and echo it in X-Request-ID."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = accept_request_id(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id
        # Left bound after the middleware returns, so Django's own lines about
        # the response (django.request) carry it too; unbind_request_id clears
        # it when the request finishes, as WSGI threads are reused.
        REQUEST_ID.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def unbind_request_id(**kwargs):
    """Clear the bound id (a request_started and request_finished receiver)."""
    REQUEST_ID.set("-")


class RequestIdFilter(logging.Filter):
    """Add the bound request id to each record as `request_id`."""

    def filter(self, record):
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line, with its `extra=` fields."""

    def format(self, record):
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()
