"""The members panel in a real browser: the owner removes bob, and bob's open page
says he was removed and stops reconnecting (docs/API.md "Members")."""

import time

import pytest

from tests.live import LiveServer, create_users_and_project, make_live_env
from tests.test_browser import CHROMIUM_ARGS, open_page

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture(scope="module")
def members_server():
    env, close = make_live_env()
    project_id = create_users_and_project(env, ["alice", "bob", "carol"], "Members")
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def test_owner_removes_bob_and_bobs_page_says_so(members_server):
    from playwright.sync_api import sync_playwright

    server, project_id = members_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, project_id, "alice")
        bob = open_page(browser, server, project_id, "bob")

        # Bob, a plain member, sees the members and no controls.
        bob.click("#members-panel > summary")
        assert bob.locator("#members-list li.member").count() == 3
        assert bob.locator(".member-remove").count() == 0
        assert bob.locator("#members-list select").count() == 0

        # Alice, the owner, sees a Remove button on the others and role selects.
        alice.click("#members-panel > summary")
        bob_row = alice.locator("#members-list li.member[data-username='bob']")
        assert alice.locator(".member-remove").count() == 2
        assert alice.locator("#members-list select").count() == 3

        # Alice makes carol an admin: the API answers, the select keeps it.
        carol_select = alice.locator("#members-list li[data-username='carol'] select")
        carol_select.select_option("admin")
        alice.wait_for_function(
            "() => document.querySelector(\"li[data-username='carol']\").dataset.role"
            " === 'admin'", timeout=5000)

        # Alice removes bob.
        alice.on("dialog", lambda dialog: dialog.accept())
        bob_row.get_by_role("button", name="Remove bob").click()
        bob_row.wait_for(state="detached", timeout=5000)
        assert alice.locator("#members-total").inner_text() == "2"
        assert alice.locator("#member-count").inner_text() == "2 members"

        # Bob's open page: the socket closed 4403, the notice says why, no reconnect.
        bob.wait_for_selector("#notice:has-text('You were removed from this project')",
                              timeout=5000)
        bob.wait_for_function("() => !window.chatClient.connected", timeout=5000)
        time.sleep(2)  # longer than the first reconnect delays (0.5 s, 1 s)
        assert not bob.evaluate("window.chatClient.connected")
        assert bob.evaluate("window.chatClient.socket") is None
        assert not bob.locator("#offline-banner").is_visible()

        # A reload shows bob a page that no longer lets him in.
        response = bob.goto(f"{server.url}/projects/{project_id}/")
        assert response.status == 403
        assert alice.errors == [] and bob.errors == []
        browser.close()
