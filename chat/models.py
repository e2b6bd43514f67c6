import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Message(models.Model):
    """One chat message; `seq` is its place in history, `changed_seq` its last change."""

    # No single-column FK indexes: the composite indexes below lead with
    # project and with author, so they serve those lookups too.
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="messages",
        db_index=False,
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages",
        db_index=False,
    )
    content = models.TextField()
    # The rendering of `content` (docs/API.md "Formatting"), made at send and
    # edit by chat.rendering; `render_version` is the renderer's version that
    # made it (0: never rendered), and a row of an older version is rendered
    # again when read (chat.rendering.ensure_rendered) or in a batch
    # (`manage.py rerender_messages`).
    content_html = models.TextField(default="", blank=True)
    render_version = models.PositiveSmallIntegerField(default=0)
    # Kept on the row so a page of history stays one query: the message's
    # reactions as the API shows them ([{"emoji", "count", "user_ids"}], in
    # order of first use), rewritten from the Reaction rows whenever they
    # change (chat.reactions), and its attachments' JSON (chat.uploads),
    # fixed at send. Both are emptied when the message is deleted.
    reaction_summary = models.JSONField(default=list, blank=True)
    attachment_summary = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    seq = models.BigIntegerField()
    changed_seq = models.BigIntegerField()
    client_msg_id = models.UUIDField(null=True, blank=True)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project_id", "seq"]
        indexes = [
            # Serves "messages by a user, newest first" (admin, user activity).
            models.Index(fields=["author", "created_at"], name="idx_message_user_created"),
            # Serves the page-numbered history (project, newest first).
            models.Index(fields=["project", "created_at"], name="idx_message_project_created"),
        ]
        constraints = [
            # Serves cursor history and replay by position (project, seq).
            models.UniqueConstraint(fields=["project", "seq"], name="uniq_message_project_seq"),
            # Serves catch-up by change number (project, changed_seq).
            models.UniqueConstraint(
                fields=["project", "changed_seq"], name="uniq_message_project_changed_seq"
            ),
            # Serves the idempotent send lookup (author, client_msg_id).
            models.UniqueConstraint(
                fields=["author", "client_msg_id"], name="uniq_message_author_client_msg_id"
            ),
        ]

    def __str__(self):
        return f"#{self.seq} in {self.project_id}"

    @property
    def is_deleted(self):
        return self.deleted_at is not None


class Mention(models.Model):
    """A user named in a message: `@username`, or every member but the author for `@all`.

    Rows are written with the message (chat.actions) and rewritten when it is
    edited; a deleted message's mentions are removed with its content, and
    every read also skips deleted messages.
    """

    # Served by uniq_mention_message_user, which leads with message.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="mentions", db_index=False
    )
    # Served by the indexes below, which lead with user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mentions",
        db_index=False,
    )
    # No index of its own: every read comes by user first. Only deleting a
    # project (an admin action; projects are normally deactivated) looks rows
    # up by project, with one scan of this table.
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="mentions",
        db_index=False,
    )
    # The message's seq, copied (a message never changes its place), so the
    # unread-mention count is a range of one index, as unread_count is.
    seq = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            # Serves "my mentions, newest first" (GET /api/mentions).
            models.Index(fields=["user", "created_at"], name="idx_mention_user_created"),
            # Serves the unread-mention count of the project list
            # (user, project, seq > last_read_seq).
            models.Index(
                fields=["user", "project", "seq"], name="idx_mention_user_project_seq"
            ),
        ]
        constraints = [
            # One mention per user and message; serves rewriting a message's
            # mentions on edit and delete (by message).
            models.UniqueConstraint(fields=["message", "user"], name="uniq_mention_message_user"),
        ]

    def __str__(self):
        return f"@{self.user_id} in {self.message_id}"


class Reaction(models.Model):
    """One user's emoji on one message (docs/API.md "Reactions").

    The source of truth; the message's `reaction_summary` is rebuilt from
    these rows in the same transaction as every change.
    """

    # Served by uniq_reaction_message_user_emoji, which leads with message.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="reactions", db_index=False
    )
    # Served by idx_reaction_user (a deleted user's rows).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reactions",
        db_index=False,
    )
    emoji = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["user"], name="idx_reaction_user")]
        constraints = [
            models.UniqueConstraint(
                fields=["message", "user", "emoji"], name="uniq_reaction_message_user_emoji"
            ),
        ]

    def __str__(self):
        return f"{self.emoji} by {self.user_id} on {self.message_id}"


def upload_path(instance, filename):
    """Where an upload's bytes go in the storage: never the client's name."""
    return f"uploads/{instance.project_id}/{uuid.uuid4().hex}"


class Upload(models.Model):
    """A file uploaded into a project; attached to at most one message (chat.uploads).

    Unattached uploads older than a day are removed by `manage.py
    purge_uploads`; a deleted message's uploads stop being served and their
    files are removed.
    """

    # Served by idx_upload_owner_created (lists and purge by owner) and by
    # the primary key for every other read.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads",
        db_index=False,
    )
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="uploads",
        db_index=False,
    )
    message = models.ForeignKey(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="uploads",
    )
    file = models.FileField(upload_to=upload_path, max_length=255)
    thumbnail = models.FileField(upload_to=upload_path, max_length=255, blank=True)
    original_name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    # Decided from the bytes (chat.uploads), never from the client's header.
    content_type = models.CharField(max_length=100)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Set when its message is deleted: never served again.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["owner", "created_at"], name="idx_upload_owner_created"),
            # Serves purge_uploads: unattached uploads by age.
            models.Index(
                fields=["created_at"], name="idx_upload_unattached_created",
                condition=models.Q(message__isnull=True),
            ),
        ]

    def __str__(self):
        return self.original_name
