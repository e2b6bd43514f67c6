"""Who may do what: every API endpoint, page and the socket × every kind of caller.

Roles: anonymous, a signed-in non-member, a member, a project admin, the owner,
and a staff user who is not a member (staff rights are for /admin/ only; they
open no project). Two projects: a public one and a private one; the member,
admin and owner belong to both. Every cell is a parametrized test that asserts
the status (or the socket's close code); every refused API answer must have the
one error shape of docs/API.md §3 (access rules: docs/API.md §4). Runs on the embedded default and in production shape.
"""

import re
from pathlib import Path

import orjson
import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.test import Client, override_settings

from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator

ROLES = ("anonymous", "nonmember", "member", "admin", "owner", "staff")
MISSING = 987654
CSP_MIDDLEWARE = "chat.csp.ContentSecurityPolicyMiddleware"
TEMPLATES_DIR = Path(settings.BASE_DIR) / "templates"


def row(anonymous, nonmember, member, admin, owner, staff):
    return dict(zip(ROLES, (anonymous, nonmember, member, admin, owner, staff)))


# (name, method, path, JSON body, expected status by role). {pub}/{priv} are the
# projects, {msg}/{privmsg} a message by the member in each, {missing} no project.
MEMBERS_ONLY_READ = row(401, 403, 200, 200, 200, 403)
# A private project refuses non-members as a missing one: 404, never 403.
PRIVATE_READ = row(401, 404, 200, 200, 200, 404)
API_MATRIX = [
    ("csrf", "GET", "/api/auth/csrf", None, row(200, 200, 200, 200, 200, 200)),
    ("me", "GET", "/api/auth/me", None, row(401, 200, 200, 200, 200, 200)),
    ("logout", "POST", "/api/auth/logout", None, row(401, 204, 204, 204, 204, 204)),
    ("list_projects", "GET", "/api/projects", None, row(401, 200, 200, 200, 200, 200)),
    ("create_project", "POST", "/api/projects", {"name": "New"},
     row(401, 201, 201, 201, 201, 201)),
    ("get_public", "GET", "/api/projects/{pub}", None, row(401, 200, 200, 200, 200, 200)),
    ("get_private", "GET", "/api/projects/{priv}", None, PRIVATE_READ),
    ("get_missing", "GET", "/api/projects/{missing}", None, row(401, 404, 404, 404, 404, 404)),
    ("join_public", "POST", "/api/projects/{pub}/join", None,
     row(401, 200, 200, 200, 200, 200)),
    ("join_private", "POST", "/api/projects/{priv}/join", None,
     row(401, 404, 200, 200, 200, 404)),
    ("join_missing", "POST", "/api/projects/{missing}/join", None,
     row(401, 404, 404, 404, 404, 404)),
    # The last owner cannot leave (409).
    ("leave_public", "POST", "/api/projects/{pub}/leave", None,
     row(401, 403, 204, 204, 409, 403)),
    ("add_member_public", "POST", "/api/projects/{pub}/members", {"username": "newcomer"},
     row(401, 403, 403, 201, 201, 403)),
    ("add_member_private", "POST", "/api/projects/{priv}/members", {"username": "newcomer"},
     row(401, 404, 403, 201, 201, 404)),
    ("read_public", "POST", "/api/projects/{pub}/read", {"seq": 1}, MEMBERS_ONLY_READ),
    ("read_private", "POST", "/api/projects/{priv}/read", {"seq": 1}, PRIVATE_READ),
    # Without project_id: the caller's own projects' messages, whoever asks.
    ("all_messages", "GET", "/api/messages?page=1&per_page=50", None,
     row(401, 200, 200, 200, 200, 200)),
    ("page_history_public", "GET", "/api/messages?project_id={pub}", None, MEMBERS_ONLY_READ),
    ("page_history_private", "GET", "/api/messages?project_id={priv}", None,
     PRIVATE_READ),
    ("page_history_missing", "GET", "/api/messages?project_id={missing}", None,
     row(401, 404, 404, 404, 404, 404)),
    ("cursor_history_public", "GET", "/api/projects/{pub}/messages", None, MEMBERS_ONLY_READ),
    ("cursor_history_private", "GET", "/api/projects/{priv}/messages?after=0", None,
     PRIVATE_READ),
    ("send_public", "POST", "/api/messages", {"project_id": "{pub}", "content": "hi"},
     row(401, 403, 201, 201, 201, 403)),
    ("send_private", "POST", "/api/messages", {"project_id": "{priv}", "content": "hi"},
     row(401, 404, 201, 201, 201, 404)),
    ("send_missing", "POST", "/api/messages", {"project_id": "{missing}", "content": "hi"},
     row(401, 404, 404, 404, 404, 404)),
    # Only the author edits; the author or a project admin deletes.
    ("edit_public", "PATCH", "/api/messages/{msg}", {"content": "edited"},
     row(401, 403, 200, 403, 403, 403)),
    ("edit_private", "PATCH", "/api/messages/{privmsg}", {"content": "edited"},
     row(401, 404, 200, 403, 403, 404)),
    ("edit_missing", "PATCH", "/api/messages/{missing}", {"content": "edited"},
     row(401, 404, 404, 404, 404, 404)),
    ("delete_public", "DELETE", "/api/messages/{msg}", None, row(401, 403, 204, 204, 204, 403)),
    ("delete_private", "DELETE", "/api/messages/{privmsg}", None,
     row(401, 404, 204, 204, 204, 404)),
    ("search_all", "GET", "/api/search?q=hello", None, row(401, 200, 200, 200, 200, 200)),
    ("search_private", "GET", "/api/search?q=hello&project_id={priv}", None, PRIVATE_READ),
]

