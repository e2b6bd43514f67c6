"""Admin for projects and memberships: autocomplete widgets, bounded filters."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters

from projects.actions import do_deactivate_projects
from projects.models import Invite, Membership, Project


class ProjectFilter(admin.SimpleListFilter):
    """Filter by project without listing every project.

    Offers the most active projects and the chosen one; any other project is
    reached with ``?project=<id>`` in the address (or the project's own page).
    """

    title = "project"
    parameter_name = "project"
    max_choices = 20

    def lookups(self, request, model_admin):
        # Bounded: projects are few next to messages, and at most max_choices
        # rows come back whatever their number.
        choices = list(
            Project.objects.order_by("-seq", "-id").values_list("id", "name")[
                : self.max_choices
            ]
        )
        chosen = self._chosen_id()
        if chosen is not None and all(pk != chosen for pk, _ in choices):
            extra = Project.objects.filter(pk=chosen).values_list("id", "name").first()
            if extra is not None:
                choices.insert(0, extra)
        return [(str(pk), f"{name} (#{pk})") for pk, name in choices]

    def _chosen_id(self):
        value = self.value()
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise IncorrectLookupParameters(f"project must be an id, not {value!r}")

    def queryset(self, request, queryset):
        chosen = self._chosen_id()
        if chosen is None:
            return queryset
        return queryset.filter(project_id=chosen)


class DirectMessageMemberInline(admin.TabularInline):
    """A DM's members, read-only: its member set is its identity (Project.dm_key)."""

    model = Membership
    fields = ("user", "role", "joined_at", "last_read_seq")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "is_active",
        "kind",
        "is_private",
        "seq",
        "created_at",
    )
    list_display_links = ("id", "name")
    list_select_related = ("owner",)
    list_filter = ("kind", "is_active", "is_private")
    # Also what the project autocomplete widgets (memberships, messages) search.
    search_fields = ("name",)
    autocomplete_fields = ("owner",)
    # seq numbers every change in the project; only chat.actions may move it.
    # A DM's kind and member-set key are made by projects.dms only.
    readonly_fields = ("kind", "dm_key", "seq", "created_at")
    fields = (
        "name",
        "description",
        "owner",
        "kind",
        "dm_key",
        "is_active",
        "is_private",
        "seq",
        "created_at",
    )
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
    actions = ("deactivate_selected",)

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and obj.kind == Project.Kind.DM:
            # A new owner would become a member (save_model) and a public DM
            # would be joinable: its people are fixed (projects.dms).
            return (*fields, "owner", "is_private")
        return fields

    def get_inlines(self, request, obj):
        if obj is not None and obj.kind == Project.Kind.DM:
            return [DirectMessageMemberInline]  # read-only: nobody is added or removed
        return super().get_inlines(request, obj)

    @admin.action(description="Deactivate selected projects", permissions=["change"])
    def deactivate_selected(self, request, queryset):
        # Through the action: its members' cached reads are retired and their
        # sockets closed, as for any other way access ends.
        changed = do_deactivate_projects(list(queryset.values_list("pk", flat=True)))
        self.message_user(
            request, f"Deactivated {changed} project(s).", messages.SUCCESS
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change or "owner" in form.changed_data:
            # The owner must also be a member with the owner role, as
            # projects.actions.do_create_project makes them, or the project
            # would not appear in the owner's own list.
            Membership.objects.update_or_create(
                user_id=obj.owner_id,
                project_id=obj.pk,
                defaults={"role": Membership.Role.OWNER},
            )

    def has_delete_permission(self, request, obj=None):
        # Deleting a project cascades to its whole history, and Django's
        # confirmation page loads every related row to list it (a million
        # messages). Moderation deactivates instead (the action above).
        return False


class MembershipAdminForm(forms.ModelForm):
    def clean_project(self):
        project = self.cleaned_data.get("project")
        if project is not None and project.kind == Project.Kind.DM:
            raise forms.ValidationError(
                "A direct message's members are fixed: nobody is added to one."
            )
        return project


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    # A DM's memberships are read-only here (projects.dms): the form refuses
    # adding one, and an existing one can be neither changed nor deleted.
    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.project.kind == Project.Kind.DM:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.project.kind == Project.Kind.DM:
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):
        # The changelist's bulk delete skips DM memberships.
        super().delete_queryset(request, queryset.exclude(project__kind=Project.Kind.DM))

    list_display = ("id", "user", "project", "role", "last_read_seq", "joined_at")
    list_select_related = ("user", "project")
    list_filter = ("role", ProjectFilter)
    search_fields = ("user__username", "project__name")
    search_help_text = "A username or a project name (or part of one)."
    form = MembershipAdminForm
    autocomplete_fields = ("user", "project")
    readonly_fields = ("joined_at",)
    ordering = ("-id",)
    # Only the primary key orders a page without sorting every membership.
    sortable_by = ("id",)
    list_per_page = 50
    show_full_result_count = False

    def get_paginator(self, request, queryset, per_page, orphans=0,
                      allow_empty_first_page=True):
        # Memberships grow as users x projects: counted as the message admin
        # counts (an estimate unfiltered, else a capped count). Imported here:
        # chat.admin imports this module.
        from chat.admin import EstimatedCountPaginator

        return EstimatedCountPaginator(queryset, per_page, orphans, allow_empty_first_page)


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    """Invite links; only the token's hash exists, so no link is shown (or made) here:
    links are made through the API, which shows the token once."""

    list_display = ("id", "project", "created_by", "use_count", "expires_at", "revoked",
                    "created_at")
    list_select_related = ("project", "created_by")
    search_fields = ("project__name",)
    raw_id_fields = ("project", "created_by")
    fields = ("project", "created_by", "max_uses", "uses", "expires_at", "revoked_at",
              "created_at")
    # The count moves only through projects.invites (its conditional UPDATE).
    readonly_fields = ("uses", "created_at")
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False

    @admin.display(description="uses")
    def use_count(self, obj):
        return f"{obj.uses}/{obj.max_uses if obj.max_uses is not None else '∞'}"

    @admin.display(boolean=True)
    def revoked(self, obj):
        return obj.revoked_at is not None

    def has_add_permission(self, request):
        return False
