"""Bad input, deterministic: bodies that are not JSON, too big, not UTF-8, not
length-delimited; query strings and paths that are not UTF-8; 5,000 duplicate
headers. The random part of issue #7's "Bad input" is tests/test_schemathesis.py
(every operation of the OpenAPI schema); socket frames are fuzzed in
tests/test_fuzz.py.

In-process tests go through a CSRF-enforcing client, as a browser's request
would (the CSRF check reads the form body first: that is where a multipart
Content-Type without a boundary used to become a 500). The raw-HTTP tests talk
to a live uvicorn over a socket, the production path (a2wsgi under uvicorn).
"""

import socket
import time
import uuid

import orjson
import pytest
from django.test import Client

from tests import test_access_matrix
from tests.test_access_matrix import assert_error_shape

world = test_access_matrix.world  # the same users and projects as the access matrix

BIG = 2**70


def body_operations():
    """(method, path template, path ids) of every operation that takes a JSON body."""
    from chatsite.api import api

    schema = api.get_openapi_schema()
    operations = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            if "requestBody" in operation:
                operations.append((method.upper(), path))
    return operations


BODY_OPERATIONS = body_operations()
PATH_IDS = {"project_id": "pub", "message_id": "msg"}

NASTY_BODIES = {
    "empty": b"",
    "truncated": b"{",
    "not utf-8": b"\xff\xfe{}",
    "utf-8 then garbage": b'{"content": "\xc3\x28"}',
    "lone surrogate": b'{"content": "\xed\xa0\x80"}',
    "deep object": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "deep array": b"[" * 5000 + b"]" * 5000,
    "null": b"null",
    "array": b"[]",
    "string": b'"x"',
    "huge number": b"1e999",
    "huge ints": b'{"project_id": %d, "seq": %d}' % (BIG, BIG),
    "wrong types": b'{"project_id": [], "content": {}, "seq": "x", "username": 1, "name": null}',
    "nul": b'{"content": "\\u0000", "name": "\\u0000", "username": "\\u0000", "q": "\\u0000"}',
}


