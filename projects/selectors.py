"""Reads about projects and memberships."""

from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from chat.models import Mention, Message
from projects.models import Membership


def get_user_memberships(user, *, offset=0, limit=50):
    """Return the user's memberships in active projects with unread and mention counts.

    One query: the unread count is a correlated subquery served by the
    (project, seq) unique index, the unread-mention count one served by
    idx_mention_user_project_seq -- not one query per project.
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
    # Mentions of the user in messages after the last read one, not deleted.
    mentions = (
        Mention.objects.filter(
            user_id=user.pk,
            project_id=OuterRef("project_id"),
            seq__gt=OuterRef("last_read_seq"),
            message__deleted_at__isnull=True,
        )
        .order_by()
        .values("project_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return list(
        Membership.objects.filter(user_id=user.pk, project__is_active=True)
        .select_related("project")
        .annotate(
            unread_count=Coalesce(Subquery(unread, output_field=IntegerField()), 0),
            mention_count=Coalesce(Subquery(mentions, output_field=IntegerField()), 0),
        )
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


# --- cached body of the project list ---------------------------------------------------


def get_user_projects_body(user, *, page, per_page):
    """Return the encoded project-list JSON of a user.

    Its key holds the user's version (bumped on membership changes and reads)
    and the versions of the user's projects (bumped on every change in them),
    so any change that alters an unread or mention count retires it.
    """
    import hashlib

    import orjson

    from chat.serializers import serialize_project
    from chatsite.cache import get_or_build, get_version, get_versions, make_key

    user_version = get_version("user", user.pk)
    project_ids = get_or_build(
        make_key("umem", user.pk, user_version),
        lambda: list(
            Membership.objects.filter(user_id=user.pk, project__is_active=True)
            .order_by("project_id").values_list("project_id", flat=True)
        ),
        name="memberships",
    )
    versions = get_versions("project", project_ids) if project_ids else {}
    digest = hashlib.blake2b(
        ",".join(f"{pid}={versions[pid]}" for pid in project_ids).encode(), digest_size=12
    ).hexdigest()

    def build():
        total = count_user_projects(user)
        memberships = get_user_memberships(
            user, offset=(page - 1) * per_page, limit=per_page
        )
        items = [
            serialize_project(
                m.project, membership=m, unread_count=m.unread_count,
                mention_count=m.mention_count,
            )
            for m in memberships
        ]
        return orjson.dumps({
            "items": items, "total": total, "page": page, "per_page": per_page,
            "has_next": page * per_page < total, "has_prev": page > 1,
        })

    key = make_key("plist", user.pk, user_version, digest, page, per_page)
    return get_or_build(key, build, name="project_list")
