"""Domain errors that carry their HTTP meaning; the API renders them in one shape."""


class ChatError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message, *, fields=None, code=None, headers=None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code
        self.headers = headers or {}


class BadRequest(ChatError):
    status, code = 400, "bad_request"


class NotAuthenticated(ChatError):
    status, code = 401, "not_authenticated"


class Forbidden(ChatError):
    status, code = 403, "forbidden"


class NotFound(ChatError):
    status, code = 404, "not_found"


class Conflict(ChatError):
    status, code = 409, "conflict"


class Invalid(ChatError):
    status, code = 422, "invalid"


class RateLimited(ChatError):
    status, code = 429, "rate_limited"

    def __init__(self, message, *, retry_after=60, **kwargs):
        super().__init__(message, headers={"Retry-After": str(int(retry_after))}, **kwargs)


class Unavailable(ChatError):
    status, code = 503, "unavailable"

    def __init__(self, message, *, retry_after=5, **kwargs):
        super().__init__(message, headers={"Retry-After": str(int(retry_after))}, **kwargs)
