"""Static files from whitenoise under the production server: hashed, precompressed, cached."""

import json

import pytest
import requests

from tests.live import ROOT, LiveServer, make_live_env

pytestmark = [pytest.mark.live]


@pytest.fixture(scope="module", params=["granian", "uvicorn"])
def server(request):
    """Both of make serve's servers: granian (HTTP) and uvicorn (sockets, HTTP in tests)."""
    env, close = make_live_env()
    server = LiveServer(env, http=request.param).start()
    yield server
    server.stop()
    close()


def hashed_name(name):
    manifest = json.loads((ROOT / "staticfiles" / "staticfiles.json").read_text())
    return manifest["paths"][name]


def test_hashed_static_file_is_immutable_for_a_year(server):
    response = requests.get(f"{server.url}/static/{hashed_name('chat/chat.js')}", timeout=10)
    assert response.status_code == 200
    cache_control = response.headers["Cache-Control"]
    assert "immutable" in cache_control and "max-age=31536000" in cache_control


def test_unhashed_static_file_gets_the_shorter_max_age(server):
    response = requests.get(f"{server.url}/static/chat/chat.js", timeout=10)
    assert response.status_code == 200
    assert "max-age=86400" in response.headers["Cache-Control"]
    assert "immutable" not in response.headers["Cache-Control"]


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_static_files_are_served_precompressed(server, encoding):
    url = f"{server.url}/static/{hashed_name('chat/chat.js')}"
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
    response = requests.get(url, headers={"Accept-Encoding": encoding}, timeout=10, stream=True)
    assert response.headers["Content-Encoding"] == encoding
    assert int(response.headers["Content-Length"]) < len(plain.content)
    assert "Accept-Encoding" in response.headers["Vary"]
