"""A direct message in a real browser: opened through the "Message" button, live both ways."""

import re
import time

import pytest

from tests.live import LiveServer, create_users_and_project, login, make_live_env, post_message
from tests.test_browser import CHROMIUM_ARGS, open_page, send_and_see_once

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture(scope="module")
def chat_server():
    env, close = make_live_env()
    project_id = create_users_and_project(env, ["dm_alice", "dm_bob"], "Meeting room")
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def test_alice_messages_bob_from_his_name_and_they_talk_live(chat_server):
    from playwright.sync_api import sync_playwright

    server, room_id = chat_server
    stamp = str(int(time.time()))[-5:]
    bob_session = login(server.url, "dm_bob")
    assert post_message(bob_session, room_id, f"ask me {stamp}").status_code == 201
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, room_id, "dm_alice")
        bobs = alice.locator("li.msg", has=alice.locator(".msg-body", has_text=f"ask me {stamp}"))
        assert alice.locator("li.msg-own .msg-dm").count() == 0  # never on my own
        bobs.get_by_role("button", name="Message").click()
        alice.wait_for_url(re.compile(r".*/projects/\d+/$"))
        dm_id = int(re.search(r"/projects/(\d+)/$", alice.url).group(1))
        assert dm_id != room_id
        assert alice.locator("h1").inner_text() == "dm_bob"
        alice.wait_for_function("() => window.chatClient && window.chatClient.connected",
                                timeout=10000)

        bob = open_page(browser, server, dm_id, "dm_bob")
        assert bob.locator("h1").inner_text() == "dm_alice"
        send_and_see_once(alice, bob, f"just us {stamp}")
        send_and_see_once(bob, alice, f"agreed {stamp}")
        assert alice.errors == [] and bob.errors == []
        browser.close()
