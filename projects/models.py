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

    class Kind(models.TextChoices):
        PROJECT = "project"
        DM = "dm"

    # A direct message is a private project of kind `dm` whose members are
    # fixed at creation (nobody joins, is added or leaves); `dm_key` is its
    # member set -- the sorted user ids joined by commas -- and unique, so two
    # people opening the same conversation at once get one.
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PROJECT)
    dm_key = models.CharField(max_length=200, null=True, blank=True, unique=True)

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


class Invite(models.Model):
    """A link that lets people join a project (and sign up): `/join/<token>`.

    Only a hash of the token is stored (sha256 of a 256-bit secret; see
    projects.invites), so a database read does not hand out working links.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invites")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invites_created",
        db_index=False,
    )
    token_hash = models.CharField(max_length=64, unique=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["created_by", "created_at"], name="idx_invite_creator_created"),
        ]

    def __str__(self):
        return f"invite to {self.project_id} ({self.uses}/{self.max_uses or '∞'})"
