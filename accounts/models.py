from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The chat's user: unique username and email, indexed last login."""

    email = models.EmailField("email address", unique=True)
    # Serves "who was active recently" in admin and operator reports.
    last_login = models.DateTimeField("last login", blank=True, null=True, db_index=True)
    # Shown instead of the username where set (/settings); mentions still use
    # the username.
    display_name = models.CharField(max_length=100, blank=True, default="")

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"


class LoginFailure(models.Model):
    """Failed sign-ins of one minute for one IP or username, kept in the database
    only while the cache cannot keep them (accounts/ratelimit.py): the login
    throttle fails closed, not open, during a Redis outage."""

    key = models.CharField(max_length=100)  # "ip:<address>" or "user:<hash>"
    window = models.BigIntegerField()  # minutes since the epoch
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "window"], name="uniq_loginfailure_key_window"),
        ]
        indexes = [models.Index(fields=["window"], name="idx_loginfailure_window")]

    def __str__(self):
        return f"{self.key} @ {self.window}: {self.count}"
