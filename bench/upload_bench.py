"""Attachments, in process: upload throughput and access-checked downloads.

Usage:
    .venv/bin/python bench/upload_bench.py [--upload-mb 10] [--uploads 10] [--downloads 2000]

Runs Django's full request stack through django.test.Client (no network, no
server: what the view and its checks cost, not a server's throughput) on a
throwaway SQLite database and MEDIA_ROOT. Measures uploads of a file of
--upload-mb MB (spooled to disk, typed, stored) and downloads of a 100 KB
image by a member, streamed by Django and with UPLOAD_ACCEL_REDIRECT (empty
body, nginx would send the bytes).
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = tempfile.mkdtemp(prefix="upload-bench-")
os.environ.update(
    DATABASE_URL=f"sqlite:///{WORK}/bench.sqlite3", MEDIA_ROOT=f"{WORK}/media",
    DJANGO_SETTINGS_MODULE="chatsite.settings", FAST_PASSWORD_HASHER="1",
    ENABLE_METRICS="false", UPLOAD_ACCEL_REDIRECT="",
)
os.environ.pop("REDIS_URL", None)

import django  # noqa: E402

django.setup()

from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from PIL import Image  # noqa: E402


def image_of_about(size_bytes):
    """A PNG of noise close to size_bytes (noise does not compress)."""
    side = int((size_bytes / 3) ** 0.5)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upload-mb", type=float, default=10)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--downloads", type=int, default=2000)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    from accounts.models import User
    from projects.actions import do_create_project

    user = User.objects.create_user("bench", "bench@example.com", "bench-pass-123")
    project = do_create_project(user, name="Bench")
    client = Client()
    client.force_login(user)

    data = os.urandom(int(args.upload_mb * 1024 * 1024))
    started = time.perf_counter()
    for i in range(args.uploads):
        response = client.post("/api/uploads", {
            "project_id": project.pk, "file": SimpleUploadedFile(f"blob{i}.bin", data)})
        assert response.status_code == 201, response.content
    seconds = time.perf_counter() - started
    print(f"upload of {args.upload_mb:g} MB x {args.uploads}: "
          f"{args.upload_mb * args.uploads / seconds:.0f} MB/s "
          f"({seconds / args.uploads * 1000:.0f} ms each)")

    image = image_of_about(100 * 1024)
    response = client.post("/api/uploads", {
        "project_id": project.pk, "file": SimpleUploadedFile("pic.png", image)})
    body = response.json()
    assert body["content_type"] == "image/png", body
    started = time.perf_counter()
    for _ in range(20):
        client.post("/api/uploads", {
            "project_id": project.pk, "file": SimpleUploadedFile("pic.png", image)})
    print(f"upload of a {len(image) // 1024} KB image (typed, verified, thumbnail): "
          f"{(time.perf_counter() - started) / 20 * 1000:.1f} ms each")

    for label, prefix in (("streamed by Django", ""),
                          ("UPLOAD_ACCEL_REDIRECT", "/protected-uploads/")):
        with override_settings(UPLOAD_ACCEL_REDIRECT=prefix):
            client.get(body["url"])  # warm the access entry
            started = time.perf_counter()
            for _ in range(args.downloads):
                response = client.get(body["url"])
                b"".join(response.streaming_content) if response.streaming else response.content
            seconds = time.perf_counter() - started
        print(f"download of a {len(image) // 1024} KB image, {label}: "
              f"{args.downloads / seconds:.0f} req/s")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
