"""The project page with richer messages: formatting, reactions, attachments.

The page shows content_html (the one place a template inserts HTML), the
reactions and the attachments of each message, without JavaScript and without
a query more than a page of plain messages.
"""

import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from chat.actions import check_send_message, do_delete_message, do_send_message
from chat.page_views import mark_mentions_of
from chat.reactions import check_add_reaction
from chat.tests.test_pages import chat_state, page_url, rendered_seqs, warm_up
from chat.uploads import do_store_upload

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def png_bytes(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def store(user, project, name, data, content_type="application/octet-stream"):
    return do_store_upload(user, project.pk, SimpleUploadedFile(name, data, content_type))


def message_item(text, message):
    """The rendered <li> of one message (its closing tag starts a line)."""
    start = text.index(f'data-id="{message.pk}"')
    return text[start : text.index("\n</li>", start)]


# --- formatting ----------------------------------------------------------------------


def test_page_shows_the_formatted_message(client_member, project, owner):
    message, _ = do_send_message(
        owner, project.pk, "**bold** and `code` at https://example.com/a"
    )
    text = client_member.get(page_url(project)).text
    assert (
        '<div class="msg-body"><p><strong>bold</strong> and <code>code</code> at '
        '<a href="https://example.com/a" rel="noopener noreferrer nofollow">'
        "https://example.com/a</a></p></div>"
    ) in message_item(text, message)


def test_page_shows_code_blocks_quotes_and_lists(client_member, project, owner):
    message, _ = do_send_message(owner, project.pk, "> quoted\n\n- one\n- two\n\n```\nx < y\n```")
    item = message_item(client_member.get(page_url(project)).text, message)
    assert "<blockquote>" in item and "<ul>" in item and "<li>one</li>" in item
    assert "<pre><code>x &lt; y\n</code></pre>" in item


def test_raw_html_in_a_message_never_reaches_the_page_unescaped(
    client_member, project, owner
):
    do_send_message(owner, project.pk, '<script>alert("x")</script> **hi** <img src=x>')
    text = client_member.get(page_url(project)).text
    assert "<script>alert" not in text and "<img src=x" not in text
    assert '<p>&lt;script&gt;alert("x")&lt;/script&gt; <strong>hi</strong> &lt;img src=x&gt;</p>' in text
    # The only script elements: the page state (JSON) and chat.js, the
    # sidebar's state and sidebar.js.
    assert re.findall(r"<script[^>]*>", text) == [
        '<script id="sidebar-state" type="application/json">',
        '<script id="chat-state" type="application/json">',
        '<script src="/static/chat/chat.js" defer>',
        '<script src="/static/chat/members.js" defer>',
        '<script src="/static/chat/sidebar.js" defer>',
    ]


def test_page_state_carries_each_messages_json_for_chat_js(
    client_member, project, owner, settings
):
    settings.UPLOAD_MAX_BYTES = 12345
    message, _ = do_send_message(owner, project.pk, "**source** text")
    state = chat_state(client_member.get(page_url(project)))
    (item,) = state["messages"]
    assert item["id"] == message.pk
    assert item["content"] == "**source** text"  # the editor edits the source
    assert item["content_html"] == "<p><strong>source</strong> text</p>"
    assert item["reactions"] == [] and item["attachments"] == []
    assert state["uploadMaxBytes"] == 12345


def test_mark_mentions_of_marks_only_the_reader_and_all():
    html = (
        '<p><span class="mention" data-user-id="7">@bob</span> '
        '<span data-user-id="8" class="mention">@carol</span> '
        '<span class="mention" data-user-id="all">@all</span> '
        '<code>&lt;span class="mention" data-user-id="7"&gt;</code></p>'
    )
    marked, found = mark_mentions_of(html, 7)
    assert found
    assert marked == html.replace(
        '<span class="mention" data-user-id="7">', '<span class="mention mention-me" data-user-id="7">'
    ).replace(
        '<span class="mention" data-user-id="all">',
        '<span class="mention mention-me" data-user-id="all">',
    )
    assert mark_mentions_of('<p><span class="mention" data-user-id="8">@c</span></p>', 7) == (
        '<p><span class="mention" data-user-id="8">@c</span></p>',
        False,
    )
    assert mark_mentions_of("<p>@bob</p>", 7) == ("<p>@bob</p>", False)


# --- reactions -----------------------------------------------------------------------


def test_page_shows_reactions_with_counts_mine_and_who(
    client_member, project, owner, member
):
    message, _ = do_send_message(owner, project.pk, "react to me")
    check_add_reaction(owner, message.pk, "👍")
    check_add_reaction(member, message.pk, "👍")
    check_add_reaction(owner, message.pk, ":shipit:")
    item = message_item(client_member.get(page_url(project)).text, message)
    assert (
        '<ul class="reactions" aria-label="Reactions">'
        '<li class="reaction reaction-mine" data-emoji="👍" title="owner, you">'
        '<span class="reaction-emoji">👍</span> <span class="reaction-count">2</span></li>'
        '<li class="reaction" data-emoji=":shipit:" title="owner">'
        '<span class="reaction-emoji">:shipit:</span> <span class="reaction-count">1</span></li>'
        "</ul>"
    ) in item


def test_a_reactor_not_on_the_page_is_counted_not_named(
    client_member, project, owner, make_user
):
    from projects.actions import do_join_project

    carol = make_user("carol")
    do_join_project(carol, project.pk)
    message, _ = do_send_message(owner, project.pk, "hello")
    check_add_reaction(carol, message.pk, "🎉")
    item = message_item(client_member.get(page_url(project)).text, message)
    assert 'data-emoji="🎉" title="1 reaction"' in item
    assert "carol" not in item


def test_a_deleted_message_shows_no_reactions(client_member, project, owner):
    message, _ = do_send_message(owner, project.pk, "soon gone")
    check_add_reaction(owner, message.pk, "👀")
    do_delete_message(message)
    item = message_item(client_member.get(page_url(project)).text, message)
    assert "👀" not in item and 'class="reactions"' not in item


# --- attachments ---------------------------------------------------------------------


def test_page_shows_an_image_as_a_lazy_thumbnail_linking_to_the_full_image(
    client_member, project, owner
):
    upload = store(owner, project, "wide.png", png_bytes(800, 200), "image/png")
    message, _ = check_send_message(owner, project.pk, "", None, attachment_ids=[upload.pk])
    item = message_item(client_member.get(page_url(project)).text, message)
    # The longest side of a thumbnail is 400 px: the box is scaled to match.
    assert (
        f'<li class="attachment attachment-image"><a href="/uploads/{upload.pk}/" '
        f'target="_blank" rel="noopener"><img src="/uploads/{upload.pk}/thumbnail" '
        'width="400" height="100" alt="wide.png" loading="lazy"></a></li>'
    ) in item
    # No text: no empty body.
    assert 'class="msg-body"' not in item


def test_page_shows_other_files_as_download_links_with_name_and_size(
    client_member, project, owner
):
    upload = store(owner, project, '<b>notes</b>.txt', b"x" * 2048, "text/plain")
    message, _ = check_send_message(
        owner, project.pk, "the notes", None, attachment_ids=[upload.pk]
    )
    item = message_item(client_member.get(page_url(project)).text, message)
    name = upload.original_name
    escaped = name.replace("<", "&lt;").replace(">", "&gt;")
    assert "<b>" not in item
    assert (
        f'<li class="attachment attachment-file"><a href="/uploads/{upload.pk}/" '
        f'download="{escaped}">{escaped}</a> <span class="attachment-size">2.0\xa0KB</span></li>'
    ) in item


def test_composer_offers_attaching_only_with_javascript(client_member, project):
    text = client_member.get(page_url(project)).text
    # chat.js reveals the button; without it the form posts text.
    assert re.search(r'<button type="button" id="attach-button"[^>]* hidden>', text)
    assert re.search(r'<input type="file" id="attach-input"[^>]* hidden>', text)
    assert 'id="pending-attachments"' in text
    assert 'enctype="multipart' not in text


# --- cost ----------------------------------------------------------------------------


def test_rich_messages_cost_the_page_no_query(
    client_member, project, owner, member, django_assert_num_queries
):
    for i in range(12):
        upload = store(owner, project, f"p{i}.png", png_bytes(40, 30), "image/png")
        message, _ = check_send_message(
            owner, project.pk, f"**m{i}** @member", None, attachment_ids=[upload.pk]
        )
        check_add_reaction(member, message.pk, "👍")
        check_add_reaction(owner, message.pk, "✅")
    warm_up(client_member)
    # As for plain messages (test_pages.py): membership, the page of messages,
    # the read mark's membership check and UPDATE, the member count. Reactions
    # and attachments are on the message row (their summaries); the sidebar's list
    # (cold: memberships, the project's row, its message tail).
    with django_assert_num_queries(8):
        response = client_member.get(page_url(project))
    assert len(rendered_seqs(response)) == 12
    assert response.text.count('class="attachment attachment-image"') == 12
    assert response.text.count('class="reaction reaction-mine" data-emoji="👍"') == 12
    assert response.text.count("msg-mentions-me") == 12
