"""The JSON API: one NinjaAPI, orjson both ways, one error shape."""

import logging
from decimal import Decimal
from urllib.parse import unquote_to_bytes

import orjson
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import Http404, RawPostDataException
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.renderers import BaseRenderer

from chatsite.errors import ChatError
from chatsite.pagination import DEFAULT_PER_PAGE, MAX_ID, MAX_PER_PAGE

logger = logging.getLogger(__name__)


class ORJSONRenderer(BaseRenderer):
    media_type = "application/json"

    def render(self, request, data, *, response_status):
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


class ORJSONParser(Parser):
    def parse_body(self, request):
        return orjson.loads(request.body)


# --- what the schema documents (OpenAPI only: nothing here validates at run time) ---


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties, required=None, **extra):
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, **extra}


INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_INT = {"type": ["integer", "null"]}

# The bodies the views answer with (chat/serializers.py), as components.
COMPONENT_SCHEMAS = {
    "Error": _object({"error": _object({
        "code": {"type": "string", "minLength": 1},
        "message": {"type": "string", "minLength": 1},
        "fields": {"type": "object", "additionalProperties": STR},
    }, additionalProperties=False)}, additionalProperties=False),
    "User": _object({"id": INT, "username": STR}),
    "UserBody": _object({"user": ref("User")}),
    "CsrfToken": _object({"csrf_token": STR}),
    "Project": _object(
        {"id": INT, "name": STR, "kind": {"type": "string", "enum": ["project", "dm"]},
         "description": STR, "owner_id": INT, "is_private": BOOL,
         "is_active": BOOL, "created_at": TIME, "seq": INT, "role": STR,
         "last_read_seq": INT, "unread_count": INT, "mention_count": INT,
         "member_count": INT},
        required=["id", "name", "kind", "description", "owner_id", "is_private",
                  "is_active", "created_at", "seq"]),
    "ProjectPage": _object({"items": {"type": "array", "items": ref("Project")},
                            "total": INT, "page": INT, "per_page": INT,
                            "has_next": BOOL, "has_prev": BOOL}),
    "Membership": _object({"project_id": INT, "user": ref("User"), "role": STR}),
    "ReadMark": _object({"project_id": INT, "last_read_seq": INT}),
    "Message": _object({
        "id": INT, "project_id": INT, "seq": INT, "changed_seq": INT, "user": ref("User"),
        "content": STR, "content_html": STR, "reactions": {"type": "array", "items": ref(
            "Reaction")}, "attachments": {"type": "array", "items": ref("Upload")},
        "created_at": TIME, "edited_at": {"type": ["string", "null"]},
        "deleted": BOOL, "client_msg_id": {"type": ["string", "null"]},
    }),
    # One emoji's reactions on a message (chat.reactions): user_ids are the first 50.
    "Reaction": _object({"emoji": STR, "count": INT,
                         "user_ids": {"type": "array", "items": INT, "maxItems": 50}}),
    "MessagePage": _object({"items": {"type": "array", "items": ref("Message")},
                            "total": INT, "page": INT, "per_page": INT,
                            "has_next": BOOL, "has_prev": BOOL}),
    "MessageCursor": _object({"items": {"type": "array", "items": ref("Message")},
                              "has_more": BOOL, "next_cursor": NULLABLE_INT}),
    "Mention": {"allOf": [ref("Message"), _object({"mention_id": INT, "project_name": STR})]},
    "MentionCursor": _object({"items": {"type": "array", "items": ref("Mention")},
                              "has_more": BOOL, "next_cursor": NULLABLE_INT}),
    # chat.uploads.serialize_upload; the last three are null for non-images.
    "Upload": _object({"id": INT, "name": STR, "size": INT, "content_type": STR, "url": STR,
                       "thumbnail_url": {"type": ["string", "null"]},
                       "width": NULLABLE_INT, "height": NULLABLE_INT}),
}

