"""Access ends at once through real server processes (docs/RELIABILITY.md, "Threat
model"): the revoked user's sockets, spread over a two-worker server, close with
the documented code when access ends on another server process, and a message
sent after the revocation reaches a bystander but none of them.
"""

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    login,
    make_live_env,
    post_message,
    run_manage,
)

pytestmark = [pytest.mark.live]
SOCKETS = 4  # the revoked user's, over two workers: both processes hold some


@pytest.fixture(scope="module")
def live_env():
    env, close = make_live_env()
    yield env
    close()


async def open_socket(server, project_id, session):
    ws = await connect(f"{server.ws_url}/ws/projects/{project_id}/", origin=server.url,
                       additional_headers={"Cookie": cookie_header(session)})
    assert orjson.loads(await ws.recv())["type"] == "hello"
    return ws


async def until_closed(ws, timeout=5):
    """Contents received until the close, and its code."""
    contents = []
    try:
        async with asyncio.timeout(timeout):
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "message_batch":
                    contents += [m["content"] for m in frame["messages"]]
    except ConnectionClosed:
        pass
    return contents, ws.close_code


async def until_content(ws, content, timeout=5):
    async with asyncio.timeout(timeout):
        async for raw in ws:
            frame = orjson.loads(raw)
            if frame["type"] == "message_batch" and any(
                    m["content"] == content for m in frame["messages"]):
                return


def revoke(way, env, other, project_id, revoked_session, username):
    """End `username`'s access in `way`, on the other server or another process."""
    headers = {"X-CSRFToken": revoked_session.csrf, "Referer": other.url + "/"}
    if way == "leave":
        r = revoked_session.post(f"{other.url}/api/projects/{project_id}/leave",
                                 headers=headers, timeout=10)
        assert r.status_code == 204, r.text
    elif way == "sign_out":
        r = revoked_session.post(f"{other.url}/api/auth/logout", headers=headers, timeout=10)
        assert r.status_code == 204, r.text
    else:
        code = {
            "deactivate_user": f"u = User.objects.get(username={username!r}); "
                               "u.is_active = False; u.save()",
            "password_change": f"u = User.objects.get(username={username!r}); "
                               "u.set_password('another-pw-9'); u.save()",
            "deactivate_project": "from projects.actions import do_deactivate_projects; "
                                  f"do_deactivate_projects([{project_id}])",
        }[way]
        run_manage(env, "shell", "-c", "from accounts.models import User\n" + code)


EXPECTED = {"leave": 4403, "sign_out": 4401, "deactivate_user": 4401,
            "password_change": 4401, "deactivate_project": 4403}


def run_revocation(live_env, way, *, workers, other_server):
    names = [f"{way}-owner", f"{way}-member", f"{way}-bystander"]
    project_id = create_users_and_project(live_env, names, project_name=f"Live {way}")
    server = LiveServer(live_env, workers=workers).start()
    other = LiveServer(live_env).start() if other_server else server
    try:
        owner, member, bystander = (login(server.url, n) for n in names)
        member.base_url = other.url

        async def main():
            revoked = [await open_socket(server, project_id, member) for _ in range(SOCKETS)]
            watcher = await open_socket(server, project_id, bystander)
            await asyncio.to_thread(revoke, way, live_env, other, project_id, member, names[1])
            if way != "deactivate_project":
                r = await asyncio.to_thread(post_message, owner, project_id,
                                            "after the revocation")
                assert r.status_code == 201, r.text
                await until_content(watcher, "after the revocation")
            outcomes = [await until_closed(ws) for ws in revoked]
            await watcher.close()
            return outcomes

        for contents, code in asyncio.run(main()):
            assert code == EXPECTED[way]
            assert "after the revocation" not in contents
        assert "Traceback" not in server.output()
    finally:
        server.stop()
        if other is not server:
            other.stop()


@pytest.mark.redis
@pytest.mark.parametrize("way", list(EXPECTED))
def test_revocation_on_another_process_closes_the_sockets_of_two_workers(live_env, way):
    run_revocation(live_env, way, workers=2, other_server=True)


@pytest.mark.parametrize("way", ["leave", "sign_out"])
def test_revocation_closes_the_sockets_on_one_server(live_env, way):
    """The embedded default: one process, its own bus."""
    run_revocation(live_env, way, workers=1, other_server=False)
