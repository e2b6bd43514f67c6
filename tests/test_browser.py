"""End to end in a real browser: Playwright driving Debian's Chromium against a live server."""

import time

import pytest

from tests.live import (
    LiveServer,
    create_users_and_project,
    free_port,
    login,
    make_live_env,
    post_message,
)

pytestmark = [pytest.mark.browser, pytest.mark.live]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def chat_server():
    env, close = make_live_env()
    project_id = create_users_and_project(env, ["alice", "bob"], "Browser")
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def open_page(browser, server, project_id, username):
    from tests.live import PASSWORD

    context = browser.new_context()
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(f"{server.url}/login?next=/projects/{project_id}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/projects/{project_id}/")
    page.wait_for_function("() => window.chatClient && window.chatClient.connected", timeout=10000)
    return page


def copies(page, text):
    return page.locator(".msg-body", has_text=text).count()


def send_and_see_once(sender, receiver, text):
    """Send text from one page; it shows live on the other, and once on both."""
    sender.fill("#composer-input", text)
    sender.press("#composer-input", "Enter")
    receiver.wait_for_selector(f".msg-body:has-text('{text}')", timeout=5000)
    sender.wait_for_function("() => window.chatClient.pendingCount === 0", timeout=5000)
    time.sleep(0.5)
    assert copies(receiver, text) == 1
    assert copies(sender, text) == 1


def test_two_users_talk_live_edit_delete_and_survive_a_server_restart(chat_server):
    from playwright.sync_api import sync_playwright

    server, project_id = chat_server
    stamp = str(int(time.time()))[-5:]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, project_id, "alice")
        bob = open_page(browser, server, project_id, "bob")

        # Bob types and sends; Alice sees it live, nobody sees it twice.
        send_and_see_once(bob, alice, f"hello from bob {stamp}")

        # An edit and a delete by Alice appear live for Bob.
        alice.fill("#composer-input", f"typo {stamp}")
        alice.press("#composer-input", "Enter")
        bob.wait_for_selector(f".msg-body:has-text('typo {stamp}')", timeout=5000)
        message_id = alice.locator(
            "li.msg", has=alice.locator(".msg-body", has_text=f"typo {stamp}")
        ).get_attribute("data-id")
        mine = alice.locator(f"li.msg[data-id='{message_id}']")
        mine.hover()
        mine.get_by_role("button", name="Edit message").click()
        mine.locator("textarea").fill(f"fixed {stamp}")
        mine.locator("textarea").press("Enter")
        bob.wait_for_selector(f".msg-body:has-text('fixed {stamp}')", timeout=5000)
        edited = bob.locator("li.msg", has=bob.locator(".msg-body", has_text=f"fixed {stamp}"))
        assert "edited" in edited.locator(".msg-edited").inner_text()
        alice.on("dialog", lambda dialog: dialog.accept())
        mine.hover()
        mine.get_by_role("button", name="Delete message").click()
        bob.wait_for_function(
            f"() => !document.body.innerText.includes('fixed {stamp}')", timeout=5000
        )
        assert bob.locator(".msg-tombstone").count() >= 1

        # The server goes away and comes back; what was sent meanwhile shows up once.
        server.stop()
        alice.wait_for_function("() => !window.chatClient.connected", timeout=10000)
        assert alice.locator("#offline-banner").is_visible()
        server.start()
        session = login(server.url, "bob")
        for i in range(3):
            assert post_message(session, project_id, f"meanwhile {stamp} {i}").status_code == 201
        for i in range(3):
            alice.wait_for_selector(f".msg-body:has-text('meanwhile {stamp} {i}')", timeout=20000)
        alice.wait_for_function("() => window.chatClient.connected", timeout=20000)
        time.sleep(0.5)
        assert [copies(alice, f"meanwhile {stamp} {i}") for i in range(3)] == [1, 1, 1]
        assert not alice.locator("#offline-banner").is_visible()
        seqs = alice.eval_on_selector_all(
            "li.msg:not(.msg-pending)", "els => els.map(e => +e.dataset.seq)"
        )
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert alice.errors == [] and bob.errors == []
        browser.close()


@pytest.fixture(scope="module")
def split_servers():
    """make serve's layout: pages and the API on granian, sockets on uvicorn."""
    env, close = make_live_env()
    project_id = create_users_and_project(env, ["carol", "dave"], "Browser split")
    page_port = free_port()
    # The socket server accepts the pages' origin, on another port, only when
    # told it (chatsite.origin).
    sockets = LiveServer(env, extra_env={
        "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{page_port}"}).start()
    http = LiveServer(env, port=page_port, http="granian",
                      extra_env={"WS_PUBLIC_URL": sockets.ws_url}).start()
    yield http, sockets, project_id
    http.stop()
    sockets.stop()
    close()


@pytest.mark.redis
def test_browser_talks_through_granian_and_the_socket_server(split_servers):
    from playwright.sync_api import sync_playwright

    http, sockets, project_id = split_servers
    stamp = str(int(time.time()))[-5:]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        carol = open_page(browser, http, project_id, "carol")  # waits for the socket
        dave = open_page(browser, http, project_id, "dave")
        sockets_opened = []
        carol.on("websocket", lambda ws: sockets_opened.append(ws.url))
        # Dave sends from the page (the POST goes to granian); Carol's socket on
        # the uvicorn server gets it through Redis, once.
        send_and_see_once(dave, carol, f"across servers {stamp}")
        # Sockets go to the socket server's port, not the page's.
        sockets.stop()
        carol.wait_for_function("() => !window.chatClient.connected", timeout=10000)
        sockets.start()
        carol.wait_for_function("() => window.chatClient.connected", timeout=20000)
        # Project sockets and the sidebar's /ws/me/ alike.
        assert any("/ws/projects/" in u for u in sockets_opened)
        assert any(u.startswith(sockets.ws_url + "/ws/me/") for u in sockets_opened)
        assert all(u.startswith(sockets.ws_url + "/ws/") for u in sockets_opened)
        assert carol.errors == [] and dave.errors == []
        browser.close()
