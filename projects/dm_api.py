"""POST /api/dms: open the direct message of a set of people (projects.dms)."""

from ninja import Router, Schema
from ninja.security import django_auth

from chat.serializers import serialize_project
from chatsite.api import BODY_ERRORS, UNSAFE, documented
from projects import dms
from projects.models import Membership

router = Router(tags=["direct messages"], auth=django_auth)


class DirectMessageIn(Schema):
    # Strings only: pydantic refuses a number or a bare string (422), and
    # projects.dms.check_open_dm checks the count and the names.
    usernames: list[str]


@router.post("", response={200: dict, 201: dict},
             openapi_extra=documented({200: "Project", 201: "Project"},
                                      (*BODY_ERRORS, *UNSAFE, 404, 409)))
def open_direct_message(request, payload: DirectMessageIn):
    """The one conversation of these people and the caller: 201 when new, 200 when it exists."""
    project, created = dms.check_open_dm(request.user, payload.usernames)
    membership = Membership.objects.get(user_id=request.user.pk, project_id=project.pk)
    name, member_count = dms.describe_dm(project, request.user)
    body = serialize_project(project, membership=membership, name=name,
                             member_count=member_count)
    return (201 if created else 200), body
