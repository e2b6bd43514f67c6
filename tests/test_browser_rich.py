"""Richer messages in a real browser (Playwright driving Debian's Chromium against a
live server): formatting, reactions and a dropped image seen live by another
member, and the image's bytes refused to a non-member."""

import base64
import io
import tempfile
import time

import pytest

from tests.live import (
    PASSWORD,
    LiveServer,
    create_users_and_project,
    login,
    make_live_env,
)
from tests.test_browser import CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.live]

UPLOAD_MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def rich_server():
    media = tempfile.mkdtemp(prefix="chat-live-media-")
    env, close = make_live_env({"MEDIA_ROOT": media, "UPLOAD_MAX_BYTES": str(UPLOAD_MAX_BYTES)})
    project_id = create_users_and_project(env, ["alice", "bob"], "Rich")
    # carol is signed in but in a project of her own, not in Rich.
    create_users_and_project(env, ["carol"], "Carol's")
    server = LiveServer(env).start()
    yield server, project_id
    server.stop()
    close()


def open_page(browser, server, project_id, username, **context_options):
    """Sign in and open the project page, recording script errors and console errors
    (a CSP violation is one) from the first request on."""
    context = browser.new_context(**context_options)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.goto(f"{server.url}/login?next=/projects/{project_id}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/projects/{project_id}/")
    page.wait_for_function("() => window.chatClient && window.chatClient.connected", timeout=10000)
    return page


def send(page, text):
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    page.wait_for_function("() => window.chatClient.pendingCount === 0", timeout=10000)


def message_with(page, text):
    return page.locator("li.msg:not(.msg-pending)", has=page.locator(".msg-body", has_text=text))


def png_bytes(width=48, height=32):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


# Builds a File from base64 bytes in the page and drops it as a user would.
DROP_FILE_JS = """([target, name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const zone = document.querySelector(target);
  for (const kind of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: transfer }));
  }
}"""


def test_formatting_and_reactions_are_seen_live(rich_server):
    from playwright.sync_api import sync_playwright

    server, project_id = rich_server
    stamp = str(int(time.time() * 1000))[-7:]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, project_id, "alice")
        # Bob reads on a phone-sized screen.
        bob = open_page(browser, server, project_id, "bob",
                        viewport={"width": 390, "height": 780}, has_touch=True)

        # (a) Alice sends markdown; Bob sees it formatted, live, as markup of
        # the renderer's: bold, code, a link that opens nothing of ours.
        send(alice, f"**bold {stamp}** and `code {stamp}` at https://example.com/{stamp}")
        body = bob.locator(".msg-body", has=bob.locator("strong", has_text=f"bold {stamp}"))
        body.wait_for(timeout=10000)
        assert body.locator("code").inner_text() == f"code {stamp}"
        link = body.locator(f"a[href='https://example.com/{stamp}']")
        assert link.inner_text() == f"https://example.com/{stamp}"
        assert set(link.get_attribute("rel").split()) >= {"noopener", "noreferrer", "nofollow"}
        assert "**" not in body.inner_text()
        # Alice's own copy, confirmed, is formatted too.
        mine = alice.locator("li.msg:not(.msg-pending) .msg-body strong", has_text=f"bold {stamp}")
        mine.wait_for(timeout=10000)

        # Raw HTML stays text for the reader.
        send(alice, f"<img src=x onerror=window.pwned=1> raw {stamp}")
        raw = message_with(bob, f"raw {stamp}")
        raw.wait_for(timeout=10000)
        assert raw.locator(".msg-body img").count() == 0
        assert "<img src=x" in raw.locator(".msg-body").inner_text()
        assert bob.evaluate("window.pwned") is None

        # (b) Bob reacts with 👍 from the picker; Alice sees it live, named.
        target = message_with(bob, f"bold {stamp}")
        target.get_by_role("button", name="Add reaction").click()
        target.get_by_role("button", name="React with 👍").click()
        seen = message_with(alice, f"bold {stamp}").locator(".reaction[data-emoji='👍']")
        seen.wait_for(timeout=10000)
        assert seen.locator(".reaction-count").inner_text() == "1"
        assert seen.get_attribute("title") == "bob"
        assert seen.get_attribute("aria-pressed") == "false"  # not Alice's
        mine = target.locator(".reaction[data-emoji='👍']")
        mine.wait_for(timeout=10000)
        assert mine.get_attribute("aria-pressed") == "true"
        assert "reaction-mine" in mine.get_attribute("class")

        # Alice adds hers by clicking Bob's: two, both named for Bob.
        seen.click()
        bob.wait_for_function(
            """(stamp) => [...document.querySelectorAll("li.msg")]
                .some((li) => li.textContent.includes("bold " + stamp)
                  && li.querySelector(".reaction[data-emoji='👍'] .reaction-count")
                       ?.textContent === "2")""",
            arg=stamp, timeout=10000,
        )
        assert target.locator(".reaction[data-emoji='👍']").get_attribute("title") == "you, alice"

        # Bob toggles his off; Alice sees the count fall, then Alice hers: gone.
        target.locator(".reaction[data-emoji='👍']").click()
        alice.wait_for_function(
            """(stamp) => [...document.querySelectorAll("li.msg")]
                .some((li) => li.textContent.includes("bold " + stamp)
                  && li.querySelector(".reaction[data-emoji='👍'] .reaction-count")
                       ?.textContent === "1")""",
            arg=stamp, timeout=10000,
        )
        message_with(alice, f"bold {stamp}").locator(".reaction[data-emoji='👍']").click()
        target.locator(".reaction[data-emoji='👍']").wait_for(state="detached", timeout=10000)

        # The phone-sized page does not scroll sideways, and its picker button shows.
        assert bob.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        assert target.get_by_role("button", name="Add reaction").is_visible()

        # A reload shows the same, server-rendered, and stays interactive.
        bob.reload()
        bob.wait_for_function("() => window.chatClient && window.chatClient.connected",
                              timeout=10000)
        assert message_with(bob, f"bold {stamp}").locator("strong").inner_text() == (
            f"bold {stamp}"
        )
        assert message_with(bob, f"bold {stamp}").locator(".reaction").count() == 0
        assert alice.errors == [] and bob.errors == []
        browser.close()


