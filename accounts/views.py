"""Sign-in and sign-out pages (server-rendered, no JavaScript needed)."""

from typing import ClassVar

from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.shortcuts import render

from accounts.ratelimit import (
    ThrottleUnavailable,
    client_ip,
    is_login_blocked,
    record_login_failure,
)

THROTTLED_MESSAGE = "Too many failed sign-ins; wait a minute and try again."


class ThrottledLoginFormMixin:
    """The sign-in throttle for an AuthenticationForm: the counters of POST
    /api/auth/login (accounts.ratelimit), so no sign-in form is a way around
    the others."""

    unavailable = None  # the ThrottleUnavailable that refused this attempt

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request is not None else "unknown"
        try:
            if is_login_blocked(ip, username):
                raise ValidationError(THROTTLED_MESSAGE, code="throttled")
            try:
                return super().clean()
            except ValidationError:
                # Only credentials that matched no account count: a right password
                # refused for another reason (inactive; not staff, on the admin)
                # is no guess.
                if self.user_cache is None:
                    record_login_failure(ip, username)
                raise
        except ThrottleUnavailable as exc:
            # Fails closed: nothing can count failures, so nobody signs in.
            self.unavailable = exc
            raise ValidationError(exc.message, code="unavailable") from None


class ThrottledAuthenticationForm(ThrottledLoginFormMixin, AuthenticationForm):
    """Django's sign-in form under the sign-in throttle."""


def refuse_when_throttle_unavailable(response, form):
    """Turn a sign-in form's response into 503 with Retry-After when the throttle
    could not be consulted, as the API answers."""
    if form is not None and form.unavailable is not None:
        response.status_code = 503
        for name, value in form.unavailable.headers.items():
            response[name] = value
    return response


class LoginPageView(auth_views.LoginView):
    """GET shows the form; POST signs in (Django rotates the session key) and
    follows a safe ?next= or goes to /."""

    template_name = "accounts/login.html"
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        return refuse_when_throttle_unavailable(super().form_invalid(form), form)


class LogoutPageView(auth_views.LogoutView):
    """POST signs out and redirects to /login.

    GET shows a confirmation page with a POST button instead of signing out:
    a GET must not change state (a prefetching browser or an <img src=/logout>
    on another site would otherwise sign people out).
    """

    http_method_names: ClassVar[list] = ["get", "post", "options"]

    def get(self, request, *args, **kwargs):
        return render(request, "accounts/logout.html")
