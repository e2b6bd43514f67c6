"""Open sign-up (ALLOW_SIGNUP), /settings and POST /api/auth/password: the password
change keeps this session, signs the others out and closes every socket 4401."""

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client, override_settings

from accounts.models import User
from chat.realtime.frames import CLOSE_NOT_SIGNED_IN
from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from chatsite.socket_auth import SocketAuthMiddleware
from conftest import assert_error, login_client

NEW_PASSWORD = "correct-horse-battery-9"
OLD_PASSWORD = "pw-secret-1"  # conftest's make_user


def change(client, old=OLD_PASSWORD, new=NEW_PASSWORD):
    return client.post("/api/auth/password", {"old_password": old, "new_password": new},
                       content_type="application/json")


# --- ALLOW_SIGNUP ---------------------------------------------------------------------


@pytest.mark.django_db
def test_signup_is_404_when_not_allowed():
    assert settings.ALLOW_SIGNUP is False  # the default
    client = Client()
    assert client.get("/signup").status_code == 404
    response = client.post("/signup", {"username": "newbie", "email": "n@example.com",
                                       "password": NEW_PASSWORD})
    assert response.status_code == 404
    assert not User.objects.filter(username="newbie").exists()


@pytest.mark.django_db
@override_settings(ALLOW_SIGNUP=True)
def test_open_signup_creates_the_account_signs_in_and_lands_home():
    client = Client()
    page = client.get("/signup")
    assert page.status_code == 200 and 'name="password"' in page.content.decode()

    response = client.post("/signup", {"username": "newbie", "email": "N@Example.COM",
                                       "password": NEW_PASSWORD})

    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(username="newbie")
    assert user.email == "N@example.com"  # the domain is normalised
    assert not user.memberships.exists()
    assert client.get("/api/auth/me").json()["user"]["id"] == user.pk
    assert client.get("/signup").status_code == 302  # signed in: nothing to sign up


@pytest.mark.django_db
@override_settings(ALLOW_SIGNUP=True)
def test_open_signup_refusals_are_422_with_field_errors(make_user):
    make_user("taken")
    response = Client().post("/signup", {"username": "TAKEN", "email": "taken@example.com",
                                         "password": "123"})
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert set(errors) == {"username", "email", "password"}  # each field says what is wrong
    response = Client().post("/signup", {"username": "fresh", "email": "fresh@example.com",
                                         "password": "qwertyuiop"})
    assert response.status_code == 422
    assert "too common" in " ".join(response.context["form"].errors["password"])
    assert not User.objects.filter(username__in=["TAKEN", "fresh"]).exists()


@pytest.mark.django_db
@override_settings(ALLOW_SIGNUP=True)
def test_open_signup_is_under_the_sign_in_throttle():
    client = Client()
    for i in range(settings.LOGIN_FAILURE_LIMIT):
        assert client.post("/signup", {"username": f"x{i}", "email": "bad",
                                       "password": "p"}).status_code == 422
    response = client.post("/signup", {"username": "newbie", "email": "n@example.com",
                                       "password": NEW_PASSWORD})
    assert response.status_code == 429
    assert not User.objects.filter(username="newbie").exists()


# --- POST /api/auth/password -----------------------------------------------------------


