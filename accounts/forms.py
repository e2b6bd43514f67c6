"""Sign-up, display name and password change: the forms the pages and the API share.

Sign-up and the password change are under the sign-in throttle
(accounts.ratelimit): a refused sign-up (a taken name, a weak password) and a
wrong old password count as failed sign-ins of the client's address, so
neither is a way to probe accounts faster than the sign-in forms allow.
"""

import re

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import transaction
from django.forms.utils import ErrorDict

from accounts.models import User
from accounts.ratelimit import (
    ThrottleUnavailable,
    client_ip,
    is_login_blocked,
    record_login_failure,
)

THROTTLED_MESSAGE = "Too many failed attempts; wait a minute and try again."

# What a mention can name (chat.mentions.MENTION_PATTERN): a name signed up here
# can always be mentioned, so no "@" and no leading, trailing or double dot.
USERNAME_VALIDATOR = RegexValidator(
    re.compile(r"^[\w+-]+(?:\.[\w+-]+)*\Z"),
    "Use letters, digits and _ + - . (not at the start or end, not two dots in a row).",
    code="invalid_username",
)


class ThrottledFormMixin:
    """Check the sign-in throttle before a form is judged and count a refused one.

    `throttle_username` names the account the attempt is about. `unavailable`
    is the ThrottleUnavailable that refused the attempt (the view answers 503);
    `throttled` tells a refusal by the throttle (429) from a refused form.
    """

    unavailable = None
    throttled = False

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def throttle_username(self):
        return ""

    def is_valid(self):
        ip = client_ip(self.request) if self.request is not None else "unknown"
        username = self.throttle_username()
        try:
            if is_login_blocked(ip, username):
                self.throttled = True
                # Judged no further: a throttled client learns nothing of the data.
                self._refuse(ValidationError(THROTTLED_MESSAGE, code="throttled"))
                return False
            valid = super().is_valid()
            if not valid and self.counts_as_failure():
                record_login_failure(ip, username)
            return valid
        except ThrottleUnavailable as exc:
            self.unavailable = exc
            self._refuse(ValidationError(exc.message, code="unavailable"))
            return False

    def _refuse(self, error):
        self._errors = ErrorDict()
        self.cleaned_data = {}
        self.add_error(None, error)

    def counts_as_failure(self):
        return True


class SignUpForm(ThrottledFormMixin, forms.Form):
    """username, email, password: unique (case-insensitively) and Django's validators."""

    username = forms.CharField(
        max_length=150, validators=[USERNAME_VALIDATOR],
        widget=forms.TextInput(attrs={"autocomplete": "username", "autocapitalize": "none"}))
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(
        attrs={"autocomplete": "email"}))
    password = forms.CharField(strip=False, widget=forms.PasswordInput(
        attrs={"autocomplete": "new-password"}))

    def throttle_username(self):
        return str(self.data.get("username") or "")

    def clean_username(self):
        username = self.cleaned_data["username"]
        # Unique whatever the case: "Ann" and "ann" would be one person to a reader.
        if User.objects.filter(username__iexact=username).exists():
            raise ValidationError("This username is taken.", code="username_taken")
        return username

    def clean_email(self):
        email = User.objects.normalize_email(self.cleaned_data["email"])
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError("An account with this email exists.", code="email_taken")
        return email

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password:
            # The validators compare the password with the name and email given.
            probe = User(username=cleaned.get("username", ""), email=cleaned.get("email", ""))
            try:
                password_validation.validate_password(password, probe)
            except ValidationError as error:
                self.add_error("password", error)
        return cleaned

    def save(self):
        """Create the user; call inside the transaction that uses the invite."""
        data = self.cleaned_data
        return User.objects.create_user(
            username=data["username"], email=data["email"], password=data["password"])

    def add_taken_error(self):
        """Report a name or email taken by a concurrent sign-up (the unique index)."""
        data = self.cleaned_data
        if User.objects.filter(username__iexact=data.get("username", "")).exists():
            self.add_error("username", ValidationError("This username is taken.",
                                                       code="username_taken"))
        else:
            self.add_error("email", ValidationError("An account with this email exists.",
                                                    code="email_taken"))


class DisplayNameForm(forms.Form):
    """The name shown instead of the username: at most 100 characters, trimmed."""

    display_name = forms.CharField(max_length=100, required=False)

    def save(self, user):
        from projects.dms import forget_dm_names_of

        user.display_name = self.cleaned_data["display_name"]
        # Saved alone: no revocation check of the user's sockets
        # (accounts.signals); the cached user is still refreshed.
        user.save(update_fields=["display_name"])
        # DM partners' cached lists name this user.
        forget_dm_names_of(user.pk)
        return user


class PasswordChangeForm(ThrottledFormMixin, forms.Form):
    """old_password and new_password (Django's validators); a wrong old password
    counts as a failed sign-in of the user and the client's address."""

    old_password = forms.CharField(strip=False, widget=forms.PasswordInput(
        attrs={"autocomplete": "current-password"}))
    new_password = forms.CharField(strip=False, widget=forms.PasswordInput(
        attrs={"autocomplete": "new-password"}))

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def throttle_username(self):
        return self.user.username

    def counts_as_failure(self):
        # Only a wrong old password is a guess; a weak new one is not.
        return "old_password" in self.errors

    def clean_old_password(self):
        old = self.cleaned_data["old_password"]
        if not self.user.check_password(old):
            raise ValidationError("Your current password is wrong.", code="wrong")
        return old

    def clean_new_password(self):
        new = self.cleaned_data["new_password"]
        password_validation.validate_password(new, self.user)
        return new

    def save(self, request):
        """Set the new password and keep this session signed in.

        The user's save publishes a revocation (accounts.signals): every socket
        of the user checks its session again, and every other session, whose
        hash no longer matches, is signed out. This session gets the new hash
        under a new key (update_session_auth_hash), committed with the password.
        """
        from django.contrib.auth import update_session_auth_hash

        with transaction.atomic():
            self.user.set_password(self.cleaned_data["new_password"])
            self.user.save(update_fields=["password"])
            update_session_auth_hash(request, self.user)
        return self.user


def error_codes(form):
    """{field: comma-joined error codes} of a refused form, for the API's `fields`."""
    return {name: ",".join(e.code or "invalid" for e in errors)
            for name, errors in form.errors.as_data().items()}


def error_text(form):
    return " ".join(str(m) for errors in form.errors.values() for m in errors)
