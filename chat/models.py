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
