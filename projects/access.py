"""Permission checks: fetch what the caller may touch, or raise."""

from chatsite.errors import Forbidden, NotFound
from chatsite.pagination import MAX_ID
from projects.models import Membership, Project


def access_project(user, project_id):
    """Return (project, membership) for a member of an active project, or raise."""
    if isinstance(project_id, int) and not 0 < project_id <= MAX_ID:
        raise NotFound("No such project.")
    membership = (
        Membership.objects.select_related("project")
        .filter(user_id=user.pk, project_id=project_id)
        .first()
    )
    if membership is None or not membership.project.is_active:
        # A missing, inactive or private project is one answer, 404: a refusal
        # says nothing of a private project, not even that it exists. A public
        # project is open to anyone signed in: its refusal is 403 (join first).
        if get_active_project(project_id).is_private:
            raise NotFound("No such project.")
        raise Forbidden("You are not a member of this project.", code="not_member")
    return membership.project, membership


def get_active_project(project_id):
    """Return the active project with this id, or raise NotFound."""
    if isinstance(project_id, int) and not 0 < project_id <= MAX_ID:
        raise NotFound("No such project.")
    project = Project.objects.filter(pk=project_id, is_active=True).first()
    if project is None:
        raise NotFound("No such project.")
    return project


def access_project_admin(user, project_id):
    """Return (project, membership) when the caller is the project's owner or admin."""
    project, membership = access_project(user, project_id)
    if not membership.is_admin:
        raise Forbidden("Only the project's owners and admins may do this.")
    return project, membership


def can_view_project(user, project):
    """Whether a user may see a project's public details (not its history)."""
    if not project.is_private:
        return True
    return Membership.objects.filter(user_id=user.pk, project_id=project.pk).exists()


# --- cached access check for hot reads --------------------------------------------

_NOT_MEMBER = "!403"
_NO_PROJECT = "!404"


def _access_key(user_id, project_id):
    return f"acc:{user_id}:{project_id}"


def access_key(user_id, project_id):
    return _access_key(user_id, project_id)


def access_project_cached(user, project_id, *, cached=None):
    """Return the caller's role in an active project, or raise; served from the cache.

    `cached` is the access entry when the caller already fetched it (one round
    trip with other keys). Membership and project changes drop the entry
    (projects.signals).
    """
    from chatsite.cache import safe_get
    from chatsite.retired import RETIRED, refill

    key = _access_key(user.pk, project_id)
    role = cached if cached is not None else safe_get(key)
    if role is None or role == RETIRED:
        try:
            _, membership = access_project(user, project_id)
            fresh = membership.role
        except NotFound:
            fresh = _NO_PROJECT
        except Forbidden:
            fresh = _NOT_MEMBER
        if role is None:  # a retired entry is not refilled (chatsite.retired)
            refill(key, fresh)
        role = fresh
    if role == _NO_PROJECT:
        raise NotFound("No such project.")
    if role == _NOT_MEMBER:
        raise Forbidden("You are not a member of this project.", code="not_member")
    return role


def forget_access(pairs, *, revoked=True):
    """Drop the cached access entries of these (user id, project id) pairs;
    `revoked`: keep stale readers from refilling them (chatsite.retired)."""
    from chatsite.cache import safe_delete_many
    from chatsite.retired import retire

    keys = [_access_key(user_id, project_id) for user_id, project_id in pairs]
    if keys:
        (retire if revoked else safe_delete_many)(keys)


def members_with_access(project_id, user_ids):
    """Return which of these users are members of the project while it is active."""
    return set(
        Membership.objects.filter(
            project_id=project_id, project__is_active=True, user_id__in=user_ids
        ).values_list("user_id", flat=True)
    )