@pytest.mark.django_db
def test_password_change_keeps_this_session_and_signs_out_the_others(member):
    changing = login_client(member, enforce_csrf=True)
    changing.get("/api/auth/csrf")
    other = login_client(member)
    token = changing.cookies[settings.CSRF_COOKIE_NAME].value

    response = changing.post("/api/auth/password",
                             {"old_password": OLD_PASSWORD, "new_password": NEW_PASSWORD},
                             content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 204, response.content
    member.refresh_from_db()
    assert member.check_password(NEW_PASSWORD) and not member.check_password(OLD_PASSWORD)
    assert changing.get("/api/auth/me").status_code == 200
    assert_error(other.get("/api/auth/me"), 401, "not_authenticated")


@pytest.mark.django_db
def test_a_wrong_old_password_is_422_and_changes_nothing(member):
    client = login_client(member)
    error = assert_error(change(client, old="not-it"), 422, "invalid")
    assert error["fields"] == {"old_password": "wrong"}
    member.refresh_from_db()
    assert member.check_password(OLD_PASSWORD)


@pytest.mark.django_db
@pytest.mark.parametrize("new, code, text", [
    ("short", "password_too_short", "too short"),
    ("password1234", "password_too_common", "too common"),
    ("member12", "password_too_similar", "too similar"),
])
def test_validator_failures_are_422_with_their_messages(member, new, code, text):
    error = assert_error(change(login_client(member), new=new), 422, "invalid")
    assert code in error["fields"]["new_password"].split(",")
    assert text in error["message"]
    member.refresh_from_db()
    assert member.check_password(OLD_PASSWORD)


@pytest.mark.django_db
def test_missing_or_mistyped_fields_are_refused(member):
    client = login_client(member)
    assert_error(client.post("/api/auth/password", {"old_password": OLD_PASSWORD},
                             content_type="application/json"), 422)
    assert_error(client.post("/api/auth/password", {"old_password": OLD_PASSWORD,
                                                    "new_password": 12345678901},
                             content_type="application/json"), 422)
    assert_error(client.post("/api/auth/password", b"{", content_type="application/json"),
                 400)


@pytest.mark.django_db
def test_signed_out_or_without_csrf_is_refused(member):
    assert_error(change(Client()), 401)
    assert_error(change(login_client(member, enforce_csrf=True)), 403, "csrf_failed")


@pytest.mark.django_db
def test_wrong_old_passwords_share_the_sign_in_throttle(member):
    client = login_client(member)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert change(client, old="guess").status_code == 422
    error = assert_error(change(client), 429, "rate_limited")
    assert error["message"]
    member.refresh_from_db()
    assert member.check_password(OLD_PASSWORD)  # even the right one waits


@pytest.mark.django_db
def test_failed_sign_ins_for_the_user_throttle_the_password_change(member):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        Client(REMOTE_ADDR="203.0.113.5").post("/login", {"username": "member",
                                                          "password": "guess"})
    assert_error(change(login_client(member)), 429, "rate_limited")


# --- /settings ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_settings_needs_a_session(member):
    response = Client().get("/settings")
    assert response.status_code == 302 and response["Location"].startswith("/login")


@pytest.mark.django_db
def test_settings_saves_a_trimmed_display_name(member):
    client = login_client(member)
    page = client.get("/settings")
    assert page.status_code == 200
    assert 'id="display-name-form"' in page.content.decode()

    response = client.post("/settings", {"form": "display_name",
                                         "display_name": "  Mem Ber  "})

    assert response.status_code == 302
    member.refresh_from_db()
    assert member.display_name == "Mem Ber"
    assert 'value="Mem Ber"' in client.get("/settings").content.decode()


@pytest.mark.django_db
def test_a_display_name_change_is_no_revocation_and_renames_the_dm(
    member, owner, monkeypatch, django_capture_on_commit_callbacks
):
    from chat.realtime import notify
    from projects.dms import check_open_dm

    ended = []
    monkeypatch.setattr(notify, "notify_access_ended", lambda **kw: ended.append(kw))
    check_open_dm(owner, [member.username])
    partner = login_client(owner)
    assert partner.get("/api/projects").json()["items"][0]["name"] == "member"
    client = login_client(member)

    with django_capture_on_commit_callbacks(execute=True):
        client.post("/settings", {"form": "display_name", "display_name": "Mem Ber"})

    assert ended == []  # the user's sockets are not made to check their access
    assert partner.get("/api/projects").json()["items"][0]["name"] == "Mem Ber"


@pytest.mark.django_db
def test_settings_refuses_a_display_name_over_100_characters(member):
    client = login_client(member)
    response = client.post("/settings", {"form": "display_name", "display_name": "x" * 101})
    assert response.status_code == 422
    assert 'id="display-name-errors"' in response.content.decode()
    member.refresh_from_db()
    assert member.display_name == ""
    assert client.post("/settings", {"form": "display_name",
                                     "display_name": "y" * 100}).status_code == 302
    assert client.post("/settings", {"form": "nonsense"}).status_code == 400


@pytest.mark.django_db
def test_settings_changes_the_password_and_signs_out_other_sessions(member):
    client = login_client(member)
    other = login_client(member)
    response = client.post("/settings", {"form": "password", "old_password": OLD_PASSWORD,
                                         "new_password": NEW_PASSWORD})
    assert response.status_code == 302
    assert client.get("/settings").status_code == 200
    assert other.get("/settings").status_code == 302  # to /login
    member.refresh_from_db()
    assert member.check_password(NEW_PASSWORD)


@pytest.mark.django_db
def test_settings_shows_a_wrong_old_password_and_a_weak_new_one(member):
    client = login_client(member)
    response = client.post("/settings", {"form": "password", "old_password": "nope",
                                         "new_password": "short"})
    assert response.status_code == 422
    html = response.content.decode()
    assert "Your current password is wrong." in html and "too short" in html
    member.refresh_from_db()
    assert member.check_password(OLD_PASSWORD)


# --- sockets close 4401 -----------------------------------------------------------------


def socket_app():
    return StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))


async def open_socket(client, project_id):
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    comm = WebsocketCommunicator(
        socket_app(), f"/ws/projects/{project_id}/",
        headers=[(b"origin", b"http://testserver"),
                 (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())])
    connected, code = await comm.connect()
    assert connected, code
    assert orjson.loads(await comm.receive_from(timeout=3))["type"] == "hello"
    return comm


async def close_code(comm, timeout=3):
    while True:
        out = await comm.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return out.get("code")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_password_change_through_the_api_closes_every_socket_of_the_user_4401(
        member, project):
    changing = await sync_to_async(login_client)(member)
    other = await sync_to_async(login_client)(member)
    sockets = [await open_socket(changing, project.pk), await open_socket(other, project.pk)]

    response = await sync_to_async(change)(changing)

    assert response.status_code == 204
    assert [await close_code(comm) for comm in sockets] == [CLOSE_NOT_SIGNED_IN] * 2
    # This session goes on under its new key and opens a socket again; the other cannot.
    again = await open_socket(changing, project.pk)
    await again.disconnect()
    refused = WebsocketCommunicator(
        socket_app(), f"/ws/projects/{project.pk}/",
        headers=[(b"origin", b"http://testserver"),
                 (b"cookie", f"{settings.SESSION_COOKIE_NAME}="
                             f"{other.cookies[settings.SESSION_COOKIE_NAME].value}".encode())])
    connected, _ = await refused.connect()
    if connected:
        assert await close_code(refused) == CLOSE_NOT_SIGNED_IN
    await refused.disconnect()
