"""Reactions: one user's emoji on one message (docs/API.md "Reactions").

A reaction change is a change of its message, exactly like an edit: it takes
the project's next number under the project row lock (chat.actions.
take_next_seq), writes or removes the Reaction row, rewrites the message's
`reaction_summary` from the rows, and is broadcast and cached through
chat.actions.notify_change. Every reaction change of a message holds its
project's row lock, so reading the rows under it needs no FOR UPDATE: two
users adding the same new emoji at once are serialized, and the same user
twice finds the first row.
"""

import re

import regex
from django.db import transaction
from django.db.models import Count, F, Min, Q, Window
from django.db.models.functions import RowNumber

from chat.actions import (
    _read_again_under_lock,
    _send_rate,
    access_message,
    notify_change,
    take_next_seq,
    validate_send_rate,
)
from chat.models import Reaction
from chatsite.cache import uncount
from chatsite.errors import Invalid, NotFound

MAX_EMOJI_PER_MESSAGE = 20  # distinct emoji on one message
SUMMARY_USER_IDS = 50  # user ids listed per emoji in reaction_summary
MAX_EMOJI_BYTES = 32  # UTF-8 bytes of one emoji

SHORTCODE = re.compile(r":[a-z0-9_+-]{1,32}:")
# One emoji as Unicode writes it (UTS #51): a keycap (digit, # or * with its
# combining enclosing keycap), a flag (two regional indicators), or a
# pictograph followed only by emoji sequence parts -- presentation selectors,
# skin-tone modifiers, zero-width joiners with further pictographs (families,
# professions), tag characters (subdivision flags). A lone skin-tone swatch
# counts too. Letters, digits, spaces, controls and combining accents do not.
EMOJI = regex.compile(
    r"[0-9#*]\uFE0F?\u20E3"
    r"|\p{Regional_Indicator}{2}"
    r"|[\p{Extended_Pictographic}\p{Emoji_Modifier}]"
    r"[\uFE0E\uFE0F\u200D\p{Emoji_Modifier}\p{Extended_Pictographic}\U000E0020-\U000E007F]*"
)
GRAPHEME = regex.compile(r"\X")


def validate_emoji(value):
    """Return value if it is one emoji or a `:shortcode:`, else raise Invalid (422).

    One emoji is one grapheme cluster (regex's `\\X`, Unicode's extended
    grapheme clusters) of at most 32 UTF-8 bytes that EMOJI matches whole.
    Nothing is stripped or normalized: " 👍" is refused, not repaired.
    """
    if not isinstance(value, str):
        raise Invalid("emoji must be text.", fields={"emoji": "type"})
    if SHORTCODE.fullmatch(value):
        return value
    if (
        len(value.encode("utf-8", "surrogatepass")) <= MAX_EMOJI_BYTES
        and len(GRAPHEME.findall(value)) == 1
        and EMOJI.fullmatch(value)
    ):
        return value
    raise Invalid(
        "emoji must be one emoji (at most 32 bytes) or a :shortcode: of "
        "a-z, 0-9, _, + and - (at most 32 characters).",
        fields={"emoji": "not_emoji"},
    )


def build_reaction_summary(message_id):
    """Return the message's reaction_summary, built from its Reaction rows in one query.

    [{"emoji", "count", "user_ids"}]: emoji in the order of their earliest
    current reaction, user_ids the first SUMMARY_USER_IDS reactors in reaction
    order. Rows are ordered by id, which follows commit order for one message
    (every insert holds the project row lock). At most 20 emoji x 50 rows.
    """
    by_emoji = [F("emoji")]
    rows = (
        Reaction.objects.filter(message_id=message_id)
        .annotate(
            rank=Window(RowNumber(), partition_by=by_emoji, order_by=F("id").asc()),
            total=Window(Count("id"), partition_by=by_emoji),
            first=Window(Min("id"), partition_by=by_emoji),
        )
        .filter(rank__lte=SUMMARY_USER_IDS)
        .order_by("first", "rank")
        .values_list("emoji", "user_id", "total")
    )
    summary = []
    for emoji, user_id, total in rows:
        if not summary or summary[-1]["emoji"] != emoji:
            summary.append({"emoji": emoji, "count": total, "user_ids": []})
        summary[-1]["user_ids"].append(user_id)
    return summary


