"""An invite link in a real browser: an owner's link signs a new person up in a
fresh browser context; they land in the project and post, and the owner sees it live."""

import time

import pytest

from tests.live import LiveServer, create_users_and_project, login, make_live_env
from tests.test_browser import CHROMIUM_ARGS, open_page

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture(scope="module")
def invite_server():
    env, close = make_live_env()
    project_id = create_users_and_project(env, ["olive"], "Invited room", private=True)
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def test_an_invite_link_signs_up_a_new_person_who_then_posts(invite_server):
    from playwright.sync_api import sync_playwright

    server, project_id = invite_server
    owner_session = login(server.url, "olive")
    made = owner_session.post(
        f"{server.url}/api/projects/{project_id}/invites", json={"max_uses": 1},
        headers={"X-CSRFToken": owner_session.csrf, "Referer": server.url + "/"}, timeout=10)
    assert made.status_code == 201, made.text
    link = server.url + made.json()["url"]
    stamp = str(int(time.time()))[-5:]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        owner = open_page(browser, server, project_id, "olive")

        newcomer = browser.new_context().new_page()  # no cookies: a stranger
        errors = []
        newcomer.on("pageerror", lambda e: errors.append(str(e)))
        newcomer.goto(link)
        assert "Invited room" in newcomer.locator("h1").inner_text()
        newcomer.fill("#id_username", f"newbie{stamp}")
        newcomer.fill("#id_email", f"newbie{stamp}@example.com")
        newcomer.fill("#id_password", "correct-horse-battery-9")
        newcomer.click("#signup-form button[type=submit]")
        newcomer.wait_for_url(f"{server.url}/projects/{project_id}/")
        newcomer.wait_for_function(
            "() => window.chatClient && window.chatClient.connected", timeout=10000)

        newcomer.fill("#composer-input", f"hello from the invite {stamp}")
        newcomer.press("#composer-input", "Enter")
        owner.wait_for_selector(f".msg-body:has-text('hello from the invite {stamp}')",
                                timeout=5000)

        # The link had one use: a second stranger gets the 410 page, no project name.
        stranger = browser.new_context().new_page()
        response = stranger.goto(link)
        assert response.status == 410
        assert "Invited room" not in stranger.content()
        assert errors == [] and owner.errors == []
        browser.close()
