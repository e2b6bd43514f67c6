"""Sign-in and sign-out pages (server-rendered, no JavaScript needed)."""

from typing import ClassVar

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.forms import DisplayNameForm, PasswordChangeForm, SignUpForm
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


# --- sign-up and settings (docs/API.md §9) ----------------------------------------


def form_status(form):
    """The status of a page whose form was refused: 503 when the throttle could
    not be consulted, 429 when it refused, else 422."""
    if form.unavailable is not None:
        return 503
    return 429 if form.throttled else 422


def render_form_page(request, template, context, form):
    response = render(request, template, context, status=form_status(form))
    if form.unavailable is not None:
        for name, value in form.unavailable.headers.items():
            response[name] = value
    return response


def sign_up(request, form, *, invite=None):
    """Create the account from a valid form (and join the invite's project, one
    transaction for the user, the membership and the invite's use), then sign in.

    Returns the new user, or None when a concurrent sign-up took the name or
    email (the form then carries the error). Raises InviteGone when the invite's
    last use went to someone else first: nothing is created.
    """
    from projects.invites import use_invite

    try:
        with transaction.atomic():
            user = form.save()
            if invite is not None:
                use_invite(invite, user)
    except IntegrityError:
        form.add_taken_error()
        return None
    login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
    return user


@require_http_methods(["GET", "POST"])
def signup_page(request):
    """Open sign-up, when ALLOW_SIGNUP is on (404 otherwise); invite links sign
    people up at /join/<token> either way."""
    if not settings.ALLOW_SIGNUP:
        raise Http404("Sign-up is by invitation.")
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request=request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if form.is_valid() and sign_up(request, form) is not None:
            return redirect("home")
        return render_form_page(request, "accounts/signup.html", {"form": form}, form)
    return render(request, "accounts/signup.html", {"form": form})


@require_http_methods(["GET", "POST"])
@login_required
def settings_page(request):
    """Display name and password change; each form posts here with its `form` value."""
    user = request.user
    name_form = DisplayNameForm(initial={"display_name": user.display_name})
    password_form = PasswordChangeForm(user, request=request)
    status = 200
    if request.method == "POST":
        which = request.POST.get("form")
        if which == "display_name":
            name_form = DisplayNameForm(request.POST)
            if name_form.is_valid():
                name_form.save(user)
                messages.success(request, "Display name saved.")
                return redirect("settings")
            status = 422
        elif which == "password":
            password_form = PasswordChangeForm(user, request=request, data=request.POST)
            if password_form.is_valid():
                password_form.save(request)
                messages.success(request, "Password changed; your other sessions are signed out.")
                return redirect("settings")
            context = {"name_form": name_form, "password_form": password_form}
            return render_form_page(request, "accounts/settings.html", context, password_form)
        else:
            status = 400
    context = {"name_form": name_form, "password_form": password_form}
    return render(request, "accounts/settings.html", context, status=status)
