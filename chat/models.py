from django.conf import settings
from django.db import models


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
