
from django.http import HttpResponse
from ninja import Router, Schema
from ninja.security import django_auth
from pydantic import StrictBool, StrictInt

from chat.serializers import serialize_project
from chatsite import api as shared_api
from chatsite.api import BODY_ERRORS, SIGNED_IN, UNSAFE, documented, page_query, parse_positive_int
from chatsite.pagination import DEFAULT_PER_PAGE, MAX_PER_PAGE, page_numbered
from projects import actions, invites, selectors
from projects.access import access_project, get_active_project
from projects.dms import describe_dm

router = Router(tags=["projects"], auth=django_auth)


class ProjectIn(Schema):
    name: str
    description: str | None = ""
    # Strict: 1 or "yes" is not a boolean (pydantic would coerce both).
    is_private: StrictBool | None = False


class MemberIn(Schema):
    username: str


class ReadIn(Schema):
    seq: StrictInt


def page_params(request):
    """Parse page and per_page (DEFAULT_PER_PAGE, clamped to MAX_PER_PAGE) or raise 400."""
    # The offset (page - 1) * per_page must stay a 64-bit number in SQL.
    page = parse_positive_int(request.GET.get("page"), "page", default=1, maximum=10**9)
    per_page = parse_positive_int(
        request.GET.get("per_page"), "per_page", default=DEFAULT_PER_PAGE
    )
    return page, min(per_page, MAX_PER_PAGE)


@router.get("", openapi_extra=documented({200: "ProjectPage"}, (400, *SIGNED_IN), page_query()))
def list_projects(request):
    """The caller's active projects with unread counts, page-numbered."""
    page, per_page = page_params(request)
    body = selectors.get_user_projects_body(request.user, page=page, per_page=per_page)
    return HttpResponse(body, content_type="application/json")


@router.post("", response={201: dict},
             openapi_extra=documented({201: "Project"}, (*BODY_ERRORS, *UNSAFE)))
def create_project(request, payload: ProjectIn):
    project = actions.check_create_project(
        request.user,
        name=payload.name,
        description=payload.description or "",
        is_private=bool(payload.is_private),
    )
    return 201, serialize_project(project, member_count=1)


@router.get("/{int:project_id}",
            openapi_extra=documented({200: "Project"}, (*SIGNED_IN, 403, 404)))
def get_project(request, project_id: int):
    """Details of a project: members see any; others see public ones."""
    project = get_active_project(project_id)
    if project.is_private:
        project, _ = access_project(request.user, project_id)
    if project.kind == project.Kind.DM:  # named per viewer (projects.dms)
        name, member_count = describe_dm(project, request.user)
        return serialize_project(project, name=name, member_count=member_count)
    return serialize_project(project, member_count=selectors.count_members(project))


@router.post("/{int:project_id}/join",
             openapi_extra=documented({200: "Project"}, (*UNSAFE, 404)))
def join_project(request, project_id: int):
    project, membership = actions.do_join_project(request.user, project_id)
    return serialize_project(project, membership=membership)


@router.post("/{int:project_id}/leave", response={204: None},
             openapi_extra=documented({204: None}, (*UNSAFE, 404, 409)))
def leave_project(request, project_id: int):
    actions.do_leave_project(request.user, project_id)
    return 204, None


@router.post("/{int:project_id}/members", response={200: dict, 201: dict},
             openapi_extra=documented({200: "Membership", 201: "Membership"},
                                      (*BODY_ERRORS, *UNSAFE, 404)))
def add_member(request, project_id: int, payload: MemberIn):
    project, membership, created = actions.do_add_member(
        request.user, project_id, payload.username
    )
    body = {"project_id": project.pk, "user": {"id": membership.user_id,
            "username": payload.username}, "role": membership.role}
    return (201 if created else 200), body


@router.post("/{int:project_id}/read",
             openapi_extra=documented({200: "ReadMark"}, (*BODY_ERRORS, *UNSAFE, 404)))
def mark_read(request, project_id: int, payload: ReadIn):
    last_read_seq = actions.do_mark_read(request.user, project_id, payload.seq)
    return {"project_id": project_id, "last_read_seq": last_read_seq}


# --- invites (projects.invites; docs/API.md "Invites") ------------------------------

