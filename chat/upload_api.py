"""The uploads API: `POST /api/uploads` (docs/API.md "Attachments")."""

from ninja import Router
from ninja.security import django_auth

from chat.uploads import check_upload_size, do_store_upload, serialize_upload
from chatsite.api import UNSAFE, documented
from chatsite.errors import Invalid
from chatsite.pagination import MAX_ID
from projects.access import access_project

router = Router(tags=["uploads"], auth=django_auth)

# The view reads the multipart form itself (so a body stopped at the size limit
# answers 413, not a missing field): the schema names it here.
UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "properties": {
            "file": {"type": "string", "format": "binary"},
            # As POST /api/messages' project_id: any whole number, a bad one 422.
            "project_id": {"type": "integer"},
        },
        "required": ["file", "project_id"],
    }}},
}


def parse_form_id(value, name):
    """Return a positive id from a form field or raise Invalid (422) naming it."""
    if value in (None, ""):
        raise Invalid(f"{name} is required.", fields={name: "required"})
    digits = value.strip().lstrip("0")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19
            and int(digits) <= MAX_ID):
        raise Invalid(f"{name} must be a positive whole number.", fields={name: "not_a_number"})
    return int(value)


@router.post("/uploads", response={201: dict}, openapi_extra={
    **documented({201: "Upload"}, (400, 413, 422, *UNSAFE, 404)),
    "requestBody": UPLOAD_BODY,
})
def upload_file(request):
    """Store a file for a message to come; members of the project only.

    Over UPLOAD_MAX_BYTES: 413 and nothing is stored; an empty file 422.
    """
    # Reading the form runs the upload handlers (if the CSRF check did not yet).
    form, files = request.POST, request.FILES
    check_upload_size(request)
    project_id = parse_form_id(form.get("project_id"), "project_id")
    access_project(request.user, project_id)
    uploaded = files.get("file")
    if uploaded is None:
        raise Invalid("Send the file in the multipart field `file`.", fields={"file": "required"})
    upload = do_store_upload(request.user, project_id, uploaded)
    return 201, serialize_upload(upload)