def test_a_dropped_image_is_seen_as_a_thumbnail_and_refused_to_others(rich_server):
    from playwright.sync_api import sync_playwright

    server, project_id = rich_server
    stamp = str(int(time.time() * 1000))[-7:]
    image = png_bytes(480, 240)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        alice = open_page(browser, server, project_id, "alice")
        bob = open_page(browser, server, project_id, "bob")

        # (c) Alice drops a PNG on the history; it uploads and shows as a chip.
        alice.evaluate(DROP_FILE_JS, ["#scroller", f"shot-{stamp}.png", "image/png",
                                      base64.b64encode(image).decode()])
        chip = alice.locator(".pending-attachment", has_text=f"shot-{stamp}.png")
        chip.wait_for(timeout=5000)
        alice.wait_for_function("() => window.chatClient.uploadsInProgress === 0", timeout=10000)
        assert "pending-attachment-done" in chip.get_attribute("class")
        send(alice, f"look {stamp}")
        assert alice.locator(".pending-attachment").count() == 0

        # Bob sees it live as a thumbnail (decoded: naturalWidth > 0) that
        # links to the full image.
        img = message_with(bob, f"look {stamp}").locator(".attachment-image img")
        img.wait_for(timeout=10000)
        bob.wait_for_function(
            "(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=10000
        )
        # The thumbnail's longest side is 400 px; the box keeps the ratio.
        assert (img.get_attribute("width"), img.get_attribute("height")) == ("400", "200")
        assert img.get_attribute("loading") == "lazy"
        assert img.get_attribute("alt") == f"shot-{stamp}.png"
        thumbnail_url = img.get_attribute("src")
        full_url = message_with(bob, f"look {stamp}").locator(".attachment-image a").get_attribute(
            "href")
        assert thumbnail_url == full_url + "thumbnail"

        # The image's bytes, for a member: the PNG itself.
        member = login(server.url, "bob")
        response = member.get(server.url + full_url, timeout=10)
        assert response.status_code == 200 and response.content == image
        assert member.get(server.url + thumbnail_url, timeout=10).status_code == 200

        # (d) Carol is signed in, not a member: 404 for both.
        outsider = login(server.url, "carol")
        assert outsider.get(server.url + full_url, timeout=10).status_code == 404
        assert outsider.get(server.url + thumbnail_url, timeout=10).status_code == 404

        # The attach button takes files too; one over the limit is refused with the
        # limit named, and sends nothing.
        alice.set_input_files("#attach-input", files=[{
            "name": f"big-{stamp}.bin", "mimeType": "application/octet-stream",
            "buffer": b"\0" * (UPLOAD_MAX_BYTES + 1),
        }])
        failed = alice.locator(".pending-attachment-failed", has_text=f"big-{stamp}.bin")
        failed.wait_for(timeout=5000)
        assert "too large: files are at most 293.0 KB" in failed.inner_text()
        failed.get_by_role("button", name=f"Remove big-{stamp}.bin").click()
        assert alice.locator(".pending-attachment").count() == 0
        assert alice.errors == [] and bob.errors == []
        browser.close()
