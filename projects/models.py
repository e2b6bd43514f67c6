from django.conf import settings
from django.db import models


class Project(models.Model):
    """A chat room. `seq` numbers every change in it (see chat.actions)."""

    name = models.CharField(max_length=200, db_index=True)
    description = models.TextField(blank=True, default="")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_projects"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    is_active = models.BooleanField(default=True, db_index=True)
    is_private = models.BooleanField(default=False)
    # The last number handed out to a change (create, edit, delete) in this
    # project; bumped under the row lock in the change's transaction.
    seq = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            # Serves "projects owned by X that are active" (admin, owner views).
            models.Index(fields=["owner", "is_active"], name="idx_project_owner_active"),
        ]

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    # Served by uniq_membership_user_project, which leads with user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships",
        db_index=False,
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)
    last_read_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # Serves the membership check on every request (user, project).
            models.UniqueConstraint(fields=["user", "project"], name="uniq_membership_user_project"),
        ]

    def __str__(self):
        return f"{self.user_id} in {self.project_id} ({self.role})"

    @property
    def is_admin(self):
        return self.role in (self.Role.OWNER, self.Role.ADMIN)
