"""Finding `@username` and `@all` in message text.

static/chat/chat.js holds the same pattern (MENTION_PATTERN) to highlight
mentions live; change both together.
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


def split_mentions(content, username):
    """Split content into (text, mentions_me) parts; None when nothing mentions username.

    `@username` and `@all` mention the user. The template escapes every part.
    """
    if "@" not in content:
        return None
    parts, position, found = [], 0, False
    for match in MENTION_PATTERN.finditer(content):
        if match.group(1) not in (username, MENTION_ALL):
            continue
        found = True
        if match.start() > position:
            parts.append((content[position : match.start()], False))
        parts.append((match.group(0), True))
        position = match.end()
    if not found:
        return None
    if position < len(content):
        parts.append((content[position:], False))
    return parts
