import gzip
import json

import brotli
import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_history(owner, project, send):
    send(owner, project, 30, prefix="a fairly long message body to pass the size threshold")
    return project


@pytest.mark.parametrize("accept, encoding, decode", [
    ("gzip, deflate, br", "br", brotli.decompress),
    ("gzip", "gzip", gzip.decompress),
    ("br;q=0, gzip", "gzip", gzip.decompress),
])
def test_large_response_is_compressed_as_negotiated(
    client_member, big_history, accept, encoding, decode
):
    url = f"/api/projects/{big_history.pk}/messages"
    plain = client_member.get(url).content
    response = client_member.get(url, HTTP_ACCEPT_ENCODING=accept)
    assert response["Content-Encoding"] == encoding
    assert "Accept-Encoding" in response["Vary"]
    assert len(response.content) < len(plain)
    assert json.loads(decode(response.content)) == json.loads(plain)


def test_small_response_is_not_compressed(client_member, project):
    response = client_member.get("/api/auth/me", HTTP_ACCEPT_ENCODING="gzip, br")
    assert len(response.content) < 1000
    assert not response.has_header("Content-Encoding")


def test_compression_can_be_switched_off(settings, client_member, big_history):
    settings.ENABLE_COMPRESSION = False
    response = client_member.get(f"/api/projects/{big_history.pk}/messages",
                                 HTTP_ACCEPT_ENCODING="br")
    assert not response.has_header("Content-Encoding")


def test_no_accept_encoding_means_identity(client_member, big_history):
    response = client_member.get(f"/api/projects/{big_history.pk}/messages")
    assert not response.has_header("Content-Encoding")
    assert "Accept-Encoding" in response["Vary"]