PAGE_MATRIX = [
    ("home", "/", row(302, 200, 200, 200, 200, 200)),
    ("project_public", "/projects/{pub}/", row(302, 403, 200, 200, 200, 403)),
    # A private project is refused as a missing one: no page says it exists.
    ("project_private", "/projects/{priv}/", row(302, 404, 200, 200, 200, 404)),
    ("project_missing", "/projects/{missing}/", row(302, 404, 404, 404, 404, 404)),
    ("search", "/search?q=hello", row(302, 200, 200, 200, 200, 200)),
    ("admin", "/admin/", row(302, 302, 302, 302, 302, 200)),
]

SOCKET_MATRIX = [
    ("public", "{pub}", row(4401, 4403, "open", "open", "open", 4403)),
    ("private", "{priv}", row(4401, 4404, "open", "open", "open", 4404)),
    ("missing", "{missing}", row(4401, 4404, 4404, 4404, 4404, 4404)),
]


def cells(matrix):
    for entry in matrix:
        for role in ROLES:
            yield pytest.param(role, *entry[1:-1], entry[-1][role], id=f"{entry[0]}-{role}")


# --- the world every cell runs in --------------------------------------------------


@pytest.fixture
def world(db):
    from accounts.models import User
    from chat.actions import do_send_message
    from projects.actions import do_create_project
    from projects.models import Membership

    users = {}
    for name in ("owner", "admin", "member", "nonmember", "staff", "newcomer"):
        users[name] = User.objects.create_user(
            name, f"{name}@example.com", "pw-secret-1", is_staff=(name == "staff")
        )
    pub = do_create_project(users["owner"], name="Public")
    priv = do_create_project(users["owner"], name="Private", is_private=True)
    for project in (pub, priv):
        Membership.objects.create(user=users["admin"], project=project,
                                  role=Membership.Role.ADMIN)
        Membership.objects.create(user=users["member"], project=project)
    msg, _ = do_send_message(users["member"], pub.pk, "hello public")
    privmsg, _ = do_send_message(users["member"], priv.pk, "hello private")
    ids = {"pub": pub.pk, "priv": priv.pk, "msg": msg.pk, "privmsg": privmsg.pk,
           "missing": MISSING}
    return users, ids


def fill(value, ids):
    """Put the world's ids into a path or a body; "{pub}" alone becomes a number."""
    if isinstance(value, str):
        if re.fullmatch(r"\{\w+\}", value):
            return ids[value[1:-1]]
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    return value


def client_for(role, users):
    """A browser-like client (CSRF enforced) signed in as the role, with its token."""
    client = Client(enforce_csrf_checks=True)
    if role != "anonymous":
        client.force_login(users[role])
    client.csrf = client.get("/api/auth/csrf").json()["csrf_token"]
    return client


