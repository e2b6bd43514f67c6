from django.contrib.auth import authenticate, login, logout
from django.middleware.csrf import get_token
from ninja import Router, Schema
from ninja.security import django_auth
from ninja.utils import check_csrf

from accounts.ratelimit import (
    client_ip,
    is_login_blocked,
    record_login_failure,
    retry_after,
)
from chat.serializers import serialize_user
from chatsite.api import BODY_ERRORS, documented
from chatsite.errors import ChatError, Forbidden, Invalid, NotAuthenticated, RateLimited

router = Router(tags=["auth"])


class LoginIn(Schema):
    username: str
    password: str


@router.get("/csrf", auth=None, openapi_extra=documented({200: "CsrfToken"}))
def csrf(request):
    """Return the CSRF token and set its cookie."""
    return {"csrf_token": get_token(request)}


@router.post("/login", auth=None, openapi_extra=documented(
    {200: "UserBody"}, (*BODY_ERRORS, 401, 403, 429)))
def login_view(request, payload: LoginIn):
    """Sign in with username and password; sets the session cookie."""
    if check_csrf(request) is not None:
        raise Forbidden("CSRF check failed: send the X-CSRFToken header.", code="csrf_failed")
    ip = client_ip(request)
    if is_login_blocked(ip, payload.username):
        raise RateLimited("Too many failed sign-ins; wait a minute.", retry_after=retry_after())
    user = None
    # PostgreSQL text cannot hold NUL: such a name matches no user, so it is
    # a failed sign-in, not a database error.
    if "\x00" not in payload.username:
        user = authenticate(request, username=payload.username, password=payload.password)
    if user is None:
        record_login_failure(ip, payload.username)
        raise NotAuthenticated("Wrong username or password.", code="bad_credentials")
    login(request, user)  # rotates the session key
    return {"user": serialize_user(user)}


@router.post("/logout", auth=django_auth, response={204: None},
             openapi_extra=documented({204: None}, (401, 403)))
def logout_view(request):
    logout(request)
    return 204, None


@router.get("/me", auth=django_auth, openapi_extra=documented({200: "UserBody"}, (401,)))
def me(request):
    return {"user": serialize_user(request.user)}


class PasswordIn(Schema):
    old_password: str
    new_password: str


@router.post("/password", auth=django_auth, response={204: None}, openapi_extra=documented(
    {204: None}, (*BODY_ERRORS, 401, 403, 429)))
def change_password(request, payload: PasswordIn):
    """Change the caller's password; this session stays, every other one is signed out."""
    from accounts.forms import PasswordChangeForm, error_codes, error_text

    form = PasswordChangeForm(request.user, data=payload.dict(), request=request)
    if not form.is_valid():
        if form.unavailable is not None:
            raise form.unavailable
        if form.throttled:
            raise RateLimited("Too many failed attempts; wait a minute.",
                              retry_after=retry_after())
        raise Invalid(error_text(form), fields=error_codes(form))
    form.save(request)
    return 204, None


__all__ = ["router", "ChatError"]
