"""Sends are limited per user, HTTP and sockets together (chat.actions.validate_send_rate);
the limiter fails open when the cache is unreachable."""

import types
import uuid

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from chat.models import Message
from chat.routing import websocket_urlpatterns
from chatsite import cache as chat_cache
from chatsite.origin import StrictOriginValidator
from conftest import assert_error, login_client

# 2.25 s into a 10 s window: Retry-After is the 7.75 s left, rounded up.
NOW = 1_700_000_002.25
LIMITED = override_settings(SEND_RATE_PER_USER=3, SEND_RATE_WINDOW_SECONDS=10)


@pytest.fixture
def clock(monkeypatch):
    """A still clock for the counters, so no test straddles a window's end."""
    import time

    monkeypatch.setattr(chat_cache, "time", types.SimpleNamespace(
        time=lambda: NOW, monotonic=time.monotonic, sleep=time.sleep))


@pytest.fixture
def no_owed_bumps():
    yield
    with chat_cache._owed_guard:
        chat_cache._owed.clear()
        chat_cache._owed_state["next_try"] = 0.0


def post(client, project, content, client_msg_id=None):
    data = {"project_id": project.pk, "content": content}
    if client_msg_id is not None:
        data["client_msg_id"] = client_msg_id
    return client.post("/api/messages", data, content_type="application/json")


def stored(project):
    return Message.objects.filter(project_id=project.pk).count()


@pytest.mark.django_db
@LIMITED
def test_the_send_over_the_limit_is_429_with_retry_after_and_stores_nothing(
    project, client_member, clock
):
    for i in range(3):
        assert post(client_member, project, f"m{i}").status_code == 201

    response = post(client_member, project, "one too many")

    assert_error(response, 429, "rate_limited")
    assert response["Retry-After"] == "8"
    assert stored(project) == 3


@pytest.mark.django_db
@LIMITED
def test_the_limit_is_per_user(project, client_member, client_owner, clock):
    for i in range(3):
        assert post(client_member, project, f"m{i}").status_code == 201
    assert post(client_owner, project, "mine").status_code == 201
    assert post(client_member, project, "again").status_code == 429


@pytest.mark.django_db
@LIMITED
def test_retries_of_a_stored_send_use_no_allowance_and_get_their_answer(
    project, client_member, clock
):
    cid = str(uuid.uuid4())
    first = post(client_member, project, "once", cid)
    assert first.status_code == 201
    for _ in range(3):  # retries answer the stored message and give their count back
        assert post(client_member, project, "once", cid).status_code == 200
    assert post(client_member, project, "two").status_code == 201
    assert post(client_member, project, "three").status_code == 201
    assert post(client_member, project, "four").status_code == 429
    # Over the limit, a retry of a stored send still gets its message.
    retry = post(client_member, project, "once", cid)
    assert (retry.status_code, retry.json()["id"]) == (200, first.json()["id"])
    assert stored(project) == 3


@pytest.mark.django_db
@override_settings(SEND_RATE_PER_USER=1)
def test_sends_are_not_limited_while_the_cache_is_unreachable(
    project, client_member, monkeypatch, no_owed_bumps
):
    class DownCache:
        """Every call fails as a Redis client does when Redis is gone."""

        def __getattr__(self, name):
            if name == "client":  # django-redis: cache.client.get_client()
                return self

            def fail(*args, **kwargs):
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

            return fail

    monkeypatch.setattr(chat_cache, "cache", DownCache())
    for i in range(3):
        assert post(client_member, project, f"m{i}").status_code == 201
    assert stored(project) == 3


DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.redis
@pytest.mark.django_db
def test_sends_are_not_limited_with_redis_down(settings, project, member, no_owed_bumps):
    client = login_client(member)
    # All through the settings fixture: an override_settings decorator would be
    # undone before the fixture's, which would then restore the decorator's.
    settings.SEND_RATE_PER_USER = 1
    base = settings.CACHES["default"]
    settings.CACHES = {
        "default": {**base, "LOCATION": DEAD_REDIS},
        "sessions": {**settings.CACHES["sessions"], "LOCATION": DEAD_REDIS},
    }
    for i in range(3):
        assert post(client, project, f"m{i}").status_code == 201
    assert stored(project) == 3


# --- HTTP and socket sends share one count ----------------------------------------------


async def open_socket(user, project_id):
    app = StrictOriginValidator(URLRouter(websocket_urlpatterns))
    comm = WebsocketCommunicator(app, f"/ws/projects/{project_id}/",
                                 headers=[(b"origin", b"http://testserver")])
    comm.scope["user"] = user
    connected, code = await comm.connect()
    assert connected, code
    assert orjson.loads(await comm.receive_from(timeout=2))["type"] == "hello"
    return comm


async def answer_to(comm, cid):
    """The ack or error frame answering the send with this client_msg_id."""
    while True:
        frame = orjson.loads(await comm.receive_from(timeout=2))
        if frame["type"] in ("ack", "error") and frame.get("client_msg_id") == cid:
            return frame


async def send_over(comm, content):
    cid = str(uuid.uuid4())
    await comm.send_to(text_data=orjson.dumps(
        {"type": "message.send", "content": content, "client_msg_id": cid}).decode())
    return await answer_to(comm, cid)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@LIMITED
async def test_http_and_socket_sends_count_together(member, project, clock):
    client = await sync_to_async(login_client)(member)
    for i in range(2):
        response = await sync_to_async(post)(client, project, f"http {i}")
        assert response.status_code == 201
    comm = await open_socket(member, project.pk)
    try:
        assert (await send_over(comm, "socket 0"))["type"] == "ack"
        refused = await send_over(comm, "socket 1")
        assert (refused["type"], refused["code"]) == ("error", "rate_limited")
        response = await sync_to_async(post)(client, project, "http 2")
        assert_error(response, 429, "rate_limited")
    finally:
        await comm.disconnect()
    assert await sync_to_async(stored)(project) == 3
