"""Message formatting: content (the source text) rendered once to content_html.

PLACEHOLDER (being replaced in this session by the real renderer): escapes
the text only.
"""

import html

RENDER_VERSION = 1


def render(content, mentions=None):
    """Return the HTML of content; `mentions` maps usernames to user ids."""
    return "<p>" + html.escape(content) + "</p>"


def current_html(pk, content, content_html, render_version):
    """The message's HTML of the current renderer version."""
    if render_version == RENDER_VERSION:
        return content_html
    return render(content)
