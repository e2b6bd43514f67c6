"""Access ends at once: every way it can end closes the affected sockets, and
nothing sent after the revocation reaches them; the cache and the pages refuse
at once too (docs/RELIABILITY.md, "Threat model").

Each test opens the revoked user's socket and a bystander's socket on the same
project, revokes, then sends a message: the bystander receives it (so it was
broadcast), the revoked socket is closed with the documented code and never
received it.
"""

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client, override_settings

from chat.realtime import notify
from chat.realtime.frames import (
    CLOSE_NOT_MEMBER,
    CLOSE_NOT_SIGNED_IN,
    CLOSE_TOO_MANY_SOCKETS,
)
from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from chatsite.socket_auth import SocketAuthMiddleware

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def app():
    return StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))


def signed_in_client(user):
    client = Client()
    client.force_login(user)
    return client


async def open_socket(client, project_id):
    """A socket authenticated by the client's session cookie, as a browser's."""
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    comm = WebsocketCommunicator(
        app(), f"/ws/projects/{project_id}/",
        headers=[(b"origin", b"http://testserver"),
                 (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())],
    )
    connected, code = await comm.connect()
    assert connected, code
    hello = orjson.loads(await comm.receive_from(timeout=3))
    assert hello["type"] == "hello", hello
    return comm


async def frames_until_close(comm, timeout=3):
    """Every frame up to the close; returns (frames, close code)."""
    frames = []
    while True:
        out = await comm.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return frames, out.get("code")
        frames.append(orjson.loads(out["text"]))


async def receive_message(comm, content, timeout=3):
    """Frames until a message_batch carrying `content` arrives."""
    while True:
        frame = orjson.loads(await comm.receive_from(timeout=timeout))
        if frame["type"] == "message_batch" and any(
                m["content"] == content for m in frame["messages"]):
            return frame


def contents(frames):
    return [m["content"] for f in frames if f["type"] == "message_batch"
            for m in f["messages"]]


async def send(user, project_id, content):
    from chat.actions import do_send_message

    # On the sync thread the sockets' database work uses too (SQLite locks otherwise).
    await sync_to_async(do_send_message)(user, project_id, content)


async def assert_revoked(revoked, bystander, sender, project_id, code):
    """After a revocation: a message sent now reaches the bystander, never the revoked."""
    await send(sender, project_id, "after the revocation")
    await receive_message(bystander, "after the revocation")
    frames, closed_with = await frames_until_close(revoked)
    assert closed_with == code
    assert "after the revocation" not in contents(frames)


@pytest.fixture
def people(owner, member, make_user, project):
    """The project with the owner, the member and a bystander member, each signed in."""
    from projects.actions import do_join_project

    bystander = make_user("bystander")
    do_join_project(bystander, project.pk)
    return {"owner": owner, "member": member, "bystander": bystander,
            "clients": {u.username: signed_in_client(u) for u in (owner, member, bystander)}}


async def open_pair(people, project):
    clients = people["clients"]
    return (await open_socket(clients["member"], project.pk),
            await open_socket(clients["bystander"], project.pk))


async def test_leaving_closes_the_socket_4403(people, project):
    member_socket, bystander_socket = await open_pair(people, project)
    from projects.actions import do_leave_project

    await sync_to_async(do_leave_project)(people["member"], project.pk)
    await assert_revoked(member_socket, bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_MEMBER)
    await bystander_socket.disconnect()


async def test_removal_by_an_admin_closes_the_socket_4403(people, project):
    """Removal in Django admin (the membership's delete action)."""
    from projects.models import Membership

    member_socket, bystander_socket = await open_pair(people, project)

    def remove_in_admin():
        staff = signed_in_client(type(people["owner"]).objects.create_superuser(
            "root", "root@example.com", "pw-secret-1"))
        membership = Membership.objects.get(user=people["member"], project=project)
        response = staff.post("/admin/projects/membership/", {
            "action": "delete_selected", "_selected_action": [membership.pk], "post": "yes"})
        assert response.status_code == 302, response.content[:500]
        assert not Membership.objects.filter(pk=membership.pk).exists()

    await sync_to_async(remove_in_admin)()
    await assert_revoked(member_socket, bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_MEMBER)
    await bystander_socket.disconnect()


async def test_deactivated_user_socket_closes_4401(people, project):
    member_socket, bystander_socket = await open_pair(people, project)
    member = people["member"]

    def deactivate():
        member.is_active = False
        member.save()

    await sync_to_async(deactivate)()
    await assert_revoked(member_socket, bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_SIGNED_IN)
    await bystander_socket.disconnect()


