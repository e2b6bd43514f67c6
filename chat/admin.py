"""Admin for messages, shaped for a table of millions of rows.

The changelist costs a fixed number of queries whatever the table's size: no
COUNT(*) over the table (an estimate or a capped count instead), authors and
projects joined in the page query, sorting only by indexed columns, filters
that never list every project, and no date hierarchy (it aggregates dates over
the whole table). Moderation goes through chat.actions, so a moderator's delete
takes the project's next number and is broadcast like an author's. Staff are
moderators: they call do_edit_message / do_delete_message directly, without the
members' rules of check_edit_message / check_delete_message (author only, the
edit window).
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property
from django.utils.text import Truncator

from chat.actions import do_delete_message, do_edit_message, validate_content
from chat.models import Message, Reaction
from chatsite.errors import Invalid
from projects.admin import ProjectFilter


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a whole large table.

    Unfiltered on PostgreSQL it uses the planner's row estimate
    (pg_class.reltuples, kept by autovacuum/ANALYZE), which costs nothing.
    Otherwise it counts at most ``count_cap`` rows through a sliced subquery
    (``SELECT COUNT(*) FROM (SELECT id ... LIMIT cap)``), so a filter matching
    millions of rows costs at most ``count_cap`` index entries; the pages past
    the cap are reached by narrowing the filter.
    """

    count_cap = 10_000

    @cached_property
    def count(self):
        queryset = self.object_list
        if not queryset.query.where and connections[queryset.db].vendor == "postgresql":
            estimate = self._estimate(queryset)
            # A fresh or small table has no useful estimate (-1 before the first
            # ANALYZE); the capped count is exact there and cheap.
            if estimate >= self.count_cap:
                return estimate
        return queryset.values("pk").order_by()[: self.count_cap].count()

    @staticmethod
    def _estimate(queryset):
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                [queryset.model._meta.db_table],
            )
            row = cursor.fetchone()
        return row[0] if row and row[0] is not None else -1


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("yes", "Yes (tombstones)"), ("no", "No")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


class MessageForm(forms.ModelForm):
    class Meta:
        model = Message
        fields = ("content",)

    def clean_content(self):
        try:
            return validate_content(self.cleaned_data["content"])
        except Invalid as error:
            raise ValidationError(error.message) from error


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    form = MessageForm
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    list_max_show_all = 200
    ordering = ("-id",)
    list_display = (
        "id",
        "project",
        "seq",
        "author",
        "short_content",
        "created_at",
        "is_deleted",
    )
    list_select_related = ("author", "project")
    list_filter = (DeletedFilter, ProjectFilter)
    # Only columns an index orders: the primary key and created_at
    # (idx_message_project_created when filtered by project). Sorting by
    # author or content would sort the whole table for a page of 50.
    sortable_by = ("id", "created_at")
    search_fields = ("content",)
    search_help_text = "Words in the message (full-text on PostgreSQL)."
    # Everything but the content is history: seq and changed_seq belong to the
    # project's numbering (chat.actions), and author/project cannot move.
    fields = (
        "project",
        "author",
        "seq",
        "changed_seq",
        "content",
        "client_msg_id",
        "created_at",
        "updated_at",
        "edited_at",
        "deleted_at",
    )
    readonly_fields = (
        "project",
        "author",
        "seq",
        "changed_seq",
        "client_msg_id",
        "created_at",
        "updated_at",
        "edited_at",
        "deleted_at",
    )
    actions = ("delete_with_tombstones",)

    def get_queryset(self, request):
        # The change form shows author and project: one query, not three.
        return super().get_queryset(request).select_related("author", "project")

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.deleted_at is not None:
            return (*self.readonly_fields, "content")
        return self.readonly_fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term and connections[queryset.db].vendor == "postgresql":
            # Same expression as idx_message_content_fulltext (and chat.search),
            # so the GIN index serves it instead of a LIKE scan.
            queryset = queryset.extra(
                where=[
                    (
                        "to_tsvector('english', chat_message.content) @@ "
                        "plainto_tsquery('english', %s)"
                    )
                ],
                params=[term],
            )
            return queryset, False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="content")
    def short_content(self, message):
        if message.deleted_at is not None:
            return "(deleted)"
        return Truncator(message.content).chars(80)

    @admin.display(description="deleted", boolean=True)
    def is_deleted(self, message):
        return message.deleted_at is not None

    @admin.action(
        description="Delete selected messages (leave tombstones)",
        permissions=["change"],
    )
    def delete_with_tombstones(self, request, queryset):
        # One do_delete_message per message: each takes its project's next
        # number and is broadcast after its own commit, exactly as when the
        # author deletes. Tombstones already in place are left alone.
        pks = list(
            queryset.filter(deleted_at__isnull=True).values_list("pk", flat=True)
        )
        deleted = 0
        for start in range(0, len(pks), 500):
            chunk = Message.objects.select_related("author").filter(
                pk__in=pks[start : start + 500], deleted_at__isnull=True
            )
            for message in chunk.order_by("pk"):
                do_delete_message(message)
                deleted += 1
        self.message_user(
            request,
            f"Deleted {deleted} message(s), leaving tombstones.",
            messages.SUCCESS,
        )

    def get_actions(self, request):
        actions = super().get_actions(request)
        # A hard delete would vanish without a number or a broadcast, so open
        # clients would never learn of it; moderation leaves tombstones.
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request):
        # Messages are written by chat.actions.do_send_message only (it assigns
        # the project's next number under the project row lock).
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        # Only the content is editable; the edit goes through chat.actions so it
        # takes the project's next number and is broadcast like an author's.
        if change and "content" in form.changed_data:
            # The form already put the new text on obj; the action needs the
            # stored one too (it rewrites the message's mentions from both).
            content = obj.content
            obj.content = form.initial.get("content", "")
            do_edit_message(obj, content)


@admin.register(Reaction)
class ReactionAdmin(admin.ModelAdmin):
    """Reactions, read only: every change goes through chat.reactions, which
    numbers it and rewrites the message's summary; a change made here would do
    neither. Shaped like MessageAdmin for a large table: no full COUNT, the
    message and user joined in the page query, sorting by the primary key only."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    ordering = ("-id",)
    list_display = ("id", "emoji", "user", "message", "created_at")
    list_select_related = ("user", "message")
    sortable_by = ("id",)
    raw_id_fields = ("message", "user")
    fields = ("message", "user", "emoji", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