def call(client, method, path, body=None, csrf=True):
    headers = {"HTTP_X_CSRFTOKEN": client.csrf} if csrf else {}
    data = orjson.dumps(body) if body is not None else None
    kwargs = {"content_type": "application/json", "data": data} if data is not None else {}
    return getattr(client, method.lower())(path, **kwargs, **headers)


def assert_error_shape(response):
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "fields"}, body
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["fields"], dict)


# --- the API ------------------------------------------------------------------------


@pytest.mark.parametrize("role,method,path,body,expected", list(cells(API_MATRIX)))
def test_api_cell(world, role, method, path, body, expected):
    users, ids = world
    client = client_for(role, users)
    response = call(client, method, fill(path, ids), fill(body, ids))
    assert response.status_code == expected, response.content[:300]
    if expected >= 400:
        assert_error_shape(response)


UNSAFE = [e for e in API_MATRIX if e[1] in ("POST", "PATCH", "DELETE") and e[0] != "logout"]


@pytest.mark.parametrize("name,method,path,body", [e[:4] for e in UNSAFE],
                         ids=[e[0] for e in UNSAFE])
def test_unsafe_call_without_csrf_token_is_refused(world, name, method, path, body):
    users, ids = world
    client = client_for("owner", users)
    response = call(client, method, fill(path, ids), fill(body, ids), csrf=False)
    assert response.status_code == 403
    assert_error_shape(response)
    assert response.json()["error"]["code"] == "csrf_failed"


def test_login_without_csrf_token_is_refused(world):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/auth/login", {"username": "member", "password": "pw-secret-1"},
                           content_type="application/json")
    assert response.status_code == 403
    assert_error_shape(response)


# --- pages --------------------------------------------------------------------------


@pytest.fixture
def csp_on():
    """The CSP middleware, whether or not settings.MIDDLEWARE lists it yet."""
    middleware = list(settings.MIDDLEWARE)
    if CSP_MIDDLEWARE not in middleware:
        index = middleware.index("django.middleware.security.SecurityMiddleware") + 1
        middleware.insert(index, CSP_MIDDLEWARE)
    with override_settings(MIDDLEWARE=middleware):
        yield


@pytest.mark.parametrize("role,path,expected", list(cells(PAGE_MATRIX)))
def test_page_cell(world, csp_on, role, path, expected):
    users, ids = world
    client = client_for(role, users)
    response = client.get(fill(path, ids))
    assert response.status_code == expected
    if expected == 302:
        target = "/admin/login/" if path == "/admin/" else "/login"
        assert response["Location"].startswith(target)
    else:
        assert "Content-Security-Policy" in response
        assert_page_satisfies_csp(response.content.decode())


INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)([^>]*)>", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I)
EVENT_ATTRIBUTE = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)


def assert_page_satisfies_csp(html):
    """No script runs inline and nothing is styled inline (script-src/style-src 'self')."""
    for attributes in INLINE_SCRIPT.findall(html):
        assert 'type="application/json"' in attributes, f"inline <script{attributes}>"
    assert not STYLE_ATTRIBUTE.search(html), STYLE_ATTRIBUTE.search(html).group(0)
    assert not EVENT_ATTRIBUTE.search(html), EVENT_ATTRIBUTE.search(html).group(0)
    assert not re.search(r"<style\b", html, re.I), "inline <style> block"
    assert "javascript:" not in html.lower()


