"""Reads about projects and memberships."""

from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from chat.models import Message
from projects.models import Membership


def get_user_memberships(user, *, offset=0, limit=50):
    """Return the user's memberships in active projects with unread counts.

    One query: the unread count is a correlated subquery served by the
    (project, seq) unique index, not one query per project.
    """
    unread = (
        Message.objects.filter(
            project_id=OuterRef("project_id"),
            seq__gt=OuterRef("last_read_seq"),
            deleted_at__isnull=True,
        )
        .exclude(author_id=user.pk)
        .order_by()
        .values("project_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return list(
        Membership.objects.filter(user_id=user.pk, project__is_active=True)
        .select_related("project")
        .annotate(unread_count=Coalesce(Subquery(unread, output_field=IntegerField()), 0))
        .order_by("project__name", "project_id")[offset : offset + limit]
    )


def count_user_projects(user):
    return Membership.objects.filter(user_id=user.pk, project__is_active=True).count()


def count_members(project):
    return Membership.objects.filter(project_id=project.pk).count()


def get_public_projects_to_join(user, *, limit=50):
    """Active public projects the user is not in, newest first."""
    from projects.models import Project

    return list(
        Project.objects.filter(is_active=True, is_private=False)
        .exclude(Q(memberships__user_id=user.pk))
        .order_by("-created_at")[:limit]
    )
