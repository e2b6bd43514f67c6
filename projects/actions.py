"""Writes about projects and memberships, with their side effects."""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from chatsite.cache import bump_version
from chatsite.errors import Conflict, Forbidden, Invalid, NotFound
from chatsite.pagination import MAX_ID
from projects.access import access_project, get_active_project
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


def refuse_dm_membership_change():
    """Raise the one refusal of joining, adding to or leaving a direct message.

    A DM's member set is its identity (Project.dm_key, projects.dms): a
    conversation of other people is another DM.
    """
    raise Invalid(
        "A direct message's members are fixed: nobody joins, is added or leaves. "
        "Open a direct message with the people you want (POST /api/dms).",
        code="dm_members_fixed",
    )


def do_join_project(user, project_id):
    """Join a public project; joining twice is harmless."""
    project = get_active_project(project_id)
    existing = Membership.objects.filter(user_id=user.pk, project_id=project.pk).first()
    if project.kind == Project.Kind.DM:
        # A member is told why; anyone else meets a private project (404).
        if existing:
            refuse_dm_membership_change()
        raise NotFound("No such project.")
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
    if project.kind == Project.Kind.DM:
        refuse_dm_membership_change()
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
    project, membership = access_project(actor, project_id)
    if project.kind == Project.Kind.DM:  # before the role check: DMs have no admins
        refuse_dm_membership_change()
    if not membership.is_admin:
        raise Forbidden("Only the project's owners and admins may do this.")
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
        # The user's /ws/me/ sockets get the project's new counts (one COUNT
        # after commit): the page, the API and the socket's read all end here.
        from chat.realtime.me import notify_read_moved

        notify_read_moved(user.pk, project_id)
    return max(seq, membership.last_read_seq)


# --- members: remove and change role (docs/API.md, "Members") ---------------------------


def access_project_members(actor, project_id):
    """Return (project, actor's membership) for changing members, or raise.

    A direct message's members are its identity (its dm_key): nobody is
    removed from one or given another role there.
    """
    project, membership = access_project(actor, project_id)
    if project.kind == Project.Kind.DM:
        raise Invalid("A direct message's members are fixed.", code="dm_members_fixed")
    return project, membership


def lock_owner_ids(project_id):
    """Lock the project's owner memberships (in id order) and return their user ids.

    Call inside transaction.atomic. Two owners removing or demoting each other
    at once queue on these rows, and the second sees the first's change, so
    "the last owner stays" holds under races (PostgreSQL; SQLite serializes
    writers anyway).
    """
    return set(
        Membership.objects.select_for_update()
        .filter(project_id=project_id, role=Membership.Role.OWNER)
        .order_by("pk")
        .values_list("user_id", flat=True)
    )


def get_member_for_update(project_id, user_id):
    """Return the locked membership of this user in the project, or raise NotFound."""
    if not 0 < user_id <= MAX_ID:
        raise NotFound("No such member.", fields={"user_id": "not_member"})
    membership = (
        Membership.objects.select_for_update(of=("self",))
        .select_related("user")
        .filter(project_id=project_id, user_id=user_id)
        .first()
    )
    if membership is None:
        raise NotFound("No such member.", fields={"user_id": "not_member"})
    return membership


def refuse_last_owner(owner_ids, membership, action):
    if membership.role == Membership.Role.OWNER and not owner_ids - {membership.user_id}:
        raise Invalid(
            f"The last owner cannot be {action}; make another member an owner first.",
            code="last_owner",
        )


def hand_over_project_owner(project, leaving_user_id, owner_ids):
    """Point Project.owner at a remaining owner when its user stops being one.

    Project.owner names an owner (the admin and serialize_project's owner_id
    read it); the roles themselves live on the memberships. An UPDATE, not a
    save: a new owner name changes no one's access (projects.signals would
    re-check every socket of the project).
    """
    if project.owner_id != leaving_user_id:
        return
    remaining = sorted(owner_ids - {leaving_user_id})
    if remaining:
        Project.objects.filter(pk=project.pk).update(owner_id=remaining[0])
        project.owner_id = remaining[0]
        transaction.on_commit(lambda: bump_version("project", project.pk))


def do_remove_member(actor, project_id, user_id):
    """Remove a member (owner or admin), or leave (anyone, yourself); return the project.

    An admin cannot remove an owner; the last owner cannot be removed. The
    membership is deleted, so projects.signals retires the member's cached
    access and lists and closes their sockets (4403), as leaving does.
    """
    project, mine = access_project_members(actor, project_id)
    is_self = user_id == actor.pk
    if not is_self and not mine.is_admin:
        raise Forbidden("Only the project's owners and admins may remove members.")
    with transaction.atomic():
        owner_ids = lock_owner_ids(project.pk)
        target = get_member_for_update(project.pk, user_id)
        if target.role == Membership.Role.OWNER and not is_self and actor.pk not in owner_ids:
            raise Forbidden("Only an owner may remove an owner.")
        refuse_last_owner(owner_ids, target, "removed")
        if target.role == Membership.Role.OWNER:
            hand_over_project_owner(project, target.user_id, owner_ids)
        target.delete()
    return project


def do_change_member_role(actor, project_id, user_id, role):
    """An owner sets a member's role; return (project, membership with its user).

    The last owner cannot be demoted. The membership is saved (not updated in
    bulk) so projects.signals retires the member's cached access entry.
    """
    project, mine = access_project_members(actor, project_id)
    if mine.role != Membership.Role.OWNER:
        raise Forbidden("Only the project's owners may change roles.")
    if role not in Membership.Role.values:
        raise Invalid("A role is owner, admin or member.", fields={"role": "invalid"})
    with transaction.atomic():
        owner_ids = lock_owner_ids(project.pk)
        if actor.pk not in owner_ids:  # demoted meanwhile
            raise Forbidden("Only the project's owners may change roles.")
        target = get_member_for_update(project.pk, user_id)
        if target.role == role:
            return project, target
        if role != Membership.Role.OWNER:
            refuse_last_owner(owner_ids, target, "demoted")
            if target.role == Membership.Role.OWNER:
                hand_over_project_owner(project, target.user_id, owner_ids)
        target.role = role
        target.save(update_fields=["role"])
    return project, target
