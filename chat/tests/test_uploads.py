"""Attachments: upload, attach on send, the access-checked download, purge (docs/API.md).

Files go to a temporary MEDIA_ROOT (the `media` fixture), never into the repo.
"""

import io
import os
import struct
import subprocess
import sys
import uuid
import zlib
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from PIL import Image

from chat.actions import check_send_message
from chat.models import Message, Upload
from conftest import assert_error, login_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def media(settings, tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    settings.MEDIA_ROOT = str(root)
    settings.FILE_UPLOAD_TEMP_DIR = str(spool)
    settings.UPLOAD_ACCEL_REDIRECT = ""
    return root


def stored_files(root):
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def image_bytes(fmt, size=(800, 600), mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 1).save(out, format=fmt)
    return out.getvalue()


def png_header_only(width, height):
    """A PNG whose header declares width x height, with almost no pixel data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def upload(client, project, data, name="f.bin", content_type="application/octet-stream"):
    return client.post("/api/uploads", {
        "project_id": project.pk,
        "file": SimpleUploadedFile(name, data, content_type=content_type),
    })


def send(client, project, ids, content="", **extra):
    return client.post("/api/messages", orjson.dumps(
        {"project_id": project.pk, "content": content, "attachment_ids": ids, **extra}
    ), content_type="application/json")


# --- uploading -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt,content_type,size", [
    ("PNG", "image/png", (800, 600)),
    ("JPEG", "image/jpeg", (300, 1200)),
    ("GIF", "image/gif", (50, 40)),
    ("WEBP", "image/webp", (1000, 100)),
])
def test_image_upload_is_an_image_with_a_small_thumbnail(
    media, project, client_member, fmt, content_type, size
):
    response = upload(client_member, project, image_bytes(fmt, size), name=f"pic.{fmt}",
                      content_type="application/octet-stream")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["content_type"] == content_type
    assert (body["width"], body["height"]) == size
    assert body["name"] == f"pic.{fmt}"
    assert body["url"] == f"/uploads/{body['id']}/"
    assert body["thumbnail_url"] == f"/uploads/{body['id']}/thumbnail"
    row = Upload.objects.get(pk=body["id"])
    assert row.message_id is None and row.size == body["size"]
    with row.thumbnail.open("rb") as handle, Image.open(handle) as thumb:
        assert thumb.format == "WEBP"
        assert max(thumb.size) <= 400
        assert max(thumb.size) == min(400, max(size))
    assert len(stored_files(media)) == 2


def test_text_claiming_to_be_png_is_a_plain_download(media, project, client_member):
    response = upload(client_member, project, b"just some words\n", name="evil.png",
                      content_type="image/png")
    assert response.status_code == 201
    body = response.json()
    assert body["content_type"] == "text/plain; charset=utf-8"
    assert body["thumbnail_url"] is body["width"] is body["height"] is None
    download = client_member.get(body["url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "text/plain; charset=utf-8"
    assert download["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize("name,data,claimed", [
    ("page.html", b"<html><script>alert(1)</script></html>", "text/html"),
    ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
     "image/svg+xml"),
    ("blob.bin", bytes(range(256)) * 4, "image/png"),
    ("doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf"),
])
def test_anything_but_a_raster_image_is_served_as_an_attachment(
    media, project, client_member, name, data, claimed
):
    body = upload(client_member, project, data, name=name, content_type=claimed).json()
    assert body["content_type"] not in ("text/html", "image/svg+xml", "image/png")
    assert body["width"] is None
    download = client_member.get(body["url"])
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert b"".join(download.streaming_content) == data


@pytest.mark.parametrize("width,height", [(30000, 30000), (8000, 8000)])
def test_decompression_bomb_is_stored_as_a_plain_file(
    media, project, client_member, width, height
):
    # 30000x30000 trips Pillow's own guard; 8000x8000 is under it but over
    # IMAGE_MAX_PIXELS: neither is decoded.
    response = upload(client_member, project, png_header_only(width, height), name="bomb.png",
                      content_type="image/png")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["content_type"] == "application/octet-stream"
    assert body["width"] is None and body["thumbnail_url"] is None


def test_undecodable_image_is_stored_as_a_plain_file(media, project, client_member):
    truncated = image_bytes("JPEG", (400, 400))[:300]
    body = upload(client_member, project, truncated, name="broken.jpg").json()
    assert body["content_type"] == "application/octet-stream"
    assert body["thumbnail_url"] is None


def test_empty_file_is_refused(media, project, client_member):
    error = assert_error(upload(client_member, project, b""), 422, "invalid")
    assert error["fields"] == {"file": "empty"}
    assert not Upload.objects.exists() and not stored_files(media)


def test_oversize_by_content_length_is_refused_before_reading(
    media, settings, project, client_member
):
    settings.UPLOAD_MAX_BYTES = 1000
    error = assert_error(upload(client_member, project, b"x" * 200_000), 413, "too_large")
    assert error["fields"] == {"file": "too_large"}
    assert not Upload.objects.exists() and not stored_files(media)


def test_oversize_while_receiving_is_refused_and_leaves_no_temp_file(
    media, settings, project, client_member, tmp_path
):
    # Under the Content-Length allowance (limit + multipart framing), so only
    # counting the bytes as they arrive stops it; spooled to disk on the way.
    settings.UPLOAD_MAX_BYTES = 10_000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000
    assert_error(upload(client_member, project, b"x" * 10_001), 413, "too_large")
    assert not Upload.objects.exists() and not stored_files(media)
    assert list((tmp_path / "spool").iterdir()) == []
    # Exactly at the limit passes.
    assert upload(client_member, project, b"x" * 10_000).status_code == 201


def test_upload_needs_membership(media, project, client_outsider, make_user):
    from projects.actions import do_create_project

    assert_error(upload(client_outsider, project, b"hi"), 403, "not_member")
    secret = do_create_project(make_user("boss"), name="Secret", is_private=True)
    assert_error(upload(client_outsider, secret, b"hi"), 404, "not_found")
    assert not Upload.objects.exists()


@pytest.mark.parametrize("form,field", [
    ({"project_id": "abc"}, "project_id"),
    ({}, "project_id"),
    ({"project_id": "99999999999999999999999"}, "project_id"),
])
def test_bad_project_id_is_422(media, project, client_member, form, field):
    form = {**form, "file": SimpleUploadedFile("a.txt", b"hi")}
    error = assert_error(client_member.post("/api/uploads", form), 422, "invalid")
    assert field in error["fields"]


def test_missing_file_is_422(media, project, client_member):
    error = assert_error(client_member.post("/api/uploads", {"project_id": project.pk}),
                         422, "invalid")
    assert error["fields"] == {"file": "required"}


def test_upload_needs_csrf(media, project, member):
    client = login_client(member, enforce_csrf=True)
    assert_error(upload(client, project, b"hi"), 403, "csrf_failed")


def test_control_characters_and_paths_leave_the_name(media, project, client_member):
    body = upload(client_member, project, b"hi", name="../../etc/pa\x01ss\x7fwd.txt").json()
    assert body["name"] == "passwd.txt"


# --- attaching on send --------------------------------------------------------------


def uploaded(client, project, data=b"hello", name="a.txt"):
    response = upload(client, project, data, name=name)
    assert response.status_code == 201, response.content
    return response.json()


def test_send_attaches_in_the_given_order_and_content_may_be_empty(
    media, project, client_member, django_assert_num_queries
):
    first = uploaded(client_member, project, image_bytes("PNG", (20, 10)), "one.png")
    second = uploaded(client_member, project, b"notes", "two.txt")
    assert send(client_member, project, None, "first, warms the caches").status_code == 201
    with CaptureQueriesContext(connection) as plain:
        assert send(client_member, project, None, "no files").status_code == 201
    with CaptureQueriesContext(connection) as queries:
        response = send(client_member, project, [second["id"], first["id"]])
    assert response.status_code == 201, response.content
    # Attaching costs three queries more than a plain send, whatever the number
    # of files: the claiming UPDATE, the read of the uploads, the summary UPDATE.
    assert len(queries) == len(plain) + 3
    body = response.json()
    assert body["content"] == ""
    assert [a["id"] for a in body["attachments"]] == [second["id"], first["id"]]
    assert body["attachments"][1] == first
    assert sum("chat_upload" in q["sql"] for q in queries.captured_queries) == 2
    message = Message.objects.get(pk=body["id"])
    assert message.attachment_summary == body["attachments"]
    assert set(Upload.objects.values_list("message_id", flat=True)) == {message.pk}
    history = client_member.get(f"/api/projects/{project.pk}/messages").json()
    assert history["items"][0]["attachments"] == body["attachments"]


def test_empty_content_without_attachments_is_still_422(media, project, client_member):
    error = assert_error(send(client_member, project, []), 422, "invalid")
    assert error["fields"] == {"content": "empty"}


@pytest.mark.parametrize("case", ["others", "twice_in_one", "attached_before", "missing",
                                  "other_project"])
def test_an_upload_that_is_not_mine_to_attach_refuses_the_whole_send(
    media, project, client_member, client_owner, owner, member, case
):
    from projects.actions import do_create_project, do_join_project

    mine = uploaded(client_member, project)["id"]
    if case == "others":
        bad = [mine, uploaded(client_owner, project)["id"]]
    elif case == "twice_in_one":
        bad = [mine, mine]
    elif case == "attached_before":
        assert send(client_member, project, [mine], "first").status_code == 201
        bad = [mine]
    elif case == "missing":
        bad = [mine, 10**9]
    else:
        other = do_create_project(owner, name="Other")
        do_join_project(member, other.pk)
        bad = [mine, uploaded(client_member, other)["id"]]
    before = Message.objects.count()
    error = assert_error(send(client_member, project, bad, "with files"), 422, "invalid")
    assert error["fields"] == {"attachment_ids": "invalid"}
    assert Message.objects.count() == before
    if case != "attached_before":
        # Rolled back: the upload is still free to attach.
        assert Upload.objects.get(pk=mine).message_id is None
        assert send(client_member, project, [mine]).status_code == 201


def test_more_than_ten_attachments_is_422(media, project, client_member):
    error = assert_error(send(client_member, project, list(range(1, 12)), "x"), 422, "invalid")
    assert "attachment_ids" in error["fields"]


def test_retry_with_the_same_client_msg_id_answers_the_stored_message(
    media, project, client_member
):
    mine = uploaded(client_member, project)["id"]
    cid = str(uuid.uuid4())
    first = send(client_member, project, [mine], "once", client_msg_id=cid)
    again = send(client_member, project, [mine], "once", client_msg_id=cid)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert Message.objects.count() == 1


def test_action_checks_the_shape_of_attachment_ids(media, project, member):
    from chatsite.errors import Invalid

    for bad in ("1", [True], ["1"], [0], [2**63]):
        with pytest.raises(Invalid) as caught:
            check_send_message(member, project.pk, "x", attachment_ids=bad)
        assert "attachment_ids" in caught.value.fields


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_socket_send_attaches_uploads(media, project, member):
    from asgiref.sync import sync_to_async
    from django.core.files.base import ContentFile

    from chat.tests.test_consumers import open_socket, receive

    async def receive_type(comm, kind):
        while (frame := await receive(comm))["type"] != kind:
            pass
        return frame
    from chat.uploads import do_store_upload

    def store():
        return do_store_upload(member, project.pk, ContentFile(b"hi", name="s.txt"))

    mine = await sync_to_async(store)()
    comm = await open_socket(member, project.pk)
    try:
        await comm.send_to(text_data=orjson.dumps(
            {"type": "message.send", "content": "", "attachment_ids": [mine.pk]}).decode())
        ack = await receive_type(comm, "ack")
        assert [a["id"] for a in ack["message"]["attachments"]] == [mine.pk]
        await comm.send_to(text_data=orjson.dumps(
            {"type": "message.send", "content": "", "attachment_ids": [mine.pk]}).decode())
        error = await receive_type(comm, "error")
        assert error["code"] == "invalid"
    finally:
        await comm.disconnect()


# --- downloading ----------------------------------------------------------------------


def attached(client, project, data=None, name="pic.png"):
    body = uploaded(client, project, data or image_bytes("PNG", (40, 30)), name)
    assert send(client, project, [body["id"]], "look").status_code == 201
    return body


def test_member_downloads_with_headers(media, project, client_member, client_owner):
    data = image_bytes("PNG", (40, 30))
    body = attached(client_member, project, data, "café.png")
    response = client_owner.get(body["url"])
    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == data
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"].startswith("private")
    assert response["Content-Disposition"].startswith("inline;")
    assert "filename*=utf-8''caf%C3%A9.png" in response["Content-Disposition"]
    thumb = client_owner.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(b"".join(thumb.streaming_content))) as image:
        assert image.size == (40, 30)


def test_non_image_has_no_thumbnail(media, project, client_member):
    body = attached(client_member, project, b"words", "a.txt")
    assert client_member.get(f"{body['url']}thumbnail").status_code == 404


def test_download_is_one_query_with_access_cached(
    media, project, client_member, client_owner, django_assert_num_queries
):
    body = attached(client_member, project)
    client_owner.get(body["url"])  # fills the owner's cached access entry
    # One: the upload with its message's deleted_at joined. The session, the
    # user and the membership come from the cache.
    with django_assert_num_queries(1):
        response = client_owner.get(body["url"])
    assert response.status_code == 200
    b"".join(response.streaming_content)


def test_non_members_and_signed_out_never_get_the_file(
    media, project, client_member, client_outsider, client
):
    body = attached(client_member, project)
    assert client_outsider.get(body["url"]).status_code == 404
    assert client_outsider.get(body["thumbnail_url"]).status_code == 404
    signed_out = client.get(body["url"])
    assert signed_out.status_code == 302
    assert signed_out["Location"].startswith("/login?next=")
    assert client_member.get("/uploads/999999/").status_code == 404
    assert client_member.get(f"/uploads/{2**70}/").status_code == 404


def test_unattached_upload_is_served_to_its_owner_only(
    media, project, client_member, client_owner
):
    body = uploaded(client_member, project)
    assert client_member.get(body["url"]).status_code == 200
    assert client_owner.get(body["url"]).status_code == 404


def test_deleted_message_stops_serving_and_removes_files(
    media, project, client_member, client_owner, django_capture_on_commit_callbacks
):
    body = attached(client_member, project)
    message_id = Upload.objects.get(pk=body["id"]).message_id
    assert len(stored_files(media)) == 2
    with django_capture_on_commit_callbacks(execute=True):
        assert client_member.delete(f"/api/messages/{message_id}").status_code == 204
    assert client_owner.get(body["url"]).status_code == 404
    assert client_member.get(body["thumbnail_url"]).status_code == 404
    assert stored_files(media) == []
    row = Upload.objects.get(pk=body["id"])
    assert row.deleted_at is not None and not row.file
    message = Message.objects.get(pk=message_id)
    assert message.attachment_summary == []
    history = client_member.get(f"/api/projects/{project.pk}/messages").json()
    assert history["items"][0]["attachments"] == []


def test_accel_redirect_hands_over_after_the_check(
    media, settings, project, client_member, client_outsider
):
    settings.UPLOAD_ACCEL_REDIRECT = "/protected-uploads/"
    body = attached(client_member, project, b"plain", "a.txt")
    row = Upload.objects.get(pk=body["id"])
    response = client_member.get(body["url"])
    assert response.status_code == 200
    assert response.content == b""
    assert response["X-Accel-Redirect"] == f"/protected-uploads/{row.file.name}"
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "X-Accel-Redirect" not in client_outsider.get(body["url"])


# --- purge ------------------------------------------------------------------------------


def test_purge_removes_old_unattached_uploads_and_leftover_files(
    media, project, client_member
):
    old = uploaded(client_member, project, b"old", "old.txt")
    fresh = uploaded(client_member, project, b"new", "new.txt")
    kept = attached(client_member, project, b"kept", "kept.txt")
    Upload.objects.filter(pk__in=[old["id"], kept["id"]]).update(
        created_at=timezone.now() - timedelta(hours=25))
    # A deleted message's upload whose file removal failed after commit.
    leftover = attached(client_member, project, b"left", "left.txt")
    Upload.objects.filter(pk=leftover["id"]).update(deleted_at=timezone.now())
    out = io.StringIO()
    call_command("purge_uploads", stdout=out)
    assert "expired 1 unattached" in out.getvalue()
    assert "removed 2 file(s) and 1 upload row(s)" in out.getvalue()
    assert set(Upload.objects.values_list("pk", flat=True)) == {
        fresh["id"], kept["id"], leftover["id"]}
    names = {p.name for p in stored_files(media)}
    rows = Upload.objects.in_bulk([fresh["id"], kept["id"], leftover["id"]])
    assert names == {Path(rows[fresh["id"]].file.name).name,
                     Path(rows[kept["id"]].file.name).name}
    assert not rows[leftover["id"]].file
    out = io.StringIO()
    call_command("purge_uploads", "--hours", "0", stdout=out)
    assert "expired 1 unattached" in out.getvalue()  # the fresh one


# --- settings -----------------------------------------------------------------------------

BASE_DIR = Path(__file__).resolve().parents[2]
# Settings are read once at import: each case runs in a fresh interpreter.
LEAKING = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "MEDIA_ROOT",
           "UPLOAD_MAX_BYTES", "UPLOAD_ACCEL_REDIRECT", "AWS_STORAGE_BUCKET_NAME",
           "AWS_S3_ENDPOINT_URL", "AWS_S3_REGION_NAME"}


def run_settings(code, **variables):
    env = {k: v for k, v in os.environ.items() if k not in LEAKING}
    env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", SECRET_KEY="", **variables)
    result = subprocess.run(
        [sys.executable, "-c",
         f"import django; django.setup(); from django.conf import settings; {code}"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_s3_settings_switch_the_default_storage():
    result = run_settings(
        "from django.core.files.storage import storages; s = storages['default']; "
        "print(type(s).__module__, type(s).__name__, s.bucket_name, s.endpoint_url, "
        "s.region_name, s.default_acl, s.querystring_auth, settings.UPLOAD_MAX_BYTES, "
        "settings.UPLOAD_ACCEL_REDIRECT)",
        AWS_STORAGE_BUCKET_NAME="chat-files", AWS_S3_ENDPOINT_URL="http://127.0.0.1:9000",
        AWS_S3_REGION_NAME="eu-west-1", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
        UPLOAD_MAX_BYTES="1048576", UPLOAD_ACCEL_REDIRECT="/protected-uploads/",
    )
    assert result.split() == [
        "storages.backends.s3", "S3Storage", "chat-files", "http://127.0.0.1:9000",
        "eu-west-1", "None", "True", "1048576", "/protected-uploads/"]


def test_default_storage_is_the_file_system_under_media_root(tmp_path):
    result = run_settings(
        "from django.core.files.storage import storages; s = storages['default']; "
        "print(type(s).__name__, s.location, settings.UPLOAD_MAX_BYTES)",
        MEDIA_ROOT=str(tmp_path),
    )
    assert result.split() == ["FileSystemStorage", str(tmp_path), str(25 * 1024 * 1024)]


# --- S3, for real, against moto's in-process server ---------------------------------------


@pytest.fixture
def s3_storage(settings):
    server_module = pytest.importorskip("moto.server", reason="needs moto[s3,server]")
    import boto3

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     **credentials).create_bucket(Bucket="chat-files")
        settings.STORAGES = {**settings.STORAGES, "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": "chat-files", "endpoint_url": endpoint,
                        "region_name": "us-east-1", "default_acl": None,
                        "querystring_auth": True, "file_overwrite": False,
                        "access_key": "testing", "secret_key": "testing"},
        }}
        settings.UPLOAD_ACCEL_REDIRECT = ""
        yield boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
    finally:
        server.stop()


def bucket_keys(s3):
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket="chat-files")
                  .get("Contents", []))


def test_s3_upload_download_delete_and_purge(
    s3_storage, project, client_member, client_owner, django_capture_on_commit_callbacks
):
    data = image_bytes("PNG", (600, 300))
    body = attached(client_member, project, data, "wide.png")
    row = Upload.objects.get(pk=body["id"])
    assert bucket_keys(s3_storage) == sorted([row.file.name, row.thumbnail.name])
    grants = s3_storage.get_object_acl(Bucket="chat-files", Key=row.file.name)["Grants"]
    assert [grant["Permission"] for grant in grants] == ["FULL_CONTROL"]  # not public
    response = client_owner.get(body["url"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["Content-Disposition"].startswith("inline;")
    with Image.open(io.BytesIO(b"".join(client_owner.get(body["thumbnail_url"])
                                        .streaming_content))) as thumb:
        assert thumb.size == (400, 200)
    stale = uploaded(client_member, project, b"stale", "stale.txt")
    Upload.objects.filter(pk=stale["id"]).update(created_at=timezone.now() - timedelta(days=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert client_member.delete(f"/api/messages/{row.message_id}").status_code == 204
    assert client_owner.get(body["url"]).status_code == 404
    call_command("purge_uploads", stdout=io.StringIO())
    assert bucket_keys(s3_storage) == []


def test_deleting_a_project_outright_removes_its_uploads_files(
    media, project, client_member, django_capture_on_commit_callbacks
):
    attached(client_member, project)
    uploaded(client_member, project, b"never sent", "draft.txt")
    assert len(stored_files(media)) == 3  # an image, its thumbnail, the draft
    with django_capture_on_commit_callbacks(execute=True):
        project.delete()  # the admin's delete: rows cascade, files follow them
    assert not Upload.objects.exists()
    assert stored_files(media) == []
