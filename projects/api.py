
from django.http import HttpResponse
from ninja import Router, Schema
from ninja.security import django_auth
from pydantic import StrictBool, StrictInt

from chat.serializers import serialize_project
from chatsite.api import BODY_ERRORS, SIGNED_IN, UNSAFE, documented, page_query, parse_positive_int
from chatsite.pagination import DEFAULT_PER_PAGE, MAX_PER_PAGE
from projects import actions, selectors
from projects.access import access_project, get_active_project

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
