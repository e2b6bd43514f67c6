"""The JSON API: one NinjaAPI, orjson both ways, one error shape."""

import logging

import orjson
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.renderers import BaseRenderer

from chatsite.errors import ChatError

logger = logging.getLogger(__name__)


class ORJSONRenderer(BaseRenderer):
    media_type = "application/json"

    def render(self, request, data, *, response_status):
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


class ORJSONParser(Parser):
    def parse_body(self, request):
        return orjson.loads(request.body)


api = NinjaAPI(
    title="Chat API",
    version="1.0",
    renderer=ORJSONRenderer(),
    parser=ORJSONParser(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def error_response(request, status, code, message, fields=None, headers=None):
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    response = api.create_response(request, body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


@api.exception_handler(ChatError)
def on_chat_error(request, exc):
    return error_response(request, exc.status, exc.code, exc.message, exc.fields, exc.headers)


@api.exception_handler(AuthenticationError)
def on_not_authenticated(request, exc):
    return error_response(request, 401, "not_authenticated", "Sign in first.")


@api.exception_handler(HttpError)
def on_http_error(request, exc):
    if exc.status_code == 403 and "csrf" in str(exc).lower():
        return error_response(
            request, 403, "csrf_failed",
            "CSRF check failed: send the X-CSRFToken header (GET /api/auth/csrf).",
        )
    code = {400: "bad_request", 401: "not_authenticated", 403: "forbidden",
            404: "not_found", 413: "too_large", 429: "rate_limited"}.get(
        exc.status_code, "error")
    return error_response(request, exc.status_code, code, str(exc))


@api.exception_handler(ValidationError)
def on_validation_error(request, exc):
    fields = {}
    malformed = False
    for err in exc.errors:
        loc = [str(part) for part in err.get("loc", ())]
        if loc and loc[0] in ("query", "path"):
            malformed = True
        if err.get("type") in ("json_invalid", "model_attributes_type", "dict_type"):
            malformed = True
        parts = loc[1:]
        if parts and parts[0] == "payload":
            parts = parts[1:]
        name = ".".join(parts) or (loc[0] if loc else "body")
        fields[name] = err.get("msg", "invalid")
    if malformed:
        return error_response(request, 400, "bad_request", "The request is malformed.", fields)
    return error_response(request, 422, "invalid", "The request is not valid.", fields)


@api.exception_handler(Http404)
def on_404(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(RequestDataTooBig)
def on_body_too_big(request, exc):
    # Raised when a body over DATA_UPLOAD_MAX_MEMORY_SIZE is read; not a 500.
    return error_response(request, 413, "too_large", "The request body is too large.")


@api.exception_handler(OperationalError)
def on_database_down(request, exc):
    logger.error("event=database_unavailable path=%s error=%s", request.path, exc)
    return error_response(
        request, 503, "unavailable", "The database is unavailable; try again shortly.",
        headers={"Retry-After": "5"},
    )


@api.exception_handler(Exception)
def on_unexpected(request, exc):
    logger.exception("event=api_error path=%s", request.path)
    return error_response(request, 500, "internal", "Something went wrong on our side.")


# Numbers the database compares or offsets by must fit a signed 64-bit integer.
MAX_QUERY_INT = 2**63 - 1


def parse_positive_int(value, name, *, default=None, minimum=1, maximum=MAX_QUERY_INT):
    """Parse a query number in [minimum, maximum] or raise a 400 naming the parameter."""
    from chatsite.errors import BadRequest

    if value is None or value == "":
        if default is None:
            raise BadRequest(f"{name} is required.", fields={name: "required"})
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number.", fields={name: "not_a_number"})
    if number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}.", fields={name: "too_small"})
    if number > maximum:
        raise BadRequest(f"{name} must be at most {maximum}.", fields={name: "too_large"})
    return number


api.add_router("/auth", "accounts.api.router")
api.add_router("/projects", "projects.api.router")
api.add_router("", "chat.api.router")
