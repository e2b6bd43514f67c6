"""Attachments: receiving, storing and describing uploaded files (docs/API.md "Attachments").

What a file is gets decided from its bytes, never from the client's content
type or name: only PNG, JPEG, GIF and WEBP files that Pillow opens and
verifies, within IMAGE_MAX_PIXELS, are images (served inline, with a
thumbnail); everything else is a download (`Content-Disposition: attachment`)
typed from a short allow-list or `application/octet-stream`. Bytes go through
Django's storage API only (the file system or S3: docs/OPERATIONS.md).
"""

import codecs
import io
import logging
import struct
import warnings

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db import transaction
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from PIL import Image, ImageOps, UnidentifiedImageError

from chat.models import Upload
from chatsite.errors import ChatError, Invalid
from chatsite.pagination import MAX_ID

logger = logging.getLogger(__name__)

# Raster formats shown inline, by Pillow's format name.
IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif",
               "WEBP": "image/webp"}
# Pixels an image may have to be decoded for its thumbnail (a 48-megapixel
# photo fits). Checked from the header before any pixel is decoded, so memory
# stays bounded (~200 MB for RGBA at the limit); beyond it the file is stored
# as a plain download. Pillow's own guard (Image.MAX_IMAGE_PIXELS) stays on
# too, with its warning raised as an error.
IMAGE_MAX_PIXELS = 50_000_000
THUMBNAIL_SIZE = 400
# Multipart framing (boundaries, part headers, project_id) a request may carry
# on top of the file before its Content-Length alone refuses it.
MULTIPART_OVERHEAD = 64 * 1024
# Bytes read to tell text from binary.
SNIFF_BYTES = 8192
OCTET_STREAM = "application/octet-stream"
PLAIN_TEXT = "text/plain; charset=utf-8"
# Non-images recognised by their leading bytes; always served as downloads.
MAGIC_TYPES = (
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
)
MAX_NAME_LENGTH = 255


class TooLarge(ChatError):
    status, code = 413, "too_large"


class UploadLimitHandler(FileUploadHandler):
    """Refuse a multipart body over UPLOAD_MAX_BYTES before any byte is kept.

    First of FILE_UPLOAD_HANDLERS: a Content-Length already over the limit is
    refused before the body is read; otherwise the file bytes are counted as
    they arrive (a missing or lying Content-Length cannot pass) and the upload
    stops at the limit, Django's handlers closing (and removing) what they
    spooled. The view learns of it from `request.upload_too_large`.
    """

    def __init__(self, request=None):
        super().__init__(request)
        self.received = 0

    def _refuse(self):
        if self.request is not None:
            self.request.upload_too_large = True

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length > settings.UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD:
            self._refuse()
            # An empty form: the body is never read.
            return QueryDict(mutable=True), MultiValueDict()
        return None

    def receive_data_chunk(self, raw_data, start):
        # Counted over every file of the request, not per file.
        self.received += len(raw_data)
        if self.received > settings.UPLOAD_MAX_BYTES:
            self._refuse()
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None


def check_upload_size(request):
    """Raise TooLarge (413) when the request's upload went over UPLOAD_MAX_BYTES."""
    if getattr(request, "upload_too_large", False):
        raise TooLarge(
            f"A file is at most {settings.UPLOAD_MAX_BYTES} bytes.", fields={"file": "too_large"}
        )


def clean_name(name):
    """Return a display name: no path, no control characters, at most 255 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch >= " " and ch != "\x7f").strip()
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and len(ext) <= 16:  # keep the extension
            name = stem[: MAX_NAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_NAME_LENGTH]
    return name or "file"


def inspect_image(file):
    """Return (content_type, width, height) for an allowed raster image, else None.

    Reads the header first and refuses before decoding: a format outside
    IMAGE_TYPES, more than IMAGE_MAX_PIXELS pixels, Pillow's decompression-bomb
    guard, or bytes that fail verify() all make it a plain file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            file.seek(0)
            with Image.open(file) as image:
                content_type = IMAGE_TYPES.get(image.format)
                width, height = image.size
                if content_type is None or width < 1 or height < 1:
                    return None
                if width * height > IMAGE_MAX_PIXELS:
                    return None
                image.verify()
    except (
        UnidentifiedImageError, Image.DecompressionBombError,
        Image.DecompressionBombWarning, OSError, SyntaxError, ValueError, EOFError,
        TypeError, IndexError, struct.error, MemoryError,
    ):
        return None
    return content_type, width, height


