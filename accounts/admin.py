"""Admin for users, built on Django's UserAdmin (User is an AbstractUser subclass),
and the admin's sign-in under the sign-in throttle."""

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import forms as auth_forms

from accounts.models import User
from accounts.views import ThrottledLoginFormMixin, refuse_when_throttle_unavailable


class ThrottledAdminAuthenticationForm(ThrottledLoginFormMixin, AdminAuthenticationForm):
    """The admin's sign-in form under the throttle of the API and the /login page."""


admin.site.login_form = ThrottledAdminAuthenticationForm


def admin_login(request, extra_context=None):
    """Serve admin.site.login; 503 with Retry-After when the throttle is unavailable.

    AdminSite.login builds its LoginView inside, so the status is set here, from
    the form its (not yet rendered) TemplateResponse carries.
    """
    response = admin.site.login(request, extra_context)
    form = (getattr(response, "context_data", None) or {}).get("form")
    return refuse_when_throttle_unavailable(response, form)


class UserCreationForm(auth_forms.AdminUserCreationForm):
    # Django's forms are bound to auth.User, which is swapped out here; email is
    # unique and required, so it is asked for on creation too.
    class Meta(auth_forms.AdminUserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class UserChangeForm(auth_forms.UserChangeForm):
    class Meta(auth_forms.UserChangeForm.Meta):
        model = User


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": (
                    "username",
                    "email",
                    "usable_password",
                    "password1",
                    "password2",
                ),
            },
        ),
    )
    list_display = (
        "username",
        "email",
        "is_active",
        "is_staff",
        "last_login",
        "date_joined",
    )
    list_filter = ("is_active", "is_staff", "is_superuser")
    # Also what the autocomplete widgets of memberships, projects and messages search.
    search_fields = ("username", "email", "first_name", "last_name")
    ordering = ("-id",)
    list_per_page = 50
    # The changelist runs one COUNT (for the pages), not a second unfiltered one.
    show_full_result_count = False

    def has_delete_permission(self, request, obj=None):
        # Deleting a user cascades to all their messages, and the confirmation
        # page would load every one of them to list it. Moderation deactivates
        # instead (untick "Active"); a real erasure is an operator's job.
        return False
