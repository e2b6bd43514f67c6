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


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's sign-in form under the same per-IP and per-username throttle as
    POST /api/auth/login, so the page is not a way around it."""

    error_messages: ClassVar[dict] = {
        **AuthenticationForm.error_messages,
        "throttled": "Too many failed sign-ins; wait a minute and try again.",
    }

    unavailable = None  # the ThrottleUnavailable that refused this attempt

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        ip = client_ip(self.request) if self.request is not None else "unknown"
        try:
            if is_login_blocked(ip, username):
                raise ValidationError(self.error_messages["throttled"], code="throttled")
            try:
                return super().clean()
            except ValidationError as error:
                # Only wrong credentials count; an inactive account is no guess.
                if any(e.code == "invalid_login" for e in error.error_list):
                    record_login_failure(ip, username)
                raise
        except ThrottleUnavailable as exc:
            # Fails closed: nothing can count failures, so nobody signs in.
            self.unavailable = exc
            raise ValidationError(exc.message, code="unavailable") from None


class LoginPageView(auth_views.LoginView):
    """GET shows the form; POST signs in (Django rotates the session key) and
    follows a safe ?next= or goes to /."""

    template_name = "accounts/login.html"
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.unavailable is not None:
            # The throttle could not be consulted: 503 and Retry-After, as the API.
            response.status_code = 503
            for name, value in form.unavailable.headers.items():
                response[name] = value
        return response


class LogoutPageView(auth_views.LogoutView):
    """POST signs out and redirects to /login.

    GET shows a confirmation page with a POST button instead of signing out:
    a GET must not change state (a prefetching browser or an <img src=/logout>
    on another site would otherwise sign people out).
    """

    http_method_names: ClassVar[list] = ["get", "post", "options"]

    def get(self, request, *args, **kwargs):
        return render(request, "accounts/logout.html")
