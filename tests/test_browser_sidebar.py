"""The live sidebar in a real browser (Playwright + Debian's Chromium): counts
change without a reload, the total is in the title, the sidebar collapses on a
phone's width (docs/PROTOCOL.md, "/ws/me/")."""

import os

import pytest

from tests.live import (
    PASSWORD,
    LiveServer,
    create_users_and_project,
    login,
    make_live_env,
    post_message,
)
from tests.test_browser import CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.live]


@pytest.fixture(scope="module")
def rooms():
    # Production shape: this run's own Redis database, not the live servers' default.
    extra = {"REDIS_URL": os.environ["REDIS_URL"]} if os.environ.get("REDIS_URL") else None
    env, close = make_live_env(extra)
    room_a = create_users_and_project(env, ["alice", "bob"], "Apples")
    room_b = create_users_and_project(env, ["bob", "alice"], "Bananas")
    server = LiveServer(env).start()
    yield server, room_a, room_b
    server.stop()
    close()


def open_room(browser, server, room, username, **context_options):
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{server.url}/login?next=/projects/{room}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/projects/{room}/")
    page.wait_for_function("() => window.chatSidebar && window.chatSidebar.connected",
                           timeout=10000)
    return page


def badge(page, room, kind):
    item = page.locator(f".sidebar-item[data-project-id='{room}'] .badge-{kind}")
    return None if item.get_attribute("hidden") is not None else item.inner_text()


def test_a_message_in_room_b_updates_its_badge_and_the_title_on_room_a(rooms):
    from playwright.sync_api import sync_playwright

    server, room_a, room_b = rooms
    bob = login(server.url, "bob")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_room(browser, server, room_a, "alice")
        current = alice.locator(".sidebar-item.is-current")
        assert current.get_attribute("data-project-id") == str(room_a)
        assert badge(alice, room_b, "unread") is None
        assert alice.title() == "Apples · Chat"

        assert post_message(bob, room_b, "hello in bananas").status_code == 201
        alice.wait_for_function(
            f"() => !document.querySelector(\"[data-project-id='{room_b}'] .badge-unread\").hidden",
            timeout=5000)
        assert badge(alice, room_b, "unread") == "1"
        assert badge(alice, room_b, "mention") is None
        alice.wait_for_function("() => document.title === '(1) Apples · Chat'", timeout=5000)

        assert post_message(bob, room_b, "@alice look").status_code == 201
        alice.wait_for_function("() => document.title === '(2) Apples · Chat'", timeout=5000)
        assert badge(alice, room_b, "mention") == "@1"
        # Room A's own badge never showed: Bob wrote nothing there.
        assert badge(alice, room_a, "unread") is None

        # Opening room B reads it: its page shows no count, and the page of
        # room A in another tab clears room B's badge live.
        other = alice.context.new_page()
        other.goto(f"{server.url}/projects/{room_b}/")
        alice.wait_for_function("() => document.title === 'Apples · Chat'", timeout=5000)
        assert badge(alice, room_b, "unread") is None
        assert other.title() == "Bananas · Chat"
        assert alice.errors == []
        browser.close()


def test_on_a_phone_the_sidebar_waits_behind_a_button(rooms):
    from playwright.sync_api import sync_playwright

    server, room_a, room_b = rooms
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = open_room(browser, server, room_a, "alice",
                         viewport={"width": 375, "height": 700})
        assert not page.locator("#sidebar").is_visible()
        page.click("#sidebar-toggle")
        assert page.locator("#sidebar").is_visible()
        page.click(f".sidebar-item[data-project-id='{room_b}'] a")
        page.wait_for_url(f"{server.url}/projects/{room_b}/")
        assert not page.locator("#sidebar").is_visible()
        assert page.errors == []
        browser.close()
