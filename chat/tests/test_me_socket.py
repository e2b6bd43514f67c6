"""The user-level socket /ws/me/, frame by frame (docs/PROTOCOL.md, "/ws/me/").

Runs in both shapes: on the embedded default the user events go through the
in-memory channel layer, in production shape through channels-redis and the
hubs through Redis pub/sub.
"""

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from django.test import Client

from chat.realtime.frames import CLOSE_NOT_SIGNED_IN
from chat.routing import websocket_urlpatterns
from chatsite.origin import StrictOriginValidator
from chatsite.socket_auth import SocketAuthMiddleware

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

ORIGIN = (b"origin", b"http://testserver")


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """A layer per test: channels-redis keeps per-loop state, and each test has its loop."""
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    yield
    channel_layers.backends.pop("default", None)


def app():
    return StrictOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns)))


async def open_me(user=None, client=None, origin=True):
    """A /ws/me/ socket; by `user` in the scope, or by `client`'s session cookie."""
    headers = [ORIGIN] if origin else []
    if client is not None:
        key = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={key}".encode()))
    comm = WebsocketCommunicator(app(), "/ws/me/", headers=headers)
    if user is not None:
        comm.scope["user"] = user
    connected, code = await comm.connect()
    if not origin:
        assert not connected
        return comm
    assert connected, code
    comm.hello = await receive(comm)
    assert comm.hello["type"] == "hello", comm.hello
    return comm


async def receive(comm, timeout=3):
    return orjson.loads(await comm.receive_from(timeout=timeout))


async def update_until(comm, project_id, predicate, timeout=3):
    """project_update frames of the project until one satisfies `predicate`."""
    while True:
        frame = await receive(comm, timeout)
        if frame["type"] == "project_update" and frame["project_id"] == project_id:
            if predicate(frame):
                return frame


async def send(user, project_id, content):
    from chat.actions import do_send_message

    return (await sync_to_async(do_send_message)(user, project_id, content))[0]


def by_id(hello):
    return {p["id"]: p for p in hello["projects"]}


def signed_in_client(user):
    client = Client()
    client.force_login(user)
    return client


async def closed_with(comm, timeout=3):
    while True:
        out = await comm.receive_output(timeout=timeout)
        if out["type"] == "websocket.close":
            return out.get("code")


# --- hello ------------------------------------------------------------------------------


async def test_hello_lists_my_projects_with_their_counts(owner, member, project, make_user):
    from projects.actions import do_create_project

    await send(owner, project.pk, "one")
    await send(owner, project.pk, "two @member")
    await send(member, project.pk, "mine")  # my own: not unread
    other = await sync_to_async(do_create_project)(owner, name="Not mine")
    comm = await open_me(member)
    projects = by_id(comm.hello)
    assert set(projects) == {project.pk}  # not the project I am not in
    item = projects[project.pk]
    assert (item["unread_count"], item["mention_count"], item["seq"]) == (2, 1, 3)
    assert item["name"] == "General" and item["kind"] == "project"
    assert other.pk not in projects
    await comm.disconnect()


# --- live counts ------------------------------------------------------------------------


async def test_a_message_by_another_member_counts_unread(owner, member, project):
    comm = await open_me(member)
    await send(owner, project.pk, "hello")
    frame = await update_until(comm, project.pk, lambda f: True)
    assert frame == {"type": "project_update", "project_id": project.pk, "seq": 1,
                     "unread_count": 1, "mention_count": 0}
    await comm.disconnect()


@pytest.mark.parametrize("text", ["hi @member", "hi @all"])
async def test_a_mention_of_me_or_all_counts_and_asks_to_notify(owner, member, project, text):
    comm = await open_me(member)
    await send(owner, project.pk, text)
    frame = await update_until(comm, project.pk, lambda f: True)
    assert (frame["unread_count"], frame["mention_count"]) == (1, 1)
    assert frame["notify"] == {"seq": 1, "user": "owner", "mention": True, "excerpt": text}
    await comm.disconnect()


async def test_my_own_messages_send_no_update(owner, member, project):
    comm = await open_me(member)
    await send(member, project.pk, "by me")
    await send(member, project.pk, "by me @all")
    assert await comm.receive_nothing(timeout=0.5)
    await send(owner, project.pk, "by the owner")
    # The next frame is the owner's message alone: my two were never counted.
    frame = await receive(comm)
    assert (frame["type"], frame["seq"], frame["unread_count"], frame["mention_count"]) == (
        "project_update", 3, 1, 0)
    await comm.disconnect()