ERROR_STATUSES = {
    400: "Malformed: not JSON, or a query, path or body value of the wrong kind.",
    401: "Not signed in.",
    403: "Not allowed (includes csrf_failed for an unsafe method without X-CSRFToken).",
    404: "No such object, or not visible to the caller.",
    409: "Conflict with the current state.",
    413: "The request body is too large.",
    422: "Well-formed but not valid (a rule of the domain).",
    429: "Rate-limited; see Retry-After.",
    503: "A dependency (the database) is unavailable; see Retry-After.",
}
SUCCESS_DESCRIPTIONS = {200: "OK", 201: "Created", 204: "No Content"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "required": True,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# Every request may meet an unavailable database.
ALWAYS = (503,)


def query_param(name, schema, description, required=False):
    param = {"in": "query", "name": name, "required": required, "schema": schema,
             "description": description}
    if not required:
        param["allowEmptyValue"] = True  # parse_positive_int reads "" as absent
    return param


def page_query(*extra):
    return [*extra,
            query_param("page", {"type": "integer", "minimum": 1, "maximum": 10**9},
                        "Page number, from 1."),
            query_param("per_page", {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                        f"Items a page (default {DEFAULT_PER_PAGE}; above {MAX_PER_PAGE} "
                        f"is clamped to {MAX_PER_PAGE}).")]


def documented(success, errors=(), query=()):
    """openapi_extra of an operation: its success bodies, error statuses and query parameters.

    success maps a status to a component name (None: no body); every status in
    errors answers the Error component. The views read their query parameters
    themselves (parse_positive_int), so the schema names them here.
    """
    responses = {}
    for status, name in success.items():
        entry = {"description": SUCCESS_DESCRIPTIONS[status]}
        if name:
            entry["content"] = {"application/json": {"schema": ref(name)}}
        responses[str(status)] = entry
    for status in sorted({*errors, *ALWAYS}):
        entry = {"description": ERROR_STATUSES[status],
                 "content": {"application/json": {"schema": ref("Error")}}}
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        responses[str(status)] = entry
    extra = {"responses": responses}
    if query:
        extra["parameters"] = list(query)
    return extra


# Statuses shared by kinds of operation.
BODY_ERRORS = (400, 413, 422)  # a JSON body: malformed, too large, invalid
SIGNED_IN = (401,)
UNSAFE = (401, 403)  # signed in, with the CSRF token


class ChatAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs):
        schema = super().get_openapi_schema(**kwargs)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENT_SCHEMAS)
        return schema


api = ChatAPI(
    title="Chat API",
    version="1.0",
    renderer=ORJSONRenderer(),
    parser=ORJSONParser(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def error_body(code, message, fields=None):
    """The one JSON error shape of the API."""
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def error_response(request, status, code, message, fields=None, headers=None):
    response = api.create_response(request, error_body(code, message, fields), status=status)
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


@api.exception_handler(MultiPartParserError)
@api.exception_handler(RawPostDataException)
def on_unreadable_body(request, exc):
    # Found by schemathesis: a multipart Content-Type without a valid boundary
    # made the CSRF check's request.POST raise, and a multipart body read as
    # form data cannot be read again as JSON. Bad input, not a 500.
    return error_response(
        request, 400, "bad_request", "The request body cannot be read: send JSON.",
        {"body": "unreadable"},
    )


DATABASE_DOWN = ("unavailable", "The database is unavailable; try again shortly.")
DATABASE_RETRY_AFTER = "5"


def log_database_down(path, exc):
    logger.error("event=database_unavailable path=%s error=%s", path, exc)


@api.exception_handler(OperationalError)
def on_database_down(request, exc):
    log_database_down(request.path, exc)
    return error_response(request, 503, *DATABASE_DOWN,
                          headers={"Retry-After": DATABASE_RETRY_AFTER})


@api.exception_handler(Exception)
def on_unexpected(request, exc):
    logger.exception("event=api_error path=%s", request.path)
    return error_response(request, 500, "internal", "Something went wrong on our side.")


def validate_query_is_utf8(request):
    """Raise a 400 when the raw query string is not UTF-8 once percent-decoded.

    Django decodes it leniently (U+FFFD for bad bytes); a text parameter such
    as search's q would then be used as garbled text instead of refused.
    """
    from chatsite.errors import BadRequest

    raw = request.META.get("QUERY_STRING", "")
    try:
        unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeEncodeError:
        return  # already text (not from a PEP 3333 server): nothing undecodable
    except UnicodeDecodeError:
        raise BadRequest("The query string is not valid UTF-8.", fields={"query": "not_utf8"})


# Numbers the database compares or offsets by must fit a signed 64-bit integer.


def parse_positive_int(value, name, *, default=None, minimum=1, maximum=MAX_ID):
    """Parse a query number in [minimum, maximum] or raise a 400 naming the parameter."""
    from chatsite.errors import BadRequest

    if value is None or value == "":
        if default is None:
            raise BadRequest(f"{name} is required.", fields={name: "required"})
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        # "10.0" and "1e3" are whole numbers too (a JSON Schema integer; found
        # by schemathesis). Compared as a Decimal before int(): "1e999999999"
        # must not become a billion-digit int.
        try:
            number = Decimal(value)
            whole = number.is_finite() and number == number.to_integral_value()
        except (TypeError, ValueError, ArithmeticError):
            whole = False
        if not whole:
            raise BadRequest(f"{name} must be a whole number.", fields={name: "not_a_number"})
    if number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}.", fields={name: "too_small"})
    if number > maximum:
        raise BadRequest(f"{name} must be at most {maximum}.", fields={name: "too_large"})
    return int(number)


api.add_router("/auth", "accounts.api.router")
api.add_router("/projects", "projects.api.router")
api.add_router("/dms", "projects.dm_api.router")
api.add_router("", "chat.api.router")
api.add_router("", "chat.upload_api.router")