async def test_password_change_closes_the_users_sockets_4401(people, project):
    """Every socket of the user closes; the session that changed the password
    goes on under its new key (Django rotates it) and opens a socket again."""
    member = people["member"]
    changing = people["clients"]["member"]
    other_session = await sync_to_async(signed_in_client)(member)
    sockets = [await open_socket(changing, project.pk), await open_socket(other_session, project.pk)]
    bystander_socket = await open_socket(people["clients"]["bystander"], project.pk)

    def change_password():
        # As a password form should: the new hash and the changing session's
        # new hash commit together, so the check after commit sees both.
        from django.contrib.auth import update_session_auth_hash
        from django.db import transaction
        from django.http import HttpRequest

        from accounts.models import User

        with transaction.atomic():
            user = User.objects.get(pk=member.pk)
            user.set_password("a-new-password-2")
            user.save()
            request = HttpRequest()
            request.user = user
            engine = __import__(settings.SESSION_ENGINE, fromlist=["SessionStore"])
            request.session = engine.SessionStore(
                changing.cookies[settings.SESSION_COOKIE_NAME].value)
            update_session_auth_hash(request, user)
            request.session.save()
        changing.cookies[settings.SESSION_COOKIE_NAME] = request.session.session_key

    await sync_to_async(change_password)()
    await assert_revoked(sockets[0], bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_SIGNED_IN)
    frames, code = await frames_until_close(sockets[1])
    assert code == CLOSE_NOT_SIGNED_IN
    assert "after the revocation" not in contents(frames)
    again = await open_socket(changing, project.pk)
    for comm in (again, bystander_socket):
        await comm.disconnect()


async def test_sign_out_closes_that_sessions_sockets_4401(people, project):
    member = people["member"]
    other_session = await sync_to_async(signed_in_client)(member)
    staying = await open_socket(other_session, project.pk)
    member_socket, bystander_socket = await open_pair(people, project)

    response = await sync_to_async(people["clients"]["member"].post)("/api/auth/logout")
    assert response.status_code == 204
    await assert_revoked(member_socket, bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_SIGNED_IN)
    # Signing out one browser leaves the user's other session open.
    await receive_message(staying, "after the revocation")
    for comm in (staying, bystander_socket):
        await comm.disconnect()


async def test_admin_deactivating_a_project_closes_its_sockets_and_refuses_reads(
        people, project):
    member_socket, bystander_socket = await open_pair(people, project)
    clients = people["clients"]
    # Warm what a reader has cached: the history page and the access entry.
    for name in ("member", "bystander"):
        response = await sync_to_async(clients[name].get)(f"/api/projects/{project.pk}/messages")
        assert response.status_code == 200

    def deactivate_in_admin():
        staff = signed_in_client(type(people["owner"]).objects.create_superuser(
            "root", "root@example.com", "pw-secret-1"))
        response = staff.post("/admin/projects/project/", {
            "action": "deactivate_selected", "_selected_action": [project.pk]})
        assert response.status_code == 302

    await sync_to_async(deactivate_in_admin)()
    frames, code = await frames_until_close(member_socket)
    assert code == CLOSE_NOT_MEMBER
    _, code = await frames_until_close(bystander_socket)
    assert code == CLOSE_NOT_MEMBER
    for name in ("member", "bystander"):
        response = await sync_to_async(clients[name].get)(f"/api/projects/{project.pk}/messages")
        assert response.status_code == 404
        response = await sync_to_async(clients[name].post)(
            "/api/messages", {"project_id": project.pk, "content": "still here?"},
            content_type="application/json")
        assert response.status_code == 404


async def test_a_spurious_revocation_closes_nothing_and_holds_nothing_back(people, project):
    """A check that finds access intact releases what it held, in order."""
    member_socket, bystander_socket = await open_pair(people, project)
    from django.db import transaction

    def spurious():
        with transaction.atomic():
            notify.notify_access_ended(project_id=project.pk)
            notify.notify_access_ended(user_id=people["member"].pk)

    await sync_to_async(spurious)()
    await send(people["owner"], project.pk, "still a member")
    await receive_message(member_socket, "still a member")
    await receive_message(bystander_socket, "still a member")
    for comm in (member_socket, bystander_socket):
        await comm.disconnect()


async def test_a_revocation_heard_while_connecting_is_checked_again(people, project):
    """The socket was checked before the leave and joined its hub after the event:
    it is closed before anything (hello, replay, live) is sent."""
    from projects.actions import do_leave_project

    member = people["member"]
    from chat import consumers

    real_join = consumers.join_project

    async def join_after_the_leave(project_id, consumer):
        await sync_to_async(do_leave_project)(member, project_id)
        await asyncio.sleep(0.05)  # the event is heard before the socket is in its hub
        return await real_join(project_id, consumer)

    consumers.join_project = join_after_the_leave
    session_key = people["clients"]["member"].cookies[settings.SESSION_COOKIE_NAME].value
    member_socket = WebsocketCommunicator(
        app(), f"/ws/projects/{project.pk}/?after=0",
        headers=[(b"origin", b"http://testserver"),
                 (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())])
    try:
        await member_socket.connect()
        frames, code = await frames_until_close(member_socket)
    finally:
        consumers.join_project = real_join
    assert code == CLOSE_NOT_MEMBER
    assert frames == []


@override_settings(WS_MAX_SOCKETS_PER_USER=2)
async def test_sockets_over_the_per_user_limit_close_4429(people, project):
    client = people["clients"]["member"]
    first = await open_socket(client, project.pk)
    second = await open_socket(client, project.pk)
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    third = WebsocketCommunicator(app(), f"/ws/projects/{project.pk}/", headers=[
        (b"origin", b"http://testserver"),
        (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode())])
    await third.connect()
    _, code = await frames_until_close(third)
    assert code == CLOSE_TOO_MANY_SOCKETS
    # A closed socket frees its place.
    await first.disconnect()
    again = await open_socket(client, project.pk)
    for comm in (second, again):
        await comm.disconnect()
