"""The server-rendered pages: sign-in, the project page, search (docs/API.md §9)."""

import json
import re
import uuid

import pytest
from django.test import Client

from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.models import Message
from projects.actions import do_create_project, do_join_project
from projects.models import Membership

pytestmark = pytest.mark.django_db


def page_url(project, **query):
    url = f"/projects/{project.pk}/"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


def rendered_seqs(response):
    """The data-seq of each rendered message, top to bottom."""
    return [
        int(s)
        for s in re.findall(r'class="msg[^"]*"[^>]*data-seq="(\d+)"', response.text)
    ]


def warm_up(client):
    """Make one signed-in request, so the session and the user are in the cache.

    Sessions are cached_db and accounts.backends.CachedModelBackend caches the
    user: from the second request on neither touches the database, which is
    the state every counted request below is measured in.
    """
    assert client.get("/login").status_code == 302  # signed in: redirected on


def chat_state(response):
    match = re.search(
        r'<script id="chat-state" type="application/json">(.*?)</script>',
        response.text,
        re.DOTALL,
    )
    assert match, "the page embeds its state with json_script"
    return json.loads(match.group(1))


# --- access ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/search", "/search?q=x"])
def test_anonymous_visitor_is_sent_to_login_with_next(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login?next=")


def test_anonymous_visitor_of_a_project_is_sent_to_login_with_next(client, project):
    response = client.get(page_url(project))
    assert response.status_code == 302
    assert response["Location"] == f"/login?next=/projects/{project.pk}/"


def test_non_member_gets_a_friendly_html_403_with_a_join_button(
    client_outsider, project
):
    response = client_outsider.get(page_url(project))
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert "not a member of <strong>General</strong>" in response.text
    assert f'action="/projects/{project.pk}/join"' in response.text
    assert 'id="messages"' not in response.text


def test_non_member_of_a_private_project_gets_the_404_page(
    client_outsider, owner, send
):
    # A private project is refused as a missing one (chat/tests/test_page_refusals.py).
    secret = do_create_project(owner, name="Secret", is_private=True)
    send(owner, secret, 1, prefix="classified")
    response = client_outsider.get(page_url(secret))
    assert response.status_code == 404
    assert "Secret" not in response.text
    assert "/join" not in response.text
    assert "classified" not in response.text


def test_unknown_project_is_a_404_page(client_member):
    response = client_member.get("/projects/999999/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "Not found" in response.text


def test_any_unknown_page_uses_the_friendly_404_template(client_member):
    response = client_member.get("/no/such/page")
    assert response.status_code == 404
    assert "Back to your projects" in response.text


def test_inactive_project_is_a_404_page(client_member, project):
    project.is_active = False
    project.save(update_fields=["is_active"])
    assert client_member.get(page_url(project)).status_code == 404


# --- the project page --------------------------------------------------------------


def test_member_sees_messages_oldest_at_top_and_the_composer(
    client_member, project, owner, send
):
    sent = send(owner, project, 3, prefix="line")
    response = client_member.get(page_url(project))
    assert response.status_code == 200
    assert rendered_seqs(response) == [m.seq for m in sent]
    text = response.text
    assert text.index("line 0") < text.index("line 1") < text.index("line 2")
    assert (
        f'<form id="composer" class="composer" method="post" action="/projects/{project.pk}/"'
        in text
    )
    assert 'name="content"' in text and 'name="csrfmiddlewaretoken"' in text
    assert "2 members" in text
    for element_id in ("online-list", "typing", "offline-banner"):
        assert f'id="{element_id}"' in text


def test_messages_carry_their_numbers_and_ids_as_data_attributes(
    client_member, project, member
):
    client_msg_id = uuid.uuid4()
    message, _ = do_send_message(member, project.pk, "mine", client_msg_id)
    response = client_member.get(page_url(project))
    assert (
        f'id="m-{message.seq}" data-id="{message.pk}" data-seq="{message.seq}" '
        f'data-changed-seq="{message.changed_seq}" data-client-msg-id="{client_msg_id}" '
        f'data-author-id="{member.pk}"'
    ) in response.text


def test_page_embeds_the_client_state_as_json(
    client_member, project, member, owner, send
):
    sent = send(owner, project, 2)
    do_edit_message(sent[0], "edited")  # takes number 3; the project is at 3
    response = client_member.get(page_url(project))
    state = chat_state(response)
    assert state["projectId"] == project.pk
    assert state["lastChangedSeq"] == 3
    assert state["oldestSeq"] == 1 and state["newestSeq"] == 2
    assert state["user"] == {"id": member.pk, "username": "member"}
    assert state["role"] == "member" and state["canModerate"] is False
    assert state["messageMaxLength"] == 10000
    assert state["isLatest"] is True and state["hasOlder"] is False


def test_owner_state_allows_moderation(client_owner, project):
    state = chat_state(client_owner.get(page_url(project)))
    assert state["role"] == "owner" and state["canModerate"] is True


def test_page_loads_script_from_static_and_has_no_inline_code(client_member, project):
    text = client_member.get(page_url(project)).text
    assert '<script src="/static/chat/chat.js" defer></script>' in text
    scripts = re.findall(r"<script([^>]*)>", text)
    # Only the JSON data blocks and the static files (the page's and the
    # sidebar's): a CSP can forbid inline code.
    assert sorted(scripts) == sorted(
        [
            ' src="/static/chat/chat.js" defer',
            ' id="chat-state" type="application/json"',
            ' src="/static/chat/sidebar.js" defer',
            ' id="sidebar-state" type="application/json"',
            ' src="/static/chat/members.js" defer',
        ]
    )
    assert "onclick" not in text and "https://" not in text


def test_page_shows_the_last_50_and_links_to_older_ones(
    client_member, project, owner, send
):
    send(owner, project, 60)
    response = client_member.get(page_url(project))
    seqs = rendered_seqs(response)
    assert seqs == list(range(11, 61))
    assert 'href="?before=11"' in response.text
    older = client_member.get(page_url(project, before=11))
    assert rendered_seqs(older) == list(range(1, 11))
    assert chat_state(older)["isLatest"] is False
    assert "Jump to the latest messages" in older.text


def test_around_shows_the_page_holding_that_message(
    client_member, project, owner, send
):
    send(owner, project, 120)
    response = client_member.get(page_url(project, around=30))
    seqs = rendered_seqs(response)
    assert 30 in seqs and len(seqs) == 50 and seqs == sorted(seqs)
    assert 'msg msg-highlight" id="m-30"' in response.text


def test_a_bad_cursor_shows_the_latest_page(client_member, project, owner, send):
    send(owner, project, 3)
    response = client_member.get(page_url(project, before="abc"))
    assert response.status_code == 200
    assert rendered_seqs(response) == [1, 2, 3]


def test_deleted_message_shows_a_tombstone_without_its_content(
    client_member, project, owner, send
):
    secret, _kept = send(owner, project, 2, prefix="top-secret-words")
    do_delete_message(secret)
    response = client_member.get(page_url(project))
    assert "top-secret-words 0" not in response.text
    assert "top-secret-words 1" in response.text
    assert 'class="msg-body msg-tombstone">message deleted</div>' in response.text
    assert f'class="msg msg-deleted" id="m-{secret.seq}"' in response.text


def test_edited_message_is_marked_edited(client_member, project, owner, send):
    (message,) = send(owner, project, 1)
    do_edit_message(message, "second thoughts")
    response = client_member.get(page_url(project))
    assert "second thoughts" in response.text
    assert "(edited)" in response.text


def test_user_text_is_escaped(client_member, project, owner):
    do_send_message(owner, project.pk, '<script>alert("x")</script>')
    text = client_member.get(page_url(project)).text
    assert '<script>alert("x")</script>' not in text
    # content_html (chat.rendering) escapes the markup as text.
    assert '<p>&lt;script&gt;alert("x")&lt;/script&gt;</p>' in text


def test_project_name_cannot_break_out_of_the_state_json(client_owner, owner):
    evil = do_create_project(owner, name="</script><script>alert(1)</script>")
    response = client_owner.get(page_url(evil))
    assert "</script><script>alert(1)" not in response.text
    assert chat_state(response)["projectName"] == "</script><script>alert(1)</script>"


def test_viewing_the_latest_page_marks_it_read(
    client_member, project, member, owner, send
):
    send(owner, project, 4)
    client_member.get(page_url(project))
    assert Membership.objects.get(user=member, project=project).last_read_seq == 4


def test_viewing_an_older_page_does_not_mark_it_read(
    client_member, project, member, owner, send
):
    send(owner, project, 80)
    client_member.get(page_url(project, before=20))
    assert Membership.objects.get(user=member, project=project).last_read_seq == 0


def test_unread_divider_marks_the_first_unread_message(
    client_member, project, member, owner, send
):
    send(owner, project, 2)
    Membership.objects.filter(user=member, project=project).update(last_read_seq=1)
    text = client_member.get(page_url(project)).text
    assert text.index("New messages") < text.index('id="m-2"')
    assert text.index('id="m-1"') < text.index("New messages")


@pytest.mark.parametrize("count", [5, 60])
def test_project_page_is_a_constant_number_of_queries(
    client_member, project, owner, count, django_assert_num_queries
):
    for i in range(count):
        do_send_message(owner, project.pk, f"message {i}")
    warm_up(client_member)
    # Session and user come from the cache (see warm_up). 1 membership with its
    # project (access_project), 2 the page of messages with their authors
    # joined, then marking the page read (do_mark_read): 3 its own membership
    # check and 4 the conditional UPDATE; 5 member count; the sidebar's list
    # (projects.context_processors, assembled by projects.list_cache): 6 the
    # user's memberships (the read mark moved them), and this process's first
    # read of the project's card, 7 its row and 8 its message tail. Nothing per
    # message.
    with django_assert_num_queries(8):
        response = client_member.get(page_url(project))
    assert len(rendered_seqs(response)) == min(count, 50)


def test_project_page_already_read_skips_the_read_update(
    client_member, project, owner, send, django_assert_num_queries
):
    send(owner, project, 3)
    client_member.get(page_url(project))
    # membership, messages, member count; nothing left to mark read, and the
    # sidebar's skeleton and card are current (projects.list_cache): no query.
    with django_assert_num_queries(3):
        client_member.get(page_url(project))


# --- the composer without JavaScript ----------------------------------------------------


def test_composer_post_creates_the_message_and_redirects_back(
    client_member, project, member
):
    response = client_member.post(page_url(project), {"content": "  hi there  "})
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/#composer"
    message = Message.objects.get(project=project)
    assert (message.author_id, message.content) == (member.pk, "hi there")
    assert "hi there" in client_member.get(response["Location"]).text


def test_composer_repeat_post_with_the_same_client_msg_id_creates_one(
    client_member, project
):
    form = {"content": "once", "client_msg_id": str(uuid.uuid4())}
    client_member.post(page_url(project), form)
    client_member.post(page_url(project), form)
    assert Message.objects.filter(project=project).count() == 1


def test_page_form_carries_a_fresh_client_msg_id(client_member, project):
    first = re.search(
        r'name="client_msg_id" value="([0-9a-f-]+)"',
        client_member.get(page_url(project)).text,
    )
    second = re.search(
        r'name="client_msg_id" value="([0-9a-f-]+)"',
        client_member.get(page_url(project)).text,
    )
    assert uuid.UUID(first.group(1)) != uuid.UUID(second.group(1))


def test_empty_post_shows_the_error_and_creates_nothing(client_member, project):
    response = client_member.post(page_url(project), {"content": "   "})
    assert response.status_code == 422
    assert "A message cannot be empty." in response.text
    assert not Message.objects.exists()


def test_too_long_post_keeps_the_draft(client_member, project, settings):
    settings.MESSAGE_MAX_LENGTH = 10
    response = client_member.post(page_url(project), {"content": "x" * 11})
    assert response.status_code == 422
    assert "at most 10 characters" in response.text
    assert "x" * 11 in response.text
    assert not Message.objects.exists()


def test_non_member_post_creates_nothing(client_outsider, project):
    response = client_outsider.post(page_url(project), {"content": "intrude"})
    assert response.status_code == 403
    assert not Message.objects.exists()


def test_composer_post_needs_the_csrf_token(member, project):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(member)
    response = browser.post(page_url(project), {"content": "forged"})
    assert response.status_code == 403
    assert not Message.objects.exists()


# --- search ------------------------------------------------------------------------


def test_search_shows_only_hits_from_my_projects(
    client_member, project, owner, make_user
):
    stranger = make_user("stranger")
    elsewhere = do_create_project(stranger, name="Elsewhere")
    do_send_message(stranger, elsewhere.pk, "needle from elsewhere")
    mine, _ = do_send_message(owner, project.pk, "needle in general")
    response = client_member.get("/search", {"q": "needle"})
    assert response.status_code == 200
    assert "in general" in response.text
    assert "from elsewhere" not in response.text
    assert (
        f'href="/projects/{project.pk}/?around={mine.seq}#m-{mine.seq}"'
        in response.text
    )
    assert "<mark>needle</mark>" in response.text


def test_search_skips_deleted_messages(client_member, project, owner):
    message, _ = do_send_message(owner, project.pk, "needle gone")
    do_delete_message(message)
    response = client_member.get("/search", {"q": "needle"})
    assert "needle gone" not in response.text
    assert "No messages match" in response.text


def test_search_in_a_project_i_am_not_in_is_403(client_outsider, project, owner):
    do_send_message(owner, project.pk, "needle")
    response = client_outsider.get("/search", {"q": "needle", "project_id": project.pk})
    assert response.status_code == 403
    assert 'class="hit"' not in response.text


def test_search_filters_by_project(client_member, project, member, owner):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    do_send_message(owner, project.pk, "needle one")
    do_send_message(owner, other.pk, "needle two")
    response = client_member.get("/search", {"q": "needle", "project_id": other.pk})
    assert "<mark>needle</mark> two" in response.text
    assert "<mark>needle</mark> one" not in response.text


def test_search_without_a_query_shows_the_form(client_member):
    response = client_member.get("/search")
    assert response.status_code == 200
    assert 'role="search"' in response.text
    assert "Results" not in response.text


def test_search_pages_back_with_before(client_member, project, owner, send):
    send(owner, project, 55, prefix="needle")
    first = client_member.get("/search", {"q": "needle"})
    assert first.text.count('class="hit"') == 50
    match = re.search(r"before=(\d+)", first.text)
    assert match
    rest = client_member.get("/search", {"q": "needle", "before": match.group(1)})
    assert rest.text.count('class="hit"') == 5


def test_search_is_a_constant_number_of_queries(
    client_member, project, owner, send, django_assert_num_queries
):
    send(owner, project, 30, prefix="needle")
    warm_up(client_member)
    # my projects (the filter, and names for the hits), the search with its
    # authors joined; the sidebar's list, cold here (projects.list_cache: the
    # memberships, the project's row, its message tail); session and user come
    # from the cache.
    with django_assert_num_queries(5):
        client_member.get("/search", {"q": "needle"})


# --- sign in and out --------------------------------------------------------------


def test_login_page_renders_a_form(client):
    response = client.get("/login")
    assert response.status_code == 200
    assert 'name="username"' in response.text and 'name="password"' in response.text


def test_login_with_wrong_password_shows_an_error(client, member):
    response = client.post("/login", {"username": "member", "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.text
    assert "_auth_user_id" not in client.session


def test_login_rotates_the_session_and_follows_next(client, member, project):
    client.get("/login")
    session = client.session
    session["probe"] = 1
    session.save()
    before = session.session_key
    response = client.post(
        "/login",
        {"username": "member", "password": "pw-secret-1", "next": page_url(project)},
    )
    assert response.status_code == 302
    assert response["Location"] == page_url(project)
    assert client.session.session_key != before
    assert int(client.session["_auth_user_id"]) == member.pk


def test_login_ignores_an_offsite_next(client, member):
    response = client.post(
        "/login",
        {
            "username": "member",
            "password": "pw-secret-1",
            "next": "https://evil.example/",
        },
    )
    assert response["Location"] == "/"


def test_login_page_is_throttled_like_the_api(client, member):
    for _ in range(5):
        client.post("/login", {"username": "member", "password": "wrong"})
    response = client.post("/login", {"username": "member", "password": "pw-secret-1"})
    assert "Too many failed sign-ins" in response.text
    assert "_auth_user_id" not in client.session


def test_logout_get_asks_and_keeps_the_session(client_member):
    response = client_member.get("/logout")
    assert response.status_code == 200
    assert 'method="post" action="/logout"' in response.text
    assert client_member.get("/").status_code == 200


def test_logout_post_signs_out(client_member):
    response = client_member.post("/logout")
    assert response.status_code == 302
    assert response["Location"] == "/login"
    assert client_member.get("/").status_code == 302
