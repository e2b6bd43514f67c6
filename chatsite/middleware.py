"""Small middleware of the project's own."""

import orjson
from django.http import HttpResponse

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
