"""Small middleware of the project's own."""

import logging

import orjson
from django.db import OperationalError
from django.http import HttpResponse

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
CODES = {400: "bad_request", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 413: "too_large", 429: "rate_limited", 503: "unavailable"}
MESSAGES = {404: "No such API endpoint.", 405: "This method is not allowed here."}


class ApiErrorShapeMiddleware:
    """Give every error under /api/ the one JSON error shape, never an HTML page.

    Django answers unmatched URLs and ninja answers wrong methods outside the
    API's exception handlers; this rewrites those answers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            body = {"error": {
                "code": CODES.get(status, "error"),
                "message": MESSAGES.get(status, response.reason_phrase),
                "fields": {},
            }}
            replacement = HttpResponse(
                orjson.dumps(body), status=status, content_type="application/json"
            )
            for header in ("Allow", "Retry-After"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response


class DatabaseUnavailableMiddleware:
    """Answer 503 with Retry-After when the database is down or the pool is exhausted.

    A pool that cannot lend a connection within DB_POOL_TIMEOUT raises
    PoolTimeout (an OperationalError); so does a database that is down. The
    client gets a clear 503 and tries again, instead of a 500.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            return self.get_response(request)
        except OperationalError as exc:
            return self.unavailable(request, exc)

    def process_exception(self, request, exception):
        if isinstance(exception, OperationalError):
            return self.unavailable(request, exception)
        return None

    def unavailable(self, request, exc):
        logger.error("event=database_unavailable path=%s error=%s", request.path, str(exc)[:200])
        if request.path.startswith(API_PREFIX):
            body = orjson.dumps({"error": {
                "code": "unavailable",
                "message": "The database is unavailable; try again shortly.",
                "fields": {},
            }})
            response = HttpResponse(body, status=503, content_type="application/json")
        else:
            response = HttpResponse(
                "<!doctype html><title>Unavailable</title><h1>Back in a moment</h1>"
                "<p>The service is catching its breath. Reload in a few seconds.</p>",
                status=503, content_type="text/html",
            )
        response["Retry-After"] = "5"
        return response
