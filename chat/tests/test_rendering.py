"""Message formatting (docs/API.md "Formatting"): the allowed subset, what stays
inert, rendering at send and edit, the lazy re-render of older rows, the
rerender_messages command, and bounded work on pathological input."""

import cProfile
import io
import pstats
from html.parser import HTMLParser

import pytest
from django.core.management import CommandError, call_command

from chat import rendering
from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.models import Message
from chat.rendering import RENDER_VERSION, render
from chatsite.cache import get_version
from conftest import login_client
from projects.actions import do_create_project, do_join_project
from projects.models import Project

ALLOWED_TAGS = {
    "p", "br", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol",
    "li", "a", "span",
}
ALLOWED_ATTRIBUTES = {
    ("a", "href"), ("a", "rel"), ("span", "class"), ("span", "data-user-id"),
    ("ol", "start"),
}
REL = "noopener noreferrer nofollow"


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def elements(html):
    """[(tag, {attribute: value})] of every start tag in html, as a browser parses it."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.elements


def assert_safe(html):
    """Only allowed tags and attributes; links only http(s)/mailto with the rel."""
    for tag, attrs in elements(html):
        assert tag in ALLOWED_TAGS, html
        for name in attrs:
            assert (tag, name) in ALLOWED_ATTRIBUTES, html
        if tag == "a":
            assert attrs["href"].lower().startswith(("http://", "https://", "mailto:")), html
            assert attrs["rel"] == REL, html
        if tag == "span":
            assert attrs["class"] == "mention", html


# --- the allowed subset ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "html"),
    [
        ("*em* _em_", "<p><em>em</em> <em>em</em></p>"),
        ("**strong** __strong__", "<p><strong>strong</strong> <strong>strong</strong></p>"),
        ("~~gone~~", "<p><s>gone</s></p>"),
        ("`a < b`", "<p><code>a &lt; b</code></p>"),
        ("```python\nif a < b:\n    pass\n```",
         "<pre><code>if a &lt; b:\n    pass\n</code></pre>"),
        ("> quoted\n> on", "<blockquote>\n<p>quoted<br>\non</p>\n</blockquote>"),
        ("- one\n- two", "<ul>\n<li>one</li>\n<li>two</li>\n</ul>"),
        ("1. one\n2. two", "<ol>\n<li>one</li>\n<li>two</li>\n</ol>"),
        ("3. three\n4. four", '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>'),
        ("one\ntwo", "<p>one<br>\ntwo</p>"),
        ("one\n\ntwo", "<p>one</p>\n<p>two</p>"),
        ("a & b < c", "<p>a &amp; b &lt; c</p>"),
    ],
)
def test_each_element_of_the_subset_renders(content, html):
    assert render(content) == html
    assert_safe(render(content))


@pytest.mark.parametrize(
    ("content", "href", "text"),
    [
        ("see https://example.com/a?b=1&c=2 now", "https://example.com/a?b=1&c=2",
         "https://example.com/a?b=1&amp;c=2"),
        ("http://example.com", "http://example.com", "http://example.com"),
        ("mailto:bob@example.com", "mailto:bob@example.com", "mailto:bob@example.com"),
        ("bob@example.com", "mailto:bob@example.com", "bob@example.com"),
        ("<https://example.com>", "https://example.com", "https://example.com"),
    ],
)
def test_bare_urls_become_links_with_rel(content, href, text):
    html = render(content)
    ((tag, attrs),) = [e for e in elements(html) if e[0] == "a"]
    assert attrs == {"href": href, "rel": REL}
    assert f">{text}</a>" in html


@pytest.mark.parametrize(
    "content",
    ["www.example.com", "see models.py", "ftp://example.com/x", "//example.com/x",
     "file:///etc/passwd"],
)
def test_only_http_https_and_mailto_urls_with_their_scheme_are_linked(content):
    assert "<a" not in render(content)


@pytest.mark.parametrize(
    ("content", "html"),
    [
        ("# not a heading", "<p># not a heading</p>"),
        ("title\n===", "<p>title<br>\n===</p>"),
        ("---", "<p>---</p>"),
        ("    indented", "<p>indented</p>"),
    ],
)
def test_headings_rules_and_indented_code_are_text(content, html):
    assert render(content) == html


# --- inert input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "[x](javascript:alert(1))",
        "[x](JAVASCRIPT:alert(1))",
        "[x](data:text/html,<script>alert(1)</script>)",
        "[x](vbscript:msgbox(1))",
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "![img](http://example.com/a.png)",
        "![img](data:image/png;base64,AAAA)",
        '<a href="http://example.com">x</a>',
        '<a href="javascript:alert(1)">x</a>',
        "<javascript:alert(1)>",
        "<data:text/html,hi>",
        "<iframe src=http://example.com></iframe>",
        '<span class="mention" data-user-id="1">@fake</span>',
        "[x]: javascript:alert(1)\n\n[x]",
        "<!-- comment --> <style>p{}</style>",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "```\n</code></pre><script>alert(1)</script>\n```",
        "`</code><img src=x onerror=alert(1)>`",
    ],
)
def test_bad_input_is_inert(content):
    html = render(content, {"bob": 1})
    assert_safe(html)
    tags = {tag for tag, _attrs in elements(html)}
    assert not tags & {"script", "img", "iframe", "style"}
    assert "javascript:" not in " ".join(a.get("href", "") for _t, a in elements(html))
    assert "span" not in tags  # no mention of bob here, and none faked


def test_markdown_links_render_as_their_text():
    # Not in the subset: a link's text could hide where it goes. The URL
    # inside is still linked, showing itself.
    html = render("[click](https://example.com/x)")
    assert html == (
        f'<p>[click](<a href="https://example.com/x" rel="{REL}">'
        "https://example.com/x</a>)</p>"
    )


def test_raw_html_is_shown_as_text():
    assert render("<b>hi</b>") == "<p>&lt;b&gt;hi&lt;/b&gt;</p>"


# --- mentions ----------------------------------------------------------------------------


def test_mentions_render_as_spans_of_known_users_only():
    html = render("hi @bob, @carol and @all.", {"bob": 7})
    assert html == (
        '<p>hi <span class="mention" data-user-id="7">@bob</span>, @carol and '
        '<span class="mention" data-user-id="all">@all</span>.</p>'
    )


@pytest.mark.parametrize(
    "content",
    [
        "`@bob`",
        "```\n@bob\n```",
        "https://example.com/@bob",
        "<https://example.com/@bob>",
        "bob@example.com",
        "\\@bob",
        "mail@bob",
    ],
)
def test_no_mention_in_code_links_addresses_or_escaped(content):
    assert "mention" not in render(content, {"bob": 7})


def test_mentions_inside_emphasis_and_quotes_render():
    html = render("> **@bob** look", {"bob": 7})
    assert '<strong><span class="mention" data-user-id="7">@bob</span></strong>' in html


def test_mention_names_are_escaped():
    html = render("@a+b", {"a+b": 3})
    assert html == '<p><span class="mention" data-user-id="3">@a+b</span></p>'


# --- rendered at send and edit ----------------------------------------------------------------


@pytest.fixture
def carol(make_user):
    return make_user("carol")  # not a member of the project


def test_send_stores_the_rendering_with_member_mentions(owner, member, carol, project):
    message, _ = do_send_message(owner, project.pk, "**hi** @member @carol @owner")
    row = Message.objects.get(pk=message.pk)
    assert row.render_version == RENDER_VERSION
    assert row.content == "**hi** @member @carol @owner"
    assert row.content_html == (
        f'<p><strong>hi</strong> <span class="mention" data-user-id="{member.pk}">'
        f'@member</span> @carol <span class="mention" data-user-id="{owner.pk}">'
        "@owner</span></p>"
    )


def test_api_send_answers_content_html(project, client_member):
    response = client_member.post(
        "/api/messages", {"project_id": project.pk, "content": "*hey*"},
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response.json()["content_html"] == "<p><em>hey</em></p>"
    assert response.json()["content"] == "*hey*"


def test_send_query_count_is_unchanged_by_rendering(
    owner, member, project, django_assert_num_queries
):
    # SAVEPOINT, UPDATE ... RETURNING seq, INSERT the message, RELEASE.
    with django_assert_num_queries(4):
        do_send_message(owner, project.pk, "**plain** text, `no` mentions")
    # The same plus the one SELECT of the mentioned members (ids and usernames,
    # which the rendering uses; before the transaction, outside the project
    # row lock) and the INSERT of their mentions.
    with django_assert_num_queries(6):
        do_send_message(owner, project.pk, "@member **look** and @nobody")
    with django_assert_num_queries(6):
        do_send_message(owner, project.pk, "@all and @member")


def test_edit_renders_again_and_the_change_carries_it(
    owner, member, project, published, django_capture_on_commit_callbacks
):
    client = login_client(owner)
    with django_capture_on_commit_callbacks(execute=True):
        message, _ = do_send_message(owner, project.pk, "plain")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(
            f"/api/messages/{message.pk}", {"content": "~~plain~~ @member"},
            content_type="application/json",
        )
    assert response.status_code == 200
    html = (
        f'<p><s>plain</s> <span class="mention" data-user-id="{member.pk}">@member</span></p>'
    )
    assert response.json()["content_html"] == html
    assert Message.objects.get(pk=message.pk).content_html == html
    # What the sockets get (a message_batch of this change) carries it too.
    (_project_id, event) = published[-1]
    assert event["message"]["content_html"] == html
    assert event["message"]["changed_seq"] == response.json()["changed_seq"]


def test_delete_empties_the_stored_rendering(owner, project):
    message, _ = do_send_message(owner, project.pk, "**secret**")
    do_delete_message(message)
    row = Message.objects.get(pk=message.pk)
    assert (row.content, row.content_html) == ("", "")


# --- lazy re-render --------------------------------------------------------------------------


def make_outdated(message, version=0):
    """Make a row look rendered by an older renderer (as rows written before it)."""
    Message.objects.filter(pk=message.pk).update(content_html="<p>old</p>", render_version=version)


def project_seq(project):
    return Project.objects.get(pk=project.pk).seq


@pytest.mark.parametrize("path", ["cursor", "page"])
def test_an_outdated_row_is_rendered_when_read_and_stored(
    path, owner, member, project, client_member, django_assert_num_queries
):
    message, _ = do_send_message(owner, project.pk, "**@member** hi")
    # Not the first page at the default size: that one is cached.
    url = (
        f"/api/projects/{project.pk}/messages?limit=10" if path == "cursor"
        else f"/api/messages?project_id={project.pk}&per_page=10"
    )
    client_member.get(url)  # membership is then checked from the cache
    make_outdated(message)
    before = Message.objects.get(pk=message.pk)
    seq = project_seq(project)
    # The read as always (the cursor page's one statement; the page-numbered
    # count and rows), plus the row's Mention rows (ids + usernames) and its
    # conditional UPDATE.
    base = 1 if path == "cursor" else 2
    with django_assert_num_queries(base + 2):
        item = client_member.get(url).json()["items"][0]
    html = (
        f'<p><strong><span class="mention" data-user-id="{member.pk}">@member</span>'
        "</strong> hi</p>"
    )
    assert item["content_html"] == html
    row = Message.objects.get(pk=message.pk)
    assert (row.content_html, row.render_version) == (html, RENDER_VERSION)
    # Not a change of the message: no number, no new changed_seq or updated_at.
    assert (row.changed_seq, row.updated_at) == (before.changed_seq, before.updated_at)
    assert project_seq(project) == seq
    # Stored: the next read (past the cache) renders nothing.
    with django_assert_num_queries(base):
        again = client_member.get(url).json()["items"][0]
    assert again["content_html"] == html


def test_lazy_render_of_the_authors_own_mention_needs_no_query(
    owner, project, django_assert_num_queries
):
    message, _ = do_send_message(owner, project.pk, "note to @owner")
    make_outdated(message)
    row = Message.objects.select_related("author").get(pk=message.pk)
    with django_assert_num_queries(1):  # the UPDATE only
        html = rendering.current_html(
            row.pk, row.content, row.content_html, row.render_version,
            author_id=owner.pk, author_username="owner",
        )
    assert html == f'<p>note to <span class="mention" data-user-id="{owner.pk}">@owner</span></p>'


def test_an_edit_that_committed_first_wins_over_a_lazy_render(owner, project):
    message, _ = do_send_message(owner, project.pk, "first")
    make_outdated(message)
    do_edit_message(Message.objects.get(pk=message.pk), "*second*")
    # A reader that read the old row renders it and writes with the old version.
    rendering.ensure_rendered(
        message.pk, "first", 0, author_id=owner.pk, author_username="owner"
    )
    row = Message.objects.get(pk=message.pk)
    assert (row.content, row.content_html) == ("*second*", "<p><em>second</em></p>")


def test_a_lazy_render_never_refills_a_deleted_row(owner, project):
    message, _ = do_send_message(owner, project.pk, "secret")
    make_outdated(message)
    do_delete_message(Message.objects.get(pk=message.pk))
    rendering.ensure_rendered(
        message.pk, "secret", 0, author_id=owner.pk, author_username="owner"
    )
    assert Message.objects.get(pk=message.pk).content_html == ""


def test_a_row_of_a_newer_renderer_is_served_as_stored(
    owner, project, django_assert_num_queries
):
    message, _ = do_send_message(owner, project.pk, "*x*")
    make_outdated(message, version=RENDER_VERSION + 1)
    with django_assert_num_queries(0):
        html = rendering.current_html(
            message.pk, "*x*", "<p>newer</p>", RENDER_VERSION + 1,
            author_id=owner.pk, author_username="owner",
        )
    assert html == "<p>newer</p>"


# --- manage.py rerender_messages -------------------------------------------------------------


def test_rerender_messages_renders_outdated_rows_in_batches(owner, member, project):
    other = do_create_project(member, name="Other")
    do_join_project(owner, other.pk)
    sent = [
        do_send_message(owner, project.pk, "**a** @member")[0],
        do_send_message(owner, project.pk, "*b*")[0],
        do_send_message(member, other.pk, "`c`")[0],
        do_send_message(owner, project.pk, "current")[0],
    ]
    gone = do_send_message(owner, project.pk, "gone")[0]
    do_delete_message(gone)
    for message in sent[:3]:
        make_outdated(message)
    seqs = {p.pk: project_seq(p) for p in (project, other)}
    changed = {m.pk: Message.objects.get(pk=m.pk).changed_seq for m in sent}
    versions = {p.pk: get_version("project", p.pk) for p in (project, other)}

    out = io.StringIO()
    call_command("rerender_messages", "--batch-size", "2", stdout=out)
    assert out.getvalue().strip() == (
        f"Rendered 3 messages with renderer version {RENDER_VERSION} in 2 batches; "
        "0 changed meanwhile and were left as they are. "
        "Retired the cached pages of 2 of 2 projects."
    )
    rows = {m.pk: m for m in Message.objects.all()}
    assert rows[sent[0].pk].content_html == (
        f'<p><strong>a</strong> <span class="mention" data-user-id="{member.pk}">'
        "@member</span></p>"
    )
    assert rows[sent[1].pk].content_html == "<p><em>b</em></p>"
    assert rows[sent[2].pk].content_html == "<p><code>c</code></p>"
    assert all(rows[m.pk].render_version == RENDER_VERSION for m in sent)
    assert (rows[gone.pk].content_html, rows[gone.pk].render_version) == ("", RENDER_VERSION)
    # No numbers taken; cached pages retired.
    assert {m.pk: rows[m.pk].changed_seq for m in sent} == changed
    assert {p.pk: project_seq(p) for p in (project, other)} == seqs
    for pk, version in versions.items():
        assert get_version("project", pk) != version

    out = io.StringIO()
    call_command("rerender_messages", stdout=out)
    assert out.getvalue().startswith("Rendered 0 messages")
    out = io.StringIO()
    call_command("rerender_messages", "--all", stdout=out)
    assert out.getvalue().startswith("Rendered 4 messages")  # all but the deleted one


def test_rerender_messages_refuses_a_bad_batch_size(db):
    with pytest.raises(CommandError):
        call_command("rerender_messages", "--batch-size", "0")


# --- bounded work ---------------------------------------------------------------------------


LIMIT = 10_000  # MESSAGE_MAX_LENGTH's default, the longest message


def fill(unit, length=LIMIT):
    return (unit * (length // len(unit) + 1))[:length]


def python_calls(content):
    """Python function calls one render of content costs (cProfile's count)."""
    profile = cProfile.Profile()
    profile.enable()
    render(content, {"bob": 1})
    profile.disable()
    return pstats.Stats(profile).total_calls


# Each repeated to 10,000 characters: the worst cases found (docs/API.md
# "Formatting", "Bounded work"), and the classic traps of Markdown parsers.
PATHOLOGICAL = {
    "nested emphasis": "*a **b ",
    "open emphasis": "*a ",
    "underscores": "_a __b ",
    "stars": "*",
    "strikethrough": "~~a ",
    "backticks": "`",
    "backtick pairs": "`a ",
    "brackets": "[",
    "link starts": "[a](",
    "image starts": "![",
    "quotes": "> ",
    "quote lines": "> a\n",
    "list markers": "- ",
    "hard breaks": "a  \n",
    "urls": "http://a.com ",
    "autolink starts": "<http://a",
    "emails": "a@b.co ",
    "mentions": "@bob ",
    "at signs": "@",
    "escapes": "\\*",
    "entities": "&amp;",
    "fences": "```\n",
}


@pytest.fixture(scope="module")
def plain_calls():
    render("warm the parser of this thread")
    # Plain text in short lines: what an ordinary long message costs.
    return python_calls(fill("lorem ipsum dolor\n"))


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_input_costs_at_most_a_few_times_plain_text(name, plain_calls):
    # Measured: the worst is 9.2x plain text ("autolink starts", 359,043 calls
    # against 39,015); most are 1-5x.
    assert python_calls(fill(PATHOLOGICAL[name])) <= 12 * plain_calls


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_input_costs_grow_linearly(name, plain_calls):
    # Twice the length costs about twice the calls: nothing quadratic.
    unit = PATHOLOGICAL[name]
    assert python_calls(fill(unit, 2 * LIMIT)) <= 2.2 * python_calls(fill(unit)) + 200


def test_nesting_is_cut_at_the_limit():
    html = render(fill("> ") + "deep")
    assert html.count("<blockquote>") <= rendering.MAX_NESTING
    html = render(fill("- "))
    assert html.count("<ul>") <= rendering.MAX_NESTING