class _Unchanged(Exception):
    """Rolls back a reaction change that changes nothing (its number included)."""


def do_add_reaction(user, message, emoji):
    """Add the user's emoji to the message under the project's next number.

    Return True if it was added, False if it was there (nothing changed: the
    number is given back, nothing is broadcast). Raises NotFound for a deleted
    message (also one deleted after `message` was read) and Invalid
    (`too_many_reactions`) for a 21st distinct emoji.
    """
    try:
        with transaction.atomic():
            seq = take_next_seq(message.project_id)
            _read_again_under_lock(message)
            if message.deleted_at is not None:
                raise NotFound("This message was deleted.")
            # One row per emoji already on the message: is it mine, and how
            # many are there (bounded by the limit below).
            present = dict(
                Reaction.objects.filter(message_id=message.pk)
                .values("emoji")
                .annotate(mine=Count("id", filter=Q(user_id=user.pk)))
                .values_list("emoji", "mine")
                .order_by()
            )
            if present.get(emoji):
                raise _Unchanged
            if emoji not in present and len(present) >= MAX_EMOJI_PER_MESSAGE:
                raise Invalid(
                    f"A message has at most {MAX_EMOJI_PER_MESSAGE} different reactions.",
                    fields={"emoji": "too_many_reactions"},
                    code="too_many_reactions",
                )
            Reaction.objects.create(message_id=message.pk, user_id=user.pk, emoji=emoji)
            _save_change(message, seq)
    except _Unchanged:
        return False
    return True


def do_remove_reaction(user, message, emoji):
    """Remove the user's emoji from the message under the project's next number.

    Return True if it was removed, False if it was not there (nothing changed,
    as for do_add_reaction). Raises NotFound for a deleted message.
    """
    try:
        with transaction.atomic():
            seq = take_next_seq(message.project_id)
            _read_again_under_lock(message)
            if message.deleted_at is not None:
                raise NotFound("This message was deleted.")
            deleted, _ = Reaction.objects.filter(
                message_id=message.pk, user_id=user.pk, emoji=emoji
            ).delete()
            if not deleted:
                raise _Unchanged
            _save_change(message, seq)
    except _Unchanged:
        return False
    return True


def _save_change(message, seq):
    message.reaction_summary = build_reaction_summary(message.pk)
    message.changed_seq = seq
    message.save(update_fields=["reaction_summary", "changed_seq", "updated_at"])
    notify_change(message)


def check_add_reaction(user, message_id, emoji):
    """Validate a member's reaction and add it. Return (message, added).

    Checked in this order: membership (access_message: 404 private, 403
    `not_member` public), the message not deleted (404), the emoji (422), the
    per-user send limit (429; reactions count with sends, docs/API.md §8).
    """
    message = _access_live_message(user, message_id)
    emoji = validate_emoji(emoji)
    return message, _counted(user, lambda: do_add_reaction(user, message, emoji))


def check_remove_reaction(user, message_id, emoji):
    """Validate a member's reaction removal and perform it. Return (message, removed)."""
    message = _access_live_message(user, message_id)
    emoji = validate_emoji(emoji)
    return message, _counted(user, lambda: do_remove_reaction(user, message, emoji))


def _access_live_message(user, message_id):
    message, _membership = access_message(user, message_id)
    if message.deleted_at is not None:
        raise NotFound("This message was deleted.")
    return message


def _counted(user, change):
    """Run change() under the user's send limit; a change that changed nothing
    (or failed) gives its count back, as a repeated send does."""
    counted = validate_send_rate(user)
    changed = False
    try:
        changed = change()
    finally:
        if not changed and counted is not None:
            uncount(counted, _send_rate()[1])
    return changed
