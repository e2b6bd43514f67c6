"""Writes about projects and memberships, with their side effects."""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from chatsite.cache import bump_version
from chatsite.errors import Conflict, Invalid, NotFound
from projects.access import access_project, access_project_admin, get_active_project
from projects.models import Membership, Project


def check_create_project(owner, *, name, description="", is_private=False):
    """Validate and create a project; the caller becomes its owner."""
    name = (name or "").strip()
    if not name:
        raise Invalid("A project needs a name.", fields={"name": "required"})
    if len(name) > 200:
        raise Invalid("Project names are at most 200 characters.", fields={"name": "too_long"})
    # PostgreSQL text cannot hold NUL; refuse it here rather than fail the insert.
    if "\x00" in name or "\x00" in (description or ""):
        field = "name" if "\x00" in name else "description"
        raise Invalid("NUL characters are not allowed.", fields={field: "nul"})
    return do_create_project(owner, name=name, description=description or "", is_private=is_private)


@transaction.atomic
def do_create_project(owner, *, name, description="", is_private=False):
    project = Project.objects.create(
        name=name, description=description, is_private=is_private, owner=owner
    )
    Membership.objects.create(user=owner, project=project, role=Membership.Role.OWNER)
    return project


def do_join_project(user, project_id):
    """Join a public project; joining twice is harmless."""
    project = get_active_project(project_id)
    existing = Membership.objects.filter(user_id=user.pk, project_id=project.pk).first()
    if existing:
        return project, existing
    if project.is_private:
        # As if missing: a refusal says nothing of a private project.
        raise NotFound("No such project.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                user=user, project=project, last_read_seq=0
            )
    except IntegrityError:
        membership = Membership.objects.get(user_id=user.pk, project_id=project.pk)
    return project, membership


def do_leave_project(user, project_id):
    project, membership = access_project(user, project_id)
    if membership.role == Membership.Role.OWNER:
        others = Membership.objects.filter(
            project_id=project.pk, role=Membership.Role.OWNER
        ).exclude(pk=membership.pk)
        if not others.exists():
            raise Conflict("The last owner cannot leave; hand the project over first.")
    membership.delete()
    return project


def do_add_member(actor, project_id, username):
    """An owner or admin adds a user by username."""
    project, _ = access_project_admin(actor, project_id)
    if "\x00" in username:  # no such user; PostgreSQL cannot even compare it
        raise NotFound("No such user.", fields={"username": "unknown"})
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise NotFound("No such user.", fields={"username": "unknown"})
    membership, created = Membership.objects.get_or_create(user=user, project=project)
    return project, membership, created


@transaction.atomic
def do_deactivate_projects(project_ids):
    """Deactivate projects; return how many were active.

    An inactive project disappears from lists and refuses access, while its
    history stays in place should it be reactivated. One UPDATE (a moderation
    write over many projects), then what every way access ends does: cached
    reads retired and the projects' sockets closed (projects.signals).
    """
    from projects.signals import project_changes_committed

    ids = list(Project.objects.filter(pk__in=project_ids, is_active=True)
               .select_for_update().values_list("pk", flat=True))
    Project.objects.filter(pk__in=ids).update(is_active=False)
    project_changes_committed(ids)
    return len(ids)


def do_mark_read(user, project_id, seq):
    """Move last_read_seq forward only; a stale tab can never move it back."""
    project, membership = access_project(user, project_id)
    seq = max(0, min(int(seq), project.seq))
    moved = Membership.objects.filter(pk=membership.pk, last_read_seq__lt=seq).update(
        last_read_seq=seq
    )
    if moved:
        bump_version("user", user.pk)
        transaction.on_commit(lambda: bump_version("user", user.pk))
    return max(seq, membership.last_read_seq)
