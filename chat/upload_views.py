"""Downloads of attachments, after the access check (docs/API.md "Attachments").

`/uploads/<id>/` serves the file and `/uploads/<id>/thumbnail` an image's
thumbnail, to members of the upload's project only; an upload not yet
attached only to its owner; an upload of a deleted message to nobody. Every
refusal is the same 404 (a signed-out visitor is sent to sign in first, as
by every page). The bytes are streamed from the storage, or handed to nginx
with X-Accel-Redirect when UPLOAD_ACCEL_REDIRECT is set.
"""

from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET

from chat.models import Upload
from chat.uploads import IMAGE_TYPES
from chatsite.errors import ChatError
from chatsite.pagination import MAX_ID
from projects.access import access_project_cached

# Browsers keep a file for a while, never a shared cache: short, since access
# can end (a revoked member's browser may still show what it saw for this long).
CACHE_CONTROL = "private, max-age=300"
# Nothing a served file contains may run or load, even if a browser renders it.
FILE_CSP = "default-src 'none'; sandbox"
THUMBNAIL_TYPE = "image/webp"
INLINE_TYPES = frozenset(IMAGE_TYPES.values())
UPLOAD_FIELDS = ("id", "owner_id", "project_id", "message_id", "file", "thumbnail",
                 "original_name", "size", "content_type", "deleted_at", "message__deleted_at")


def get_servable_upload(user, upload_id):
    """Return the upload if this user may download it, else raise Http404.

    One query for the upload with its message's deleted_at joined; the
    membership comes from the cached access entry (projects.access).
    """
    if not 0 < upload_id <= MAX_ID:
        raise Http404
    upload = (
        Upload.objects.select_related("message").only(*UPLOAD_FIELDS)
        .filter(pk=upload_id).first()
    )
    if upload is None or upload.deleted_at is not None:
        raise Http404
    if upload.message_id is None:
        if upload.owner_id != user.pk:
            raise Http404
    elif upload.message.deleted_at is not None:
        raise Http404
    try:
        access_project_cached(user, upload.project_id)
    except ChatError:
        raise Http404 from None
    return upload


@require_GET
@login_required
def download(request, upload_id):
    """The file: inline for allow-listed raster images, a download otherwise."""
    upload = get_servable_upload(request.user, upload_id)
    if not upload.file:
        raise Http404
    inline = upload.content_type in INLINE_TYPES
    return serve(upload.file.name, upload.content_type, upload.original_name, inline=inline)


@require_GET
@login_required
def thumbnail(request, upload_id):
    """An image's thumbnail (WEBP, longest side at most 400 px)."""
    upload = get_servable_upload(request.user, upload_id)
    if not upload.thumbnail or upload.content_type not in INLINE_TYPES:
        raise Http404
    stem = upload.original_name.rsplit(".", 1)[0] or "thumbnail"
    return serve(upload.thumbnail.name, THUMBNAIL_TYPE, f"{stem}.webp", inline=True)


def serve(name, content_type, filename, *, inline):
    """Answer with the stored file `name`: streamed, or through nginx's internal location."""
    prefix = settings.UPLOAD_ACCEL_REDIRECT
    if prefix:
        response = HttpResponse(b"", content_type=content_type)
        response["X-Accel-Redirect"] = prefix.rstrip("/") + "/" + quote(name)
        response["Content-Disposition"] = content_disposition_header(not inline, filename)
    else:
        try:
            handle = default_storage.open(name, "rb")
        except FileNotFoundError:
            raise Http404 from None
        response = FileResponse(
            handle, content_type=content_type, as_attachment=not inline, filename=filename
        )
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = CACHE_CONTROL
    response["Content-Security-Policy"] = FILE_CSP
    return response
