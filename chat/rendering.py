"""Message formatting: `content` (the source text) rendered once to `content_html`.

docs/API.md "Formatting" is the contract: a CommonMark subset (emphasis,
strong, strikethrough, inline code, fenced code blocks, block quotes, lists,
line breaks, autolinked http/https/mailto URLs) plus `@mentions`, and nothing
else. markdown-it-py parses (raw HTML, images, markdown links, headings,
rules, indented code and link references switched off), and nh3 sanitizes
its output against an allow-list as a second line of defence.

A message is rendered at send and edit (chat.actions) and stored with
RENDER_VERSION. A row rendered by an older version is rendered again when it
is read (current_html -> ensure_rendered) and stored back, or in batches by
`manage.py rerender_messages`. Bump RENDER_VERSION whenever the output for
some input changes.
"""

import html
import threading

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

from chat.mentions import MENTION_ALL, MENTION_PATTERN, find_mentions

RENDER_VERSION = 1

ALLOWED_SCHEMES = ("http:", "https:", "mailto:")
LINK_REL = "noopener noreferrer nofollow"

# markdown-it's own recursion limit (the commonmark preset's): block quotes
# and lists nested deeper than this end the rendering there (the source text
# keeps everything), which bounds the work a pathological message can cause.
MAX_NESTING = 20

_SANITIZER = nh3.Cleaner(
    tags={
        "p", "br", "em", "strong", "del", "s", "code", "pre", "blockquote",
        "ul", "ol", "li", "a", "span",
    },
    attributes={"a": {"href"}, "span": {"data-user-id"}, "ol": {"start"}},
    allowed_classes={"span": {"mention"}},
    url_schemes={"http", "https", "mailto"},
    link_rel=LINK_REL,
)

# markdown-it-py's parser and linkify-it keep per-call state on the instance
# (linkify's last match), so each thread gets its own.
_local = threading.local()


def _is_allowed_link(url):
    """markdown-it's link check: only http, https and mailto URLs become links."""
    return url.strip().lower().startswith(ALLOWED_SCHEMES)


def _build_parser():
    md = MarkdownIt(
        "commonmark",
        {"html": False, "linkify": True, "breaks": True, "maxNesting": MAX_NESTING},
    )
    md.enable(["strikethrough", "linkify"])
    # Headings and rules render as the text typed (a chat line starting with
    # `#` is a paragraph); markdown links and images are not in the subset
    # (a link's text could hide where it goes); indented code and link
    # reference definitions surprise more than they help in a chat.
    md.disable([
        "heading", "lheading", "hr", "code", "reference", "html_block",
        "link", "image", "html_inline",
    ])
    # Bare URLs need their scheme: with fuzzy links `models.py` or
    # `@jane.co` would become links. Fuzzy e-mail addresses stay (mailto:).
    md.linkify.set({"fuzzy_link": False, "fuzzy_email": True, "fuzzy_ip": False})
    md.linkify.add("ftp:", None)
    md.linkify.add("//", None)
    md.validateLink = _is_allowed_link
    # After linkify, so that a URL's `@` is inside a link and never a mention.
    md.core.ruler.after("linkify", "mention", _mark_mentions)
    md.add_render_rule("mention", _render_mention)
    md.add_render_rule("fence", _render_fence)
    return md


def _parser():
    md = getattr(_local, "md", None)
    if md is None:
        md = _local.md = _build_parser()
    return md


def _mark_mentions(state):
    """Core rule: turn `@name` in plain text into mention tokens.

    Only text tokens outside links are looked at, so code spans, fenced code
    and URLs never hold a mention; `\\@name` (an escaped `@`) is a separate
    token at this point and stays text. A name becomes a mention only when
    env["mentions"] maps it to a user id; `@all` always does.
    """
    mentions = state.env.get("mentions") or {}
    for block in state.tokens:
        if block.type != "inline" or "@" not in block.content:
            continue
        children, link_depth, changed = [], 0, False
        for token in block.children:
            if token.type == "link_open":
                link_depth += 1
            elif token.type == "link_close":
                link_depth -= 1
            elif token.type == "text" and not link_depth and "@" in token.content:
                pieces = _split_text(token, mentions)
                if pieces is not None:
                    children.extend(pieces)
                    changed = True
                    continue
            children.append(token)
        if changed:
            block.children = children


