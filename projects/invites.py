"""Invite links: make, list, revoke, and join through one (docs/API.md "Invites").

A link is `/join/<token>`; the token is `secrets.token_urlsafe(32)` (256 bits)
and only its sha256 is stored (Invite.token_hash), so a database read or a
backup hands out no working link, and the creator sees the token once, in the
answer that made it. An invite is *live* while it is not revoked, not expired
and not used up, and its project is active; a use is counted by one
conditional UPDATE (`uses < max_uses` in its WHERE), so two people racing for
the last use of an invite get one membership between them, not two.
"""

import hashlib
import secrets
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from chatsite.errors import ChatError, Invalid, NotFound
from chatsite.pagination import MAX_ID, page_numbered
from projects.access import access_project_admin
from projects.models import Invite, Membership, Project

# Bounds of the two optional numbers: a year of hours keeps expires_at a real
# date, and a million uses is "unlimited" for any team this serves.
MAX_EXPIRES_IN_HOURS = 24 * 366
MAX_USES = 1_000_000
# token_urlsafe(32) is 43 characters; anything much longer is no token of ours
# and is refused before hashing.
MAX_TOKEN_LENGTH = 100


class InviteGone(ChatError):
    """The invite existed but can no longer be used: expired, revoked or used up."""

    status, code = 410, "invite_gone"


def hash_token(token):
    """Return the stored form of an invite token (hex sha256)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def invite_url(token):
    return f"/join/{token}"


def serialize_invite(invite, *, token=None):
    data = {
        "id": invite.pk,
        "project_id": invite.project_id,
        "expires_at": invite.expires_at.isoformat() if invite.expires_at else None,
        "max_uses": invite.max_uses,
        "uses": invite.uses,
        "created_at": invite.created_at.isoformat(),
        "created_by": invite.created_by_id,
    }
    if token is not None:
        data["token"] = token
        data["url"] = invite_url(token)
    return data


def _check_optional_number(value, name, maximum):
    if value is None:
        return None
    if value < 1:
        raise Invalid(f"{name} must be at least 1.", fields={name: "too_small"})
    if value > maximum:
        raise Invalid(f"{name} must be at most {maximum}.", fields={name: "too_large"})
    return value


def _access_invitable_project(user, project_id):
    project, membership = access_project_admin(user, project_id)
    if project.kind == Project.Kind.DM:
        # A direct message's members are fixed at creation (docs/API.md "Direct messages").
        raise Invalid("Direct messages have no invites.", code="dm_no_invites",
                      fields={"project_id": "dm"})
    return project, membership


def check_create_invite(user, project_id, *, max_uses=None, expires_in_hours=None):
    """Validate and make an invite by an owner or admin; return (invite, token)."""
    max_uses = _check_optional_number(max_uses, "max_uses", MAX_USES)
    expires_in_hours = _check_optional_number(
        expires_in_hours, "expires_in_hours", MAX_EXPIRES_IN_HOURS)
    project, _ = _access_invitable_project(user, project_id)
    token = secrets.token_urlsafe(32)
    expires_at = (timezone.now() + timedelta(hours=expires_in_hours)
                  if expires_in_hours else None)
    invite = Invite.objects.create(
        project=project, created_by=user, token_hash=hash_token(token),
        max_uses=max_uses, expires_at=expires_at,
    )
    return invite, token


def _live(queryset, now):
    """Filter invites to those still usable at `now` (the project checked apart)."""
    return queryset.filter(
        Q(revoked_at__isnull=True),
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")),
    )


def get_live_invites_page(user, project_id, *, page, per_page):
    """Return a page (docs/API.md §5) of a project's live invites, newest first, for
    its owners and admins; tokens are not stored, so none is shown."""
    project, _ = _access_invitable_project(user, project_id)
    rows = _live(Invite.objects.filter(project=project), timezone.now())
    offset = (page - 1) * per_page
    items = list(rows.order_by("-created_at", "-id")[offset:offset + per_page])
    return page_numbered([serialize_invite(i) for i in items], rows.count(), page, per_page)


def do_revoke_invite(user, project_id, invite_id):
    """Revoke one of a project's invites (owner or admin); revoking twice is harmless."""
    project, _ = _access_invitable_project(user, project_id)
    if not 0 < invite_id <= MAX_ID:
        raise NotFound("No such invite.")
    invite = Invite.objects.filter(pk=invite_id, project=project).first()
    if invite is None:
        raise NotFound("No such invite.")
    Invite.objects.filter(pk=invite.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now())


def get_invite(token):
    """Return the live invite of this token with its project, or raise.

    NotFound when no invite has this token; InviteGone when it is revoked,
    expired, used up or its project is gone. Neither error names the project.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise NotFound("This invite link is not valid.")
    invite = (Invite.objects.select_related("project")
              .filter(token_hash=hash_token(token)).first())
    if invite is None:
        raise NotFound("This invite link is not valid.")
    project = invite.project
    usable = (
        invite.revoked_at is None
        and (invite.expires_at is None or invite.expires_at > timezone.now())
        and (invite.max_uses is None or invite.uses < invite.max_uses)
        and project.is_active
        and project.kind == Project.Kind.PROJECT
    )
    if not usable:
        raise InviteGone("This invite link has expired, was revoked or was used up.")
    return invite


def use_invite(invite, user):
    """Count one use of the invite and make the user a member; return the membership.

    Call inside transaction.atomic: a sign-up rolls its new user back with it
    when the last use went to someone else. A member already in the project
    uses nothing. Raises InviteGone when the conditional UPDATE finds the
    invite no longer usable (the race for the last use was lost).
    """
    existing = Membership.objects.filter(user_id=user.pk, project_id=invite.project_id).first()
    if existing is not None:
        return existing
    counted = _live(Invite.objects.filter(pk=invite.pk), timezone.now()).update(
        uses=F("uses") + 1)
    if not counted:
        raise InviteGone("This invite link has expired, was revoked or was used up.")
    try:
        with transaction.atomic():
            return Membership.objects.create(user=user, project_id=invite.project_id)
    except IntegrityError:  # joined through another link at the same moment
        return Membership.objects.get(user_id=user.pk, project_id=invite.project_id)


def do_join_by_invite(user, token):
    """Join the invite's project as a signed-in user; return (project, membership)."""
    with transaction.atomic():
        invite = get_invite(token)
        membership = use_invite(invite, user)
    return invite.project, membership