async def test_deleting_an_unread_mention_counts_down(owner, member, project):
    from chat.actions import check_delete_message

    comm = await open_me(member)
    message = await send(owner, project.pk, "@member look")
    await update_until(comm, project.pk, lambda f: f["mention_count"] == 1)
    await sync_to_async(check_delete_message)(owner, message.pk)
    frame = await update_until(comm, project.pk, lambda f: f["seq"] == 2)
    assert (frame["unread_count"], frame["mention_count"]) == (0, 0)
    await comm.disconnect()


async def test_an_edit_adding_or_removing_a_mention_of_me_counts(owner, member, project):
    from chat.actions import check_edit_message

    comm = await open_me(member)
    message = await send(owner, project.pk, "look at this")
    frame = await update_until(comm, project.pk, lambda f: f["seq"] == 1)
    assert (frame["unread_count"], frame["mention_count"]) == (1, 0)
    await sync_to_async(check_edit_message)(owner, message.pk, "look at this @member")
    frame = await update_until(comm, project.pk, lambda f: f["seq"] == 2)
    assert (frame["unread_count"], frame["mention_count"]) == (1, 1)
    assert "notify" not in frame
    await sync_to_async(check_edit_message)(owner, message.pk, "look at this")
    frame = await update_until(comm, project.pk, lambda f: f["seq"] == 3)
    assert (frame["unread_count"], frame["mention_count"]) == (1, 0)
    await comm.disconnect()


async def test_a_burst_is_coalesced_into_few_updates_with_the_final_counts(
        owner, member, project):
    comm = await open_me(member)
    for i in range(20):
        await send(owner, project.pk, f"burst {i}")
    frames = [await update_until(comm, project.pk, lambda f: True)]
    while frames[-1]["unread_count"] < 20:
        frames.append(await update_until(comm, project.pk, lambda f: True))
    assert frames[-1]["seq"] == 20
    # Each frame holds the counts of that moment, in order.
    assert [f["unread_count"] for f in frames] == sorted(f["unread_count"] for f in frames)
    assert len(frames) < 20
    await comm.disconnect()


async def test_a_read_moves_the_counts_to_zero(owner, member, project):
    from projects.actions import do_mark_read

    await send(owner, project.pk, "a @member")
    await send(owner, project.pk, "b")
    comm = await open_me(member)
    assert by_id(comm.hello)[project.pk]["unread_count"] == 2
    await sync_to_async(do_mark_read)(member, project.pk, 2)
    frame = await update_until(comm, project.pk, lambda f: True)
    assert (frame["unread_count"], frame["mention_count"], frame["seq"]) == (0, 0, 2)
    await comm.disconnect()


async def test_a_read_up_to_the_middle_leaves_the_rest_unread(owner, member, project):
    from projects.actions import do_mark_read

    for text in ("a", "b @member", "c"):
        await send(owner, project.pk, text)
    comm = await open_me(member)
    await sync_to_async(do_mark_read)(member, project.pk, 1)
    frame = await update_until(comm, project.pk, lambda f: True)
    assert (frame["unread_count"], frame["mention_count"]) == (2, 1)
    await comm.disconnect()


# --- memberships ------------------------------------------------------------------------


async def test_joining_sends_membership_joined_then_its_updates(owner, project, outsider):
    from projects.actions import do_join_project

    comm = await open_me(outsider)
    assert comm.hello["projects"] == []
    await send(owner, project.pk, "before")
    await sync_to_async(do_join_project)(outsider, project.pk)
    frame = await receive(comm)
    assert (frame["type"], frame["project_id"], frame["state"]) == (
        "membership", project.pk, "joined")
    assert frame["project"]["name"] == "General" and frame["project"]["seq"] == 1
    await send(owner, project.pk, "after")
    update = await update_until(comm, project.pk, lambda f: True)
    assert update["seq"] == 2
    assert update["unread_count"] == frame["project"]["unread_count"] + 1
    await comm.disconnect()


async def test_removal_sends_membership_removed_and_nothing_after(owner, member, project):
    from projects.actions import do_leave_project

    comm = await open_me(member)
    await sync_to_async(do_leave_project)(member, project.pk)
    frame = await receive(comm)
    assert frame == {"type": "membership", "project_id": project.pk, "state": "removed"}
    await send(owner, project.pk, "after the removal")
    assert await comm.receive_nothing(timeout=0.7)
    await comm.disconnect()