def make_thumbnail(file):
    """Return WEBP bytes of the image, its longest side at most THUMBNAIL_SIZE, or None.

    Call only after inspect_image accepted the file (its size is bounded).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            file.seek(0)
            with Image.open(file) as image:
                # JPEG decodes at a reduced scale straight away.
                image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                image = ImageOps.exif_transpose(image)
                if image.mode not in ("RGB", "RGBA"):
                    has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
                    image = image.convert("RGBA" if has_alpha else "RGB")
                out = io.BytesIO()
                image.save(out, format="WEBP", quality=80)
                return out.getvalue()
    except Exception:  # noqa: BLE001 - verified but undecodable: stored as a plain file
        logger.info("event=thumbnail_failed", exc_info=True)
        return None


def sniff_type(file):
    """Return the content type of a non-image from its leading bytes (an allow-list)."""
    file.seek(0)
    head = file.read(SNIFF_BYTES)
    for magic, content_type in MAGIC_TYPES:
        if head.startswith(magic):
            return content_type
    if b"\x00" not in head:
        try:
            # Not final: a character cut at the end of the sample is fine.
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            return OCTET_STREAM
        return PLAIN_TEXT
    return OCTET_STREAM


def do_store_upload(user, project_id, uploaded):
    """Store an uploaded file for its owner in a project; return the Upload.

    The caller checked membership. Files written before a failure are removed.
    """
    size = uploaded.size
    if not size:
        raise Invalid("The file is empty.", fields={"file": "empty"})
    if size > settings.UPLOAD_MAX_BYTES:  # the handler stops it first; kept as a guard
        raise TooLarge(
            f"A file is at most {settings.UPLOAD_MAX_BYTES} bytes.", fields={"file": "too_large"}
        )
    upload = Upload(
        owner_id=user.pk, project_id=project_id, original_name=clean_name(uploaded.name),
        size=size,
    )
    image = inspect_image(uploaded)
    # An image Pillow cannot decode after all is a plain file.
    thumbnail = make_thumbnail(uploaded) if image is not None else None
    if thumbnail is not None:
        upload.content_type, upload.width, upload.height = image
    else:
        upload.content_type = sniff_type(uploaded)
    uploaded.seek(0)
    try:
        upload.file.save("file", uploaded, save=False)
        if thumbnail is not None:
            upload.thumbnail.save("thumbnail", ContentFile(thumbnail), save=False)
        upload.save()
    except BaseException:
        remove_files([upload.file.name, upload.thumbnail.name])
        raise
    return upload


def upload_url(upload_id):
    return f"/uploads/{upload_id}/"


def serialize_upload(upload):
    """Return the upload JSON of docs/API.md "Attachments"."""
    is_image = upload.width is not None
    return {
        "id": upload.pk,
        "name": upload.original_name,
        "size": upload.size,
        "content_type": upload.content_type,
        "url": upload_url(upload.pk),
        "thumbnail_url": f"{upload_url(upload.pk)}thumbnail" if is_image else None,
        "width": upload.width if is_image else None,
        "height": upload.height if is_image else None,
    }


# --- attaching and detaching -----------------------------------------------------

MAX_ATTACHMENTS = 10


def validate_attachment_ids(value):
    """Return a list of upload ids (at most MAX_ATTACHMENTS) or raise Invalid."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise Invalid("attachment_ids must be a list of ids.",
                      fields={"attachment_ids": "type"})
    if len(value) > MAX_ATTACHMENTS:
        raise Invalid(f"A message has at most {MAX_ATTACHMENTS} attachments.",
                      fields={"attachment_ids": "too_many"})
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise Invalid("attachment_ids must be a list of ids.",
                          fields={"attachment_ids": "type"})
        if not 0 < item <= MAX_ID:  # names no upload (SQLite cannot even compare it)
            raise Invalid("An attachment is not one of your unattached uploads in this "
                          "project.", fields={"attachment_ids": "invalid"})
    return list(value)


def attach_uploads(message, user, upload_ids):
    """Attach the sender's uploads to a new message and fill its attachment_summary.

    Call inside the send's transaction, after the message row exists. One
    conditional UPDATE claims them (the sender's, in the message's project,
    not attached, not deleted); any id it could not claim (another's, another
    project's, attached already, repeated, missing) raises Invalid, which
    rolls the whole send back. Three queries.
    """
    if not upload_ids:
        return
    invalid = Invalid(
        "An attachment is not one of your unattached uploads in this project.",
        fields={"attachment_ids": "invalid"},
    )
    if len(set(upload_ids)) != len(upload_ids):
        raise invalid
    claimed = Upload.objects.filter(
        pk__in=upload_ids, owner_id=user.pk, project_id=message.project_id,
        message__isnull=True, deleted_at__isnull=True,
    ).update(message=message)
    if claimed != len(upload_ids):
        raise invalid
    by_id = {upload.pk: upload for upload in Upload.objects.filter(pk__in=upload_ids)}
    message.attachment_summary = [serialize_upload(by_id[pk]) for pk in upload_ids]
    type(message).objects.filter(pk=message.pk).update(
        attachment_summary=message.attachment_summary
    )


def release_message_uploads(message):
    """Stop serving a deleted message's uploads; remove their files after commit.

    Call inside the delete's transaction. No query for a message without
    attachments (its summary says so: attachments never change after a send).
    """
    if not message.attachment_summary:
        return
    uploads = Upload.objects.filter(message_id=message.pk, deleted_at__isnull=True)
    names = [name for pair in uploads.values_list("file", "thumbnail") for name in pair]
    uploads.update(deleted_at=message.deleted_at)
    message.attachment_summary = []
    transaction.on_commit(lambda: remove_deleted_files(message.pk, names))


def remove_deleted_files(message_id, names):
    """After commit: remove a deleted message's files; purge_uploads retries failures."""
    if remove_files(names):
        Upload.objects.filter(message_id=message_id, deleted_at__isnull=False).update(
            file="", thumbnail=""
        )


def remove_files(names):
    """Delete these storage names (empty ones skipped); return whether all went."""
    from django.core.files.storage import default_storage

    removed = True
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except Exception:  # noqa: BLE001 - storage away: purge_uploads tries again
            logger.warning("event=upload_remove_failed name=%s", name, exc_info=True)
            removed = False
    return removed
