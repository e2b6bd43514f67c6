from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The chat's user: unique username and email, indexed last login."""

    email = models.EmailField("email address", unique=True)
    # Serves "who was active recently" in admin and operator reports.
    last_login = models.DateTimeField("last login", blank=True, null=True, db_index=True)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