def browser_client(user):
    """Signed in, CSRF enforced, X-CSRFToken known (as the access matrix does)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.csrf = client.get("/api/auth/csrf").json()["csrf_token"]
    return client


def send(client, method, url, body, content_type="application/json"):
    return client.generic(method, url, body, content_type=content_type,
                          HTTP_X_CSRFTOKEN=client.csrf)


def fill(path, ids):
    for name, key in PATH_IDS.items():
        path = path.replace(f"{{{name}}}", str(ids[key]))
    return path


def assert_4xx(response, described):
    assert 400 <= response.status_code < 500, (
        f"{described} -> {response.status_code} {response.content[:300]}")
    assert_error_shape(response)


# --- bodies (in-process) ------------------------------------------------------------


def test_every_body_operation_is_listed():
    # Guards the parametrization below: a new operation with a body is included.
    assert len(BODY_OPERATIONS) >= 6


@pytest.mark.parametrize("method,path", BODY_OPERATIONS, ids=[f"{m} {p}" for m, p in BODY_OPERATIONS])
def test_nasty_bodies_are_a_4xx_in_the_error_shape(world, method, path):
    users, ids = world
    client = browser_client(users["member"])
    url = fill(path, ids)
    for name, body in NASTY_BODIES.items():
        assert_4xx(send(client, method, url, body), f"{method} {url} {name}")


@pytest.mark.parametrize("path,body", [
    ("/api/messages", {"project_id": True, "content": "hi"}),
    ("/api/messages", {"project_id": "{pub}", "content": "hi"}),
    ("/api/projects", {"name": "N", "is_private": 1}),
    ("/api/projects/{project_id}/read", {"seq": True}),
])
def test_a_number_or_boolean_of_another_type_is_422_and_stores_nothing(world, path, body):
    """JSON types are kept: `true` is no project id, 1 no boolean, "3" no number
    (pydantic would coerce each; schemathesis found `project_id: true` accepted)."""
    from chat.models import Message
    from projects.models import Project

    users, ids = world
    body = {k: (str(ids["pub"]) if v == "{pub}" else v) for k, v in body.items()}
    before = (Message.objects.count(), Project.objects.count())
    response = send(browser_client(users["member"]), "POST", fill(path, ids), orjson.dumps(body))
    assert response.status_code == 422, response.content
    assert_error_shape(response)
    assert (Message.objects.count(), Project.objects.count()) == before


@pytest.mark.parametrize("body", [b"\xff\xfe\xfd", b'{"project_id": 1, "content": "\xc3\x28"}',
                                  b'{"content": "\xed\xa0\x80"}'])
def test_invalid_utf8_json_body_is_400(world, body):
    users, _ = world
    response = send(browser_client(users["member"]), "POST", "/api/messages", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_twenty_megabyte_body_is_413_in_the_error_shape(world):
    users, ids = world
    body = b'{"project_id": %d, "content": "' % ids["pub"] + b"a" * (20 * 1024 * 1024) + b'"}'
    response = send(browser_client(users["member"]), "POST", "/api/messages", body)
    assert response.status_code == 413
    assert_error_shape(response)
    assert response.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize("content_type,body", [
    ("multipart/form-data", b'{"project_id": 1, "content": "x"}'),
    ('multipart/form-data; boundary=""', b'{"project_id": 1, "content": "x"}'),
    ("multipart/form-data; boundary=xyz", b'{"project_id": 1, "content": "x"}'),
    ("multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="content"\r\n\r\nhi\r\n--xyz--\r\n'),
])
@pytest.mark.parametrize("path", ["/api/messages", "/api/projects/{pub}/read", "/api/auth/login"])
def test_multipart_body_is_400_not_500(world, content_type, body, path):
    # Found by schemathesis: with CSRF enforced, the check reads request.POST;
    # a multipart type without a boundary raised MultiPartParserError, and a
    # multipart body parsed as a form could not be read again as JSON (500).
    users, ids = world
    response = send(browser_client(users["member"]), "POST", path.format(**ids), body,
                    content_type=content_type)
    assert response.status_code in (400, 401, 422), response.content[:300]
    assert_error_shape(response)
    if path != "/api/auth/login" and ("boundary=xyz" not in content_type or b"--xyz" in body):
        # Signed-in operations check CSRF (reading the form) before the body:
        # the unreadable body is the answer. The sign-in parses its body first
        # and finds no JSON fields there (422).
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "bad_request"


# --- query strings and paths that are not UTF-8 (in-process) -----------------------


@pytest.mark.parametrize("url,status", [
    ("/api/search?q=%FF%FE", 400),
    ("/api/search?q=ok&project_id=%C3%28", 400),
    ("/api/search?q=caf%E9", 400),  # Latin-1, not UTF-8
    ("/api/projects?page=%FF", 400),
    ("/api/messages?project_id=%C3%28", 400),
    ("/api/projects/{pub}/messages?before=%ED%A0%80", 400),
    ("/api/mentions?limit=%80", 400),
    ("/api/projects/%FF", 404),
    ("/api/projects/%C3%28/messages", 404),
    ("/api/messages/%ED%A0%80", 404),
    ("/api/%FF%FE", 404),
])
def test_invalid_utf8_in_query_or_path_is_a_clear_4xx(world, url, status):
    users, ids = world
    response = browser_client(users["member"]).get(url.format(**ids))
    assert response.status_code == status, response.content[:300]
    assert_error_shape(response)


def test_valid_utf8_search_still_works(world):
    users, _ = world
    response = browser_client(users["member"]).get("/api/search?q=caf%C3%A9+%E2%9C%93")
    assert response.status_code == 200


# --- raw HTTP against a live server --------------------------------------------------


@pytest.fixture(scope="module")
def live(request):
    from tests.live import (
        LiveServer,
        create_users_and_project,
        login,
        make_live_env,
    )

    env, close = make_live_env()
    project_id = create_users_and_project(env, ["bad"], "Bad input")
    server = LiveServer(env).start()
    session = login(server.url, "bad")
    yield server, session, project_id
    server.stop()
    close()


def raw_request(port, head, body=b"", timeout=10, chunk=1 << 20):
    """Send raw bytes; return (status or None, seconds, response bytes)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for start in range(0, len(body), chunk):
                sock.sendall(body[start:start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; read what it said
        data = b""
        try:
            while b"\r\n\r\n" not in data or not _complete(data):
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - started, data


def _complete(data):
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
        if line.lower() == b"transfer-encoding: chunked":
            return body.endswith(b"0\r\n\r\n")
    return True


def response_body(data):
    """The body of a raw response, de-chunked."""
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        size = int(size, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def request_head(server, session, method, path, headers=(), content_type="application/json"):
    """A signed-in browser's request head (cookies, CSRF token, Referer), unterminated."""
    if isinstance(path, str):
        path = path.encode()
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    lines = [f"Host: 127.0.0.1:{server.port}", f"Cookie: {cookie}",
             f"X-CSRFToken: {session.csrf}", f"Referer: {server.url}/",
             f"Content-Type: {content_type}", *headers]
    return method.encode() + b" " + path + b" HTTP/1.1\r\n" + (
        "\r\n".join(lines) + "\r\n").encode()


def json_error(data):
    head = data.partition(b"\r\n\r\n")[0]
    assert b"application/json" in head.lower(), data[:300]
    error = orjson.loads(response_body(data))["error"]
    assert set(error) == {"code", "message", "fields"}
    return error


def server_is_up(server):
    import requests

    return requests.get(server.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.live
def test_live_twenty_megabyte_body_is_413_without_reading_it(live):
    server, session, project_id = live
    body = b'{"project_id": %d, "content": "' % project_id + b"a" * (20 * 1024 * 1024) + b'"}'
    head = request_head(server, session, "POST", "/api/messages",
                        [f"Content-Length: {len(body)}", "Connection: close"]) + b"\r\n"
    status, seconds, data = raw_request(server.port, head, body)
    assert status == 413, data[:300]
    assert json_error(data)["code"] == "too_large"
    assert seconds < 10


@pytest.mark.live
def test_live_chunked_body_without_content_length_is_a_clear_4xx(live):
    # Through a2wsgi Django sees no Content-Length and reads the body as empty,
    # so a chunked send is refused as "body required" (422) in the error shape:
    # never a 5xx, never a hang (docs/RELIABILITY.md, finding 6).
    server, session, project_id = live
    payload = orjson.dumps({"project_id": project_id, "content": "chunked",
                            "client_msg_id": str(uuid.uuid4())})
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    head = request_head(server, session, "POST", "/api/messages",
                        ["Transfer-Encoding: chunked", "Connection: close"]) + b"\r\n"
    status, seconds, data = raw_request(server.port, head, chunked)
    print(f"\nchunked POST /api/messages: {status} in {seconds:.3f} s")
    assert status in (400, 411, 422), data[:300]
    assert json_error(data)
    assert seconds < 10


@pytest.mark.live
def test_live_post_without_length_or_body_is_a_4xx(live):
    server, session, _ = live
    head = request_head(server, session, "POST", "/api/messages", ["Connection: close"]) + b"\r\n"
    status, _, data = raw_request(server.port, head)
    assert status in (400, 411, 422), data[:300]
    assert json_error(data)


@pytest.mark.live
def test_live_invalid_utf8_body_is_400(live):
    server, session, project_id = live
    body = b'{"project_id": %d, "content": "\xc3\x28\xff"}' % project_id
    head = request_head(server, session, "POST", "/api/messages",
                        [f"Content-Length: {len(body)}", "Connection: close"]) + b"\r\n"
    status, _, data = raw_request(server.port, head, body)
    assert status == 400, data[:300]
    assert json_error(data)["code"] == "bad_request"


@pytest.mark.live
def test_live_multipart_without_boundary_is_400(live):
    server, session, project_id = live
    body = b'{"project_id": %d, "content": "x"}' % project_id
    head = request_head(server, session, "POST", "/api/messages",
                        [f"Content-Length: {len(body)}", "Connection: close"],
                        content_type="multipart/form-data") + b"\r\n"
    status, _, data = raw_request(server.port, head, body)
    assert status == 400, data[:300]
    assert json_error(data)["code"] == "bad_request"


@pytest.mark.live
@pytest.mark.parametrize("path,statuses", [
    (b"/api/search?q=%FF%FE", {400}),
    (b"/api/projects?page=%C3%28", {400}),
    (b"/api/projects/%FF", {404}),
    # Raw (not percent-encoded) bytes: the HTTP parser may refuse the request
    # line itself (400, not our JSON) or pass it on; either way a clear 4xx.
    (b"/api/search?q=\xff\xfe", {400}),
    (b"/api/projects/\xff\xfe", {400, 404}),
])
def test_live_invalid_utf8_in_query_or_path_is_a_clear_4xx(live, path, statuses):
    server, session, _ = live
    head = request_head(server, session, "GET", path, ["Connection: close"]) + b"\r\n"
    status, seconds, data = raw_request(server.port, head)
    print(f"\nGET {path!r}: {status} in {seconds:.3f} s")
    assert status in statuses, data[:300]
    if b"application/json" in data.partition(b"\r\n\r\n")[0].lower():
        json_error(data)
    assert seconds < 10
    assert server_is_up(server)


@pytest.mark.live
def test_live_five_thousand_duplicate_headers_are_answered_quickly(live):
    server, session, _ = live
    headers = ["X-Dup: 1"] * 5000 + ["Connection: close"]
    head = request_head(server, session, "GET", "/api/auth/me", headers) + b"\r\n"
    status, seconds, data = raw_request(server.port, head)
    print(f"\n5000 duplicate headers: status {status} in {seconds:.3f} s")
    # The HTTP parser may refuse the head (400/431) or close the connection, or
    # the app answers normally; never a 5xx nor a hang, and the server stays up.
    assert status is None or status in (200, 400, 431), data[:300]
    if status == 200:
        assert orjson.loads(response_body(data))["user"]["username"] == "bad"
    assert seconds < 10
    assert server_is_up(server)