def test_content_security_policy_is_the_strict_one(world, csp_on):
    users, _ = world
    client = client_for("member", users)
    policy = client.get("/")["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "ws:" in directives["connect-src"] and "wss:" in directives["connect-src"]
    # The sign-in page and API answers carry it too.
    assert Client().get("/login")["Content-Security-Policy"] == policy
    assert client.get("/api/auth/me")["Content-Security-Policy"] == policy


def test_sign_in_page_satisfies_csp(db, csp_on):
    response = Client().get("/login")
    assert response.status_code == 200
    assert_page_satisfies_csp(response.content.decode())


# The staff-only performance page keeps its inline <style> (it is served with
# style-src 'unsafe-inline', see chat/csp.py); every other template is strict.
CSP_EXEMPT_TEMPLATES = {"admin/performance.html"}


def test_templates_have_no_inline_script_or_style():
    checked = 0
    for path in sorted(TEMPLATES_DIR.rglob("*.html")):
        name = path.relative_to(TEMPLATES_DIR).as_posix()
        if name in CSP_EXEMPT_TEMPLATES:
            continue
        checked += 1
        assert_page_satisfies_csp(path.read_text())
    assert checked >= 8


# --- sessions and cookies -----------------------------------------------------------


def login_response(client, username="member", password="pw-secret-1"):
    token = client.get("/api/auth/csrf").json()["csrf_token"]
    return client.post("/api/auth/login", {"username": username, "password": password},
                       content_type="application/json", HTTP_X_CSRFTOKEN=token)


def test_session_key_is_rotated_on_login(world):
    from importlib import import_module

    from django.contrib.sessions.backends.base import SessionBase

    client = Client(enforce_csrf_checks=True)
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store["planted"] = "by an attacker"
    store.create()
    before = store.session_key
    client.cookies[settings.SESSION_COOKIE_NAME] = before
    response = login_response(client)
    assert response.status_code == 200
    after = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert after and after != before
    assert isinstance(store, SessionBase)
    assert not import_module(settings.SESSION_ENGINE).SessionStore().exists(before)
    assert client.get("/api/auth/me").json()["user"]["username"] == "member"


def test_session_cookie_is_httponly_and_samesite(world):
    response = login_response(Client(enforce_csrf_checks=True))
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    csrf_cookie = response.cookies.get(settings.CSRF_COOKIE_NAME) or Client().get(
        "/api/auth/csrf").cookies[settings.CSRF_COOKIE_NAME]
    assert csrf_cookie["samesite"] == "Lax"


@pytest.mark.postgres
@pytest.mark.redis
def test_production_login_cookies_are_secure_httponly_samesite(world):
    if not settings.PRODUCTION:
        pytest.skip("production shape only (DATABASE_URL postgres and REDIS_URL)")
    if not settings.SESSION_COOKIE_SECURE:
        pytest.skip("SESSION_COOKIE_SECURE was turned off in this environment")
    client = Client(enforce_csrf_checks=True)
    response = login_response(client)
    assert response.status_code == 200
    raw = response.cookies[settings.SESSION_COOKIE_NAME].output()
    assert "HttpOnly" in raw and "Secure" in raw and "SameSite=Lax" in raw, raw
    csrf_raw = client.get("/api/auth/csrf").cookies.get(settings.CSRF_COOKIE_NAME)
    csrf_raw = csrf_raw.output() if csrf_raw else response.cookies[
        settings.CSRF_COOKIE_NAME].output()
    assert "Secure" in csrf_raw and "SameSite=Lax" in csrf_raw, csrf_raw
    assert settings.SECURE_HSTS_SECONDS > 0


# --- the socket ----------------------------------------------------------------------


def socket_app():
    return StrictOriginValidator(URLRouter(websocket_urlpatterns))


async def socket_outcome(user, path, origin=b"http://testserver"):
    """Return "open" (hello received, ping answered), a close code, or "refused"."""
    headers = [(b"origin", origin)] if origin is not None else []
    comm = WebsocketCommunicator(socket_app(), path, headers=headers)
    comm.scope["user"] = user
    try:
        connected, _ = await comm.connect(timeout=5)
        if not connected:
            return "refused"
        out = await comm.receive_output(timeout=5)
        if out["type"] == "websocket.close":
            return out["code"]
        assert orjson.loads(out["text"])["type"] == "hello"
        await comm.send_to(text_data='{"type":"ping"}')
        while True:
            frame = orjson.loads(await comm.receive_from(timeout=5))
            if frame["type"] == "pong":
                return "open"
    finally:
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role,project,expected", list(cells(SOCKET_MATRIX)))
async def test_socket_cell(world, role, project, expected):
    users, ids = world
    user = AnonymousUser() if role == "anonymous" else users[role]
    path = f"/ws/projects/{fill(project, ids)}/"
    assert await socket_outcome(user, path) == expected


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", [None, b"http://evil.example.com", b"null",
                                    b"http://testserver.evil.example.com"])
async def test_cross_site_socket_is_refused(world, origin):
    users, ids = world
    path = f"/ws/projects/{ids['pub']}/"
    assert await socket_outcome(users["owner"], path, origin=origin) == "refused"