# --- access -----------------------------------------------------------------------------


async def test_sign_out_closes_the_sessions_me_socket_4401(member, project):
    client = await sync_to_async(signed_in_client)(member)
    comm = await open_me(client=client)
    response = await sync_to_async(client.post)("/api/auth/logout")
    assert response.status_code == 204
    assert await closed_with(comm) == CLOSE_NOT_SIGNED_IN
    await comm.disconnect()


async def test_password_change_closes_me_sockets_4401(owner, member, project):
    client = await sync_to_async(signed_in_client)(member)
    comm = await open_me(client=client)

    def change_password():
        from accounts.models import User

        user = User.objects.get(pk=member.pk)
        user.set_password("a-new-password-2")
        user.save()

    await sync_to_async(change_password)()
    assert await closed_with(comm) == CLOSE_NOT_SIGNED_IN
    await comm.disconnect()


async def test_anonymous_is_closed_4401():
    from django.contrib.auth.models import AnonymousUser

    comm = WebsocketCommunicator(app(), "/ws/me/", headers=[ORIGIN])
    comm.scope["user"] = AnonymousUser()
    connected, _ = await comm.connect()
    assert connected
    assert await closed_with(comm) == CLOSE_NOT_SIGNED_IN
    await comm.disconnect()


@pytest.mark.parametrize("origin", [None, b"http://evil.example.com"])
async def test_a_foreign_or_missing_origin_is_refused(member, project, origin):
    headers = [(b"origin", origin)] if origin else []
    comm = WebsocketCommunicator(app(), "/ws/me/", headers=headers)
    comm.scope["user"] = member
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


async def test_me_sockets_count_against_the_per_user_limit(member, project):
    from django.test import override_settings

    with override_settings(WS_MAX_SOCKETS_PER_USER=1):
        first = await open_me(member)
        comm = WebsocketCommunicator(app(), "/ws/me/", headers=[ORIGIN])
        comm.scope["user"] = member
        await comm.connect()
        assert await closed_with(comm) == 4429
        await comm.disconnect()
        await first.disconnect()


async def test_the_me_socket_is_nobody_online_in_the_project(owner, member, project):
    """Its listener in the project's hub shows in no presence list."""
    from chat.tests.test_consumers import open_socket, receive_type

    me = await open_me(member)
    page = await open_socket(owner, project.pk)
    seen = []
    while "owner" not in seen:
        frame = await receive_type(page, "presence")
        seen = [u["username"] for u in frame["online"]]
        assert "member" not in seen
    await send(owner, project.pk, "ping")
    await update_until(me, project.pk, lambda f: True)
    for comm in (me, page):
        await comm.disconnect()


# --- cost: no query per member ----------------------------------------------------------


class StatementCounter:
    def __init__(self):
        self.statements = []

    def __call__(self, execute, sql, params, many, context):
        self.statements.append(sql)
        return execute(sql, params, many, context)


@database_sync_to_async
def install(counter):
    connection.execute_wrappers.append(counter)


@database_sync_to_async
def uninstall(counter):
    connection.execute_wrappers.remove(counter)


@pytest.mark.parametrize("listeners", [1, 12])
async def test_a_burst_costs_no_query_per_me_socket(owner, project, make_user, listeners):
    """Every member holds /ws/me/; the burst's statements are the sends' own,
    the same for 1 and 12 listeners: none reads memberships, counts or lists."""
    from projects.actions import do_join_project

    members = [await sync_to_async(make_user)() for _ in range(listeners)]
    for user in members:
        await sync_to_async(do_join_project)(user, project.pk)
    sockets = [await open_me(user) for user in members]
    await send(owner, project.pk, "warm-up")
    for comm in sockets:
        await update_until(comm, project.pk, lambda f: f["seq"] == 1)
    counter = StatementCounter()
    # The sockets' database work and the sends share Channels' one database thread.
    await install(counter)
    try:
        for i in range(10):
            await send(owner, project.pk, f"burst {i}")
        for comm in sockets:
            frame = await update_until(comm, project.pk, lambda f: f["seq"] == 11)
            assert frame["unread_count"] == 11
    finally:
        await uninstall(counter)
    assert len(counter.statements) >= 10  # the sends' own statements were seen
    readers = [sql for sql in counter.statements
               if "projects_membership" in sql or "COUNT(" in sql.upper()]
    assert readers == []
    for comm in sockets:
        await comm.disconnect()
    await asyncio.sleep(0)