# The invite bodies' components, beside the shared ones of chatsite.api.
_s = shared_api
_s.COMPONENT_SCHEMAS.update({
    "Invite": _s._object(
        {"id": _s.INT, "project_id": _s.INT, "expires_at": {"type": ["string", "null"]},
         "max_uses": _s.NULLABLE_INT, "uses": _s.INT, "created_at": _s.TIME,
         "created_by": _s.INT, "token": _s.STR, "url": _s.STR},
        required=["id", "project_id", "expires_at", "max_uses", "uses", "created_at",
                  "created_by"]),
    "InvitePage": _s._object({"items": {"type": "array", "items": _s.ref("Invite")},
                              "total": _s.INT, "page": _s.INT, "per_page": _s.INT,
                              "has_next": _s.BOOL, "has_prev": _s.BOOL}),
})


class InviteIn(Schema):
    max_uses: StrictInt | None = None
    expires_in_hours: StrictInt | None = None


@router.post("/{int:project_id}/invites", response={201: dict},
             openapi_extra=documented({201: "Invite"}, (*BODY_ERRORS, *UNSAFE, 404)))
def create_invite(request, project_id: int, payload: InviteIn):
    """Make an invite link (owners and admins); the token is shown only here."""
    invite, token = invites.check_create_invite(
        request.user, project_id, max_uses=payload.max_uses,
        expires_in_hours=payload.expires_in_hours)
    return 201, invites.serialize_invite(invite, token=token)


@router.get("/{int:project_id}/invites",
            openapi_extra=documented({200: "InvitePage"}, (400, *SIGNED_IN, 403, 404, 422),
                                     page_query()))
def list_invites(request, project_id: int):
    """The project's live invites, newest first (owners and admins; no tokens)."""
    page, per_page = page_params(request)
    return invites.get_live_invites_page(request.user, project_id, page=page,
                                         per_page=per_page)


@router.delete("/{int:project_id}/invites/{int:invite_id}", response={204: None},
               openapi_extra=documented({204: None}, (*UNSAFE, 404, 422)))
def revoke_invite(request, project_id: int, invite_id: int):
    invites.do_revoke_invite(request.user, project_id, invite_id)
    return 204, None


# --- members (docs/API.md "Members") ---------------------------------------------------

shared_api.COMPONENT_SCHEMAS.update({
    "Member": shared_api._object({
        "user": shared_api._object({"id": shared_api.INT, "username": shared_api.STR,
                                    "display_name": shared_api.STR}),
        "role": {"type": "string", "enum": ["owner", "admin", "member"]},
        "joined_at": shared_api.TIME}),
    "MemberPage": shared_api._object({
        "items": {"type": "array", "items": shared_api.ref("Member")},
        "total": shared_api.INT, "page": shared_api.INT, "per_page": shared_api.INT,
        "has_next": shared_api.BOOL, "has_prev": shared_api.BOOL}),
})


class RoleIn(Schema):
    role: str


@router.get("/{int:project_id}/members",
            openapi_extra=documented({200: "MemberPage"}, (400, *SIGNED_IN, 403, 404),
                                     page_query()))
def list_members(request, project_id: int):
    """The project's members (members only), owners first, then admins, then by name."""
    page, per_page = page_params(request)
    project, _ = access_project(request.user, project_id)
    items, total = selectors.get_member_page(
        project.pk, offset=(page - 1) * per_page, limit=per_page
    )
    return page_numbered(items, total, page, per_page)


@router.delete("/{int:project_id}/members/{int:user_id}", response={204: None},
               openapi_extra=documented({204: None}, (*UNSAFE, 404, 422)))
def remove_member(request, project_id: int, user_id: int):
    """Remove a member (owners and admins), or yourself (leave)."""
    actions.do_remove_member(request.user, project_id, user_id)
    return 204, None


@router.patch("/{int:project_id}/members/{int:user_id}",
              openapi_extra=documented({200: "Member"}, (*BODY_ERRORS, *UNSAFE, 404)))
def change_member_role(request, project_id: int, user_id: int, payload: RoleIn):
    """Set a member's role (owners only)."""
    _, membership = actions.do_change_member_role(
        request.user, project_id, user_id, payload.role
    )
    return selectors.serialize_member(membership)
