"""Writes of chat messages. Every change takes the project's next number.

The number comes from `UPDATE project SET seq = seq + 1 ... RETURNING seq`: the
update takes the project row lock, which is held until the transaction commits,
so commit order equals number order and a rolled-back change gives its number
back (no gaps). Broadcasts are queued with transaction.on_commit.
"""

import uuid

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from chat import broadcast
from chat.mentions import find_mentions
from chat.models import Mention, Message
from chat.selectors import warm_first_page
from chat.serializers import serialize_message
from chatsite.cache import bump_version
from chatsite.errors import Conflict, Invalid
from projects.access import access_project_cached
from projects.models import Membership

# `@all` writes one row per member inside the send's transaction, which holds
# the project row lock: past this many members it is refused rather than
# making every other sender in the project wait on a large insert.
MENTION_ALL_MAX_MEMBERS = 1000
MENTION_BATCH_SIZE = 500


def notify_change(message):
    """After commit: broadcast the change, retire the project's cached reads and
    build the first history page again.

    No Redis call happens inside the transaction: it holds the project row
    lock, and a slow Redis would hold every other sender of the project with
    it. One bump after commit is enough: a body built from the rows before the
    commit was tagged with a version read before the bump, which the bump
    retires; a reader that sees the bumped version reads after the commit.
    The first page is then rebuilt under the new version (chat.selectors.
    warm_first_page), so the members' next reads stay on the hot path instead
    of each finding it stale.
    """
    project_id = message.project_id
    item = serialize_message(message)
    broadcast.broadcast_on_commit(message, item)
    transaction.on_commit(lambda: refresh_project_reads(project_id, item))


def refresh_project_reads(project_id, item=None):
    version = bump_version("project", project_id)
    if version is not None:
        warm_first_page(project_id, version, item)


def take_next_seq(project_id):
    """Return the project's next change number. Call inside transaction.atomic."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE projects_project SET seq = seq + 1 WHERE id = %s RETURNING seq",
            [project_id],
        )
        return cursor.fetchone()[0]


def check_content(content):
    """Return stripped content or raise Invalid (empty or over the limit)."""
    if not isinstance(content, str):
        raise Invalid("Message content must be text.", fields={"content": "type"})
    content = content.strip()
    if not content:
        raise Invalid("A message cannot be empty.", fields={"content": "empty"})
    limit = settings.MESSAGE_MAX_LENGTH
    if len(content) > limit:
        raise Invalid(
            f"A message is at most {limit} characters.", fields={"content": "too_long"}
        )
    if "\x00" in content:
        raise Invalid("Message content cannot contain NUL characters.", fields={"content": "nul"})
    return content


def check_client_msg_id(value):
    if value in (None, ""):
        return None
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Invalid("client_msg_id must be a UUID.", fields={"client_msg_id": "uuid"})


def check_send_message(user, project_id, content, client_msg_id=None):
    """Validate a send and perform it. Return (message, created).

    Membership is checked against the cached access entry, as the hot reads
    are (no query while it is cached; membership and project changes drop it).
    """
    access_project_cached(user, project_id)
    content = check_content(content)
    client_msg_id = check_client_msg_id(client_msg_id)
    return do_send_message(user, project_id, content, client_msg_id)


def _existing(user, client_msg_id, project_id):
    existing = (
        Message.objects.select_related("author")
        .filter(author_id=user.pk, client_msg_id=client_msg_id)
        .first()
    )
    if existing is not None and existing.project_id != project_id:
        raise Conflict(
            "This client_msg_id was already used for a message in another project.",
            fields={"client_msg_id": "reused"},
        )
    return existing


def do_send_message(user, project_id, content, client_msg_id=None):
    """Store a message under the project's next number; broadcast after commit.

    A repeated client_msg_id is found by the unique (author, client_msg_id)
    constraint, not looked up first: a first send (the common case) spends no
    query on it, and a repeat's transaction rolls back, number included.
    """
    try:
        with transaction.atomic():
            seq = take_next_seq(project_id)
            message = Message.objects.create(
                project_id=project_id,
                author=user,
                content=content,
                seq=seq,
                changed_seq=seq,
                client_msg_id=client_msg_id,
            )
            record_mentions(message, content)
            notify_change(message)
    except IntegrityError:
        # This client_msg_id was sent before (a retry) or by a concurrent send
        # that won: its row is the answer.
        if client_msg_id is None:
            raise
        existing = _existing(user, client_msg_id, project_id)
        if existing is None:
            raise
        return existing, False
    return message, True


def do_edit_message(message, content):
    """Replace a message's content under the project's next number."""
    with transaction.atomic():
        seq = take_next_seq(message.project_id)
        old_content = message.content
        message.content = content
        message.changed_seq = seq
        message.edited_at = timezone.now()
        message.save(update_fields=["content", "changed_seq", "edited_at", "updated_at"])
        replace_mentions(message, old_content, content)
        notify_change(message)
    return message


def do_delete_message(message):
    """Leave a tombstone in the message's place under the project's next number."""
    with transaction.atomic():
        seq = take_next_seq(message.project_id)
        if "@" in message.content:
            Mention.objects.filter(message_id=message.pk).delete()
        message.content = ""
        message.changed_seq = seq
        message.deleted_at = timezone.now()
        message.save(update_fields=["content", "changed_seq", "deleted_at", "updated_at"])
        notify_change(message)
    return message


# --- mentions ----------------------------------------------------------------------


def get_mentioned_user_ids(message, content):
    """Return the ids of the project's members that content mentions, author excluded.

    No query when content names nobody; else one. Raises Invalid for `@all`
    when the project has more than MENTION_ALL_MAX_MEMBERS members besides
    the author.
    """
    names, everyone = find_mentions(content)
    if not names and not everyone:
        return []
    members = Membership.objects.filter(project_id=message.project_id).exclude(
        user_id=message.author_id
    )
    if not everyone:
        members = members.filter(user__username__in=names)
    user_ids = list(
        members.order_by("user_id").values_list("user_id", flat=True)[
            : MENTION_ALL_MAX_MEMBERS + 1
        ]
    )
    if len(user_ids) > MENTION_ALL_MAX_MEMBERS:
        raise Invalid(
            f"@all notifies at most {MENTION_ALL_MAX_MEMBERS} people; "
            "this project has more members: mention them by name.",
            fields={"content": "mention_all_too_many"},
        )
    return user_ids


def record_mentions(message, content):
    """Record the mentions of a new message. Call inside its transaction."""
    _insert_mentions(message, get_mentioned_user_ids(message, content))


def replace_mentions(message, old_content, content):
    """Make an edited message's mentions match its new text. Call inside its transaction.

    Users mentioned before and after keep their mention (and its time), so an
    edit does not make an old mention look new; no query when neither text
    has an `@`.
    """
    if "@" not in old_content and "@" not in content:
        return
    user_ids = get_mentioned_user_ids(message, content)
    if "@" in old_content:
        Mention.objects.filter(message_id=message.pk).exclude(user_id__in=user_ids).delete()
    _insert_mentions(message, user_ids, ignore_conflicts=True)


def _insert_mentions(message, user_ids, *, ignore_conflicts=False):
    if not user_ids:
        return
    now = timezone.now()
    Mention.objects.bulk_create(
        [
            Mention(
                message_id=message.pk, user_id=user_id, project_id=message.project_id,
                seq=message.seq, created_at=now,
            )
            for user_id in user_ids
        ],
        batch_size=MENTION_BATCH_SIZE,
        ignore_conflicts=ignore_conflicts,
    )
