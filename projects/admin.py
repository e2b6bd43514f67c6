"""Admin for projects and memberships: autocomplete widgets, bounded filters."""

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters

from projects.actions import do_deactivate_projects
from projects.models import Membership, Project


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


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "is_active",
        "is_private",
        "seq",
        "created_at",
    )
    list_display_links = ("id", "name")
    list_select_related = ("owner",)
    list_filter = ("is_active", "is_private")
    # Also what the project autocomplete widgets (memberships, messages) search.
    search_fields = ("name",)
    autocomplete_fields = ("owner",)
    # seq numbers every change in the project; only chat.actions may move it.
    readonly_fields = ("seq", "created_at")
    fields = (
        "name",
        "description",
        "owner",
        "is_active",
        "is_private",
        "seq",
        "created_at",
    )
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
    actions = ("deactivate_selected",)

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


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "project", "role", "last_read_seq", "joined_at")
    list_select_related = ("user", "project")
    list_filter = ("role", ProjectFilter)
    search_fields = ("user__username", "project__name")
    autocomplete_fields = ("user", "project")
    readonly_fields = ("joined_at",)
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