def _split_text(token, mentions):
    """Return the text token split around its mentions, or None when it has none."""
    text, pieces, position = token.content, [], 0
    for match in MENTION_PATTERN.finditer(text):
        name = match.group(1)
        user_id = "all" if name == MENTION_ALL else mentions.get(name)
        if user_id is None:
            continue
        if match.start() > position:
            pieces.append(_text_token(text[position : match.start()], token.level))
        mention = Token("mention", "span", 0)
        mention.level = token.level
        mention.meta = {"name": name, "user_id": user_id}
        pieces.append(mention)
        position = match.end()
    if not pieces:
        return None
    if position < len(text):
        pieces.append(_text_token(text[position:], token.level))
    return pieces


def _text_token(content, level):
    token = Token("text", "", 0)
    token.content = content
    token.level = level
    return token


def _render_mention(renderer, tokens, index, options, env):
    meta = tokens[index].meta
    return (
        f'<span class="mention" data-user-id="{html.escape(str(meta["user_id"]))}">'
        f"@{html.escape(meta['name'])}</span>"
    )


def _render_fence(renderer, tokens, index, options, env):
    # No language class: nothing highlights code, and the allow-list keeps
    # attributes off <code>.
    return f"<pre><code>{html.escape(tokens[index].content, quote=False)}</code></pre>\n"


def render(content, mentions=None):
    """Return the safe HTML of content; `mentions` maps usernames to user ids.

    Only the names in `mentions` (and `@all`) become mention spans; any other
    `@name` stays text.
    """
    raw = _parser().render(content, {"mentions": mentions or {}})
    return _SANITIZER.clean(raw).strip()


# --- stored renderings ---------------------------------------------------------------


def get_stored_mentions(message_id, content, author_id, author_username):
    """Return {username: user id} of the mentions of a stored message.

    From its Mention rows (one query, only when content names someone other
    than its author); the author, who has no Mention row, from the row itself.
    Like the send, only names of users mentioned at send (members then) resolve;
    a user renamed since no longer matches the text and stays text.
    """
    from chat.models import Mention

    names, _everyone = find_mentions(content)
    mentions = {}
    if author_username in names:
        mentions[author_username] = author_id
    others = [name for name in names if name != author_username]
    if others:
        mentions.update(
            Mention.objects.filter(message_id=message_id, user__username__in=others)
            .values_list("user__username", "user_id")
        )
    return mentions


def ensure_rendered(message_id, content, render_version, *, author_id, author_username):
    """Render a stored message again and store it back; return the HTML.

    The UPDATE only applies while the row still has the version read and is
    not deleted (`... WHERE id = %s AND render_version = %s AND deleted_at IS
    NULL`), so an edit that committed meanwhile (which stored its own
    rendering) wins, and a delete's emptied row stays empty. It changes
    neither changed_seq nor updated_at: a new rendering is not a change of
    the message.
    """
    from chat.models import Message

    content_html = render(
        content, get_stored_mentions(message_id, content, author_id, author_username)
    )
    Message.objects.filter(
        pk=message_id, render_version=render_version, deleted_at__isnull=True
    ).update(content_html=content_html, render_version=RENDER_VERSION)
    return content_html


def current_html(pk, content, content_html, render_version, *, author_id, author_username):
    """The message's HTML as this renderer makes it (stored back if it was older).

    A row of a newer version (written by a newer release during a rolling
    deploy) is served as stored rather than rendered down.
    """
    if render_version >= RENDER_VERSION:
        return content_html
    return ensure_rendered(
        pk, content, render_version, author_id=author_id, author_username=author_username
    )
