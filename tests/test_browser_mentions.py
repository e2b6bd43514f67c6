"""Mentions in a real browser: live highlighting (the mention spans of
content_html; the author's markup stays text) and the confirmation before an
@all to more than 10 members."""

import time

import pytest

from tests.live import LiveServer, create_users_and_project, make_live_env, post_message
from tests.test_browser import CHROMIUM_ARGS, open_page

pytestmark = [pytest.mark.browser, pytest.mark.live]

# alice, bob and ten more: 12 members, over the confirmation threshold of 10.
USERS = ["alice", "bob"] + [f"crowd{i}" for i in range(10)]


@pytest.fixture(scope="module")
def crowded_server():
    env, close = make_live_env()
    project_id = create_users_and_project(env, USERS, "Crowded")
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def test_mentions_are_highlighted_live_and_at_all_asks_first(crowded_server):
    from playwright.sync_api import sync_playwright

    from tests.live import login

    server, project_id = crowded_server
    stamp = str(int(time.time()))[-5:]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, project_id, "alice")

        # Bob mentions Alice with markup around it: Alice sees her name marked
        # and the markup as text.
        bob = login(server.url, "bob")
        text = f"<img src=x onerror=window.pwned=1> @alice look {stamp}"
        assert post_message(bob, project_id, text).status_code == 201
        mark = alice.locator(".msg-mentions-me .msg-body span.mention.mention-me")
        mark.wait_for(timeout=10000)
        assert mark.inner_text() == "@alice"
        body = alice.locator(".msg-mentions-me .msg-body")
        assert body.inner_text() == text
        assert body.locator("img").count() == 0
        assert alice.evaluate("window.pwned") is None

        # A mention of someone else is a mention, not marked for Alice.
        assert post_message(bob, project_id, f"@crowd1 only {stamp}").status_code == 201
        other = alice.locator(".msg-body", has_text=f"@crowd1 only {stamp}")
        other.wait_for(timeout=10000)
        assert other.locator("span.mention").inner_text() == "@crowd1"
        assert other.locator(".mention-me").count() == 0
        assert alice.locator(".msg-mentions-me").count() == 1

        # @all in a project of 12: dismissing the question sends nothing and
        # keeps the draft; accepting sends it.
        questions = []

        def answer(dialog, accept):
            questions.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        alice.once("dialog", lambda d: answer(d, False))
        alice.fill("#composer-input", f"@all standup {stamp}")
        alice.press("#composer-input", "Enter")
        alice.wait_for_timeout(300)
        assert questions and "11 other members" in questions[0]
        assert alice.input_value("#composer-input") == f"@all standup {stamp}"
        assert alice.locator(".msg-body", has_text=f"standup {stamp}").count() == 0

        alice.once("dialog", lambda d: answer(d, True))
        alice.press("#composer-input", "Enter")
        alice.locator(".msg:not(.msg-pending) .msg-body", has_text=f"standup {stamp}").wait_for(
            timeout=10000
        )
        assert len(questions) == 2
        # Her own @all is not highlighted for her.
        assert alice.locator(".msg-mentions-me").count() == 1

        # A plain message asks nothing.
        alice.fill("#composer-input", f"no question {stamp}")
        alice.press("#composer-input", "Enter")
        alice.locator(".msg-body", has_text=f"no question {stamp}").wait_for(timeout=10000)
        assert len(questions) == 2
        assert alice.errors == []
        browser.close()

    # Bob sees Alice's @all as a mention of him.
    mentions = bob.get(f"{server.url}/api/mentions").json()["items"]
    assert [m["content"] for m in mentions] == [f"@all standup {stamp}"]
    assert mentions[0]["project_name"] == "Crowded"
