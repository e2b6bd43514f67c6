"""Finding `@username` and `@all` in message text.

static/chat/chat.js holds the same pattern (MENTION_PATTERN) to ask before
an @all is sent; change both together. Pages highlight mentions from the
spans of content_html (chat.rendering), not from the text.
"""

import re

# `@` not preceded by a name character (so `bob@example.com` is no mention),
# then a username (Django's characters except `@`); dots only inside, so the
# full stop of "thanks @bob." is not part of the name.
MENTION_PATTERN = re.compile(r"(?<![\w.@+-])@([\w+-]+(?:\.[\w+-]+)*)")
MENTION_ALL = "all"
# Distinct names looked up per message: bounds the IN list of that query.
MAX_NAMED_MENTIONS = 50


def find_mentions(content):
    """Return (the usernames named with @, in order and distinct; whether @all is used)."""
    names, everyone = [], False
    if "@" not in content:
        return names, everyone
    for match in MENTION_PATTERN.finditer(content):
        name = match.group(1)
        if name == MENTION_ALL:
            everyone = True
        elif name not in names and len(names) < MAX_NAMED_MENTIONS:
            names.append(name)
    return names, everyone
