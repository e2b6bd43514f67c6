"""Writes of chat messages. Every change takes the project's next number.

The number comes from `UPDATE project SET seq = seq + 1 ... RETURNING seq`: the
update takes the project row lock, which is held until the transaction commits,
so commit order equals number order and a rolled-back change gives its number
back (no gaps). Broadcasts are queued with transaction.on_commit.
"""

import math
import uuid

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from chat.history_cache import warm_first_page
from chat.mentions import find_mentions
from chat.models import Mention, Message, Reaction
from chat.realtime.notify import publish_change_on_commit
from chat.rendering import RENDER_VERSION, render
from chat.selectors import get_message
from chat.serializers import serialize_message
from chat.uploads import attach_uploads, release_message_uploads, validate_attachment_ids
from chatsite.cache import bump_version, count_in_window, uncount
from chatsite.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited
from projects.access import access_project, access_project_cached
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
    The first page is then rebuilt under the new version (chat.history_cache.
    warm_first_page), so the members' next reads stay on the hot path instead
    of each finding it stale.
    """
    project_id = message.project_id
    item = serialize_message(message)
    publish_change_on_commit(message, item)
    transaction.on_commit(lambda: refresh_project_reads(project_id, item))


def refresh_project_reads(project_id, item=None):
    """After commit: retire the project's cached reads and warm its first page.

    A bump that fails (Redis away) is tried again and then owed by this process
    until the cache takes it (chatsite.cache.bump_version): no warm then, and
    readers build from the database.
    """
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


def validate_content(content, *, allow_empty=False):
    """Return stripped content or raise Invalid (empty or over the limit).

    allow_empty: a message with attachments may have no text.
    """
    if not isinstance(content, str):
        raise Invalid("Message content must be text.", fields={"content": "type"})
    content = content.strip()
    if not content and not allow_empty:
        raise Invalid("A message cannot be empty.", fields={"content": "empty"})
    limit = settings.MESSAGE_MAX_LENGTH
    if len(content) > limit:
        raise Invalid(
            f"A message is at most {limit} characters.", fields={"content": "too_long"}
        )
    if "\x00" in content:
        raise Invalid("Message content cannot contain NUL characters.", fields={"content": "nul"})
    return content


def validate_client_msg_id(value):
    if value in (None, ""):
        return None
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise Invalid("client_msg_id must be a UUID.", fields={"client_msg_id": "uuid"})


def check_send_message(user, project_id, content, client_msg_id=None, attachment_ids=None):
    """Validate a send and perform it. Return (message, created).

    Membership is checked against the cached access entry, as the hot reads
    are (no query while it is cached; membership and project changes drop it).
    HTTP and socket sends both come here, so they share the sender's rate
    limit (validate_send_rate). attachment_ids: the sender's own unattached
    uploads in the project (chat.uploads.attach_uploads); with any, the
    content may be empty.
    """
    access_project_cached(user, project_id)
    attachment_ids = validate_attachment_ids(attachment_ids)
    content = validate_content(content, allow_empty=bool(attachment_ids))
    client_msg_id = validate_client_msg_id(client_msg_id)
    try:
        counted = validate_send_rate(user)
    except RateLimited:
        # A retry of an acknowledged send gets its answer, not a 429.
        existing = _existing(user, client_msg_id, project_id) if client_msg_id else None
        if existing is None:
            raise
        return existing, False
    message, created = do_send_message(
        user, project_id, content, client_msg_id, attachment_ids=attachment_ids
    )
    if not created and counted is not None:
        # A retry stores nothing, so it gives its count back: concurrent
        # retries of one send must not use up the sender's allowance.
        uncount(counted, _send_rate()[1])
    return message, created


def _send_rate():
    """(messages allowed, per seconds): the per-user send limit's settings."""
    return settings.SEND_RATE_PER_USER, settings.SEND_RATE_WINDOW_SECONDS


def validate_send_rate(user):
    """Count a send against the user's limit or raise RateLimited (429, `rate_limited`).

    Return the counter's key (to give the count back), or None when nothing
    was counted. SEND_RATE_PER_USER sends per SEND_RATE_WINDOW_SECONDS per
    user, HTTP and sockets together (a socket's own token bucket is per
    socket; 0 turns the limit off). A fixed window counted in the cache: one
    INCR, pipelined with its EXPIRE, per send -- one Redis round trip. A fixed
    window lets a burst of up to twice the limit straddle a window's end; a
    token bucket would not, but needs a script for no gain against a flood.
    The limiter fails open: with the cache unreachable sends are not limited
    -- a chat send must not fail because its limiter could not count, and the
    per-socket buckets still hold.
    """
    limit, window = _send_rate()
    if limit <= 0:
        return None
    counted = count_in_window(f"send-rate:{user.pk}", window)
    if counted is None:
        return None
    count, key, left = counted
    if count > limit:
        raise RateLimited(
            f"You are sending too fast: at most {limit} messages every {window} seconds.",
            retry_after=max(1, math.ceil(left)),
        )
    return key


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


def do_send_message(user, project_id, content, client_msg_id=None, *, attachment_ids=()):
    """Store a message under the project's next number; broadcast after commit.

    A repeated client_msg_id is found by the unique (author, client_msg_id)
    constraint, not looked up first: a first send (the common case) spends no
    query on it, and a repeat's transaction rolls back, number included.
    """
    # Before the transaction: the rendering stored with the row needs the
    # mentioned names' user ids (the same one query as before), and neither
    # that query nor the rendering (up to ~0.1 s for a pathological 10,000
    # characters, docs/API.md "Formatting") should hold the project row lock.
    mentioned_ids, mentions = get_mentions(project_id, user.pk, content)
    content_html = render(content, mentions)
    try:
        with transaction.atomic():
            seq = take_next_seq(project_id)
            message = Message.objects.create(
                project_id=project_id,
                author=user,
                content=content,
                content_html=content_html,
                render_version=RENDER_VERSION,
                seq=seq,
                changed_seq=seq,
                client_msg_id=client_msg_id,
            )
            # After the insert, so a retry (same client_msg_id) is answered by
            # the unique constraint before its uploads are looked at.
            attach_uploads(message, user, list(attachment_ids))
            _insert_mentions(message, mentioned_ids)
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


def _read_again_under_lock(message):
    """Read the message's row again. Call after take_next_seq, in its transaction.

    `message` may have been read before the project row lock was taken, and a
    delete or edit may have committed since. Every change of a message takes
    its project's row lock first, so the row read now (a new statement: a new
    snapshot, with every change committed before the lock) stays as it is until
    this transaction commits; no FOR UPDATE is needed. Every field a change
    of another kind may have rewritten is read (an edit's rendering, a
    reaction's summary), so what this change broadcasts is the row as it is.
    """
    try:
        message.refresh_from_db(fields=[
            "content", "content_html", "render_version", "reaction_summary",
            "changed_seq", "edited_at", "deleted_at",
        ])
    except Message.DoesNotExist:
        raise NotFound("No such message.") from None


def do_edit_message(message, content):
    """Replace a message's content under the project's next number.

    A deleted message is not edited: NotFound (404, "This message was
    deleted."), also when the delete committed after `message` was read (the
    row is read again under the lock), so an edit never brings a deleted text
    back into the row, the broadcast or the cached pages. 404 rather than 409:
    a deleted message is gone for its readers, and the API answered an edit of
    a deleted message 404 before; a race answers the same. The refusal rolls
    back, giving the number back: nothing is broadcast or retired.
    """
    # Outside the project row lock, as for a send (do_send_message).
    mentioned = get_mentions(message.project_id, message.author_id, content)
    content_html = render(content, mentioned[1])
    with transaction.atomic():
        seq = take_next_seq(message.project_id)
        _read_again_under_lock(message)
        if message.deleted_at is not None:
            raise NotFound("This message was deleted.")
        old_content = message.content
        replace_mentions(message, old_content, content, mentioned=mentioned)
        message.content = content
        message.content_html = content_html
        message.render_version = RENDER_VERSION
        message.changed_seq = seq
        message.edited_at = timezone.now()
        message.save(update_fields=[
            "content", "content_html", "render_version", "changed_seq", "edited_at",
            "updated_at",
        ])
        notify_change(message)
    return message


class _AlreadyDeleted(Exception):
    """Rolls a delete of a deleted message back (its number included)."""


def do_delete_message(message):
    """Leave a tombstone in the message's place under the project's next number.

    Deleting a deleted message (also one deleted after `message` was read)
    changes nothing: no number, no broadcast; the message is returned as it is
    (the API answers 204 either way: a delete is idempotent).
    """
    try:
        with transaction.atomic():
            seq = take_next_seq(message.project_id)
            _read_again_under_lock(message)
            if message.deleted_at is not None:
                raise _AlreadyDeleted
            if "@" in message.content:
                Mention.objects.filter(message_id=message.pk).delete()
            if message.reaction_summary:
                # The summary was read under the lock, and chat.reactions keeps
                # it with the rows: empty means no rows, so no query then.
                Reaction.objects.filter(message_id=message.pk).delete()
            message.content = ""
            message.content_html = ""  # the rendering is the deleted text too
            message.reaction_summary = []
            message.changed_seq = seq
            message.deleted_at = timezone.now()
            # Its uploads stop being served now; their files go after commit.
            release_message_uploads(message)
            message.save(update_fields=[
                "content", "content_html", "reaction_summary", "attachment_summary",
                "changed_seq", "deleted_at", "updated_at",
            ])
            notify_change(message)
    except _AlreadyDeleted:
        pass  # rolled back: the number taken is given back
    return message


# --- edits and deletes by members --------------------------------------------------


def access_message(user, message_id):
    """Return (message, membership) for a member of the message's project, or raise.

    A missing message is NotFound; the project's refusal is access_project's
    (404 for a private project, 403 `not_member` for a public one).
    """
    message = get_message(message_id)
    if message is None:
        raise NotFound("No such message.")
    _project, membership = access_project(user, message.project_id)
    return message, membership


def check_edit_message(user, message_id, content):
    """Validate a member's edit and perform it. Return the edited message.

    Only the author edits, within EDIT_WINDOW_SECONDS of sending; a deleted
    message is NotFound. Checked in this order, content last, so a refusal
    says nothing of the content. (Staff moderating in the admin call
    do_edit_message directly: no author or window rule.)
    """
    message, _membership = access_message(user, message_id)
    if message.author_id != user.pk:
        raise Forbidden("Only the author can edit a message.")
    if message.deleted_at is not None:
        raise NotFound("This message was deleted.")
    window = settings.EDIT_WINDOW_SECONDS
    if (timezone.now() - message.created_at).total_seconds() > window:
        raise Forbidden(
            f"Messages can be edited for {_describe_seconds(window)} after sending.",
            code="edit_window_closed",
        )
    return do_edit_message(message, validate_content(content))


def check_delete_message(user, message_id):
    """Validate a member's delete and perform it. Return the message.

    The author or a project owner/admin deletes; deleting a deleted message
    changes nothing (a delete is idempotent). (Staff moderating in the admin
    call do_delete_message directly.)
    """
    message, membership = access_message(user, message_id)
    if message.author_id != user.pk and not membership.is_admin:
        raise Forbidden("Only the author or a project admin can delete a message.")
    if message.deleted_at is None:
        do_delete_message(message)
    return message


def _describe_seconds(seconds):
    """Name a duration in the largest whole unit ("24 hours", "15 minutes")."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


# --- mentions ----------------------------------------------------------------------


def get_mentions(project_id, author_id, content):
    """Return (the ids of the members content mentions, author excluded;
    {username: user id} of the names in content that are members).

    The second is the mention map chat.rendering.render needs (the author
    included when named). No query when content names nobody; else one.
    Raises Invalid for `@all` when the project has more than
    MENTION_ALL_MAX_MEMBERS members besides the author.
    """
    names, everyone = find_mentions(content)
    if not names and not everyone:
        return [], {}
    members = Membership.objects.filter(project_id=project_id)
    if not everyone:
        members = members.filter(user__username__in=names)
    # The author is read with the others (their own @name renders too) and
    # left out of the ids: one more row than the limit may be the author's.
    rows = list(
        members.order_by("user_id").values_list("user_id", "user__username")[
            : MENTION_ALL_MAX_MEMBERS + 2
        ]
    )
    user_ids = [user_id for user_id, _username in rows if user_id != author_id]
    if len(user_ids) > MENTION_ALL_MAX_MEMBERS:
        raise Invalid(
            f"@all notifies at most {MENTION_ALL_MAX_MEMBERS} people; "
            "this project has more members: mention them by name.",
            fields={"content": "mention_all_too_many"},
        )
    named = set(names)
    return user_ids, {username: user_id for user_id, username in rows if username in named}


def get_mentioned_user_ids(message, content):
    """Return the ids of the project's members that content mentions, author excluded."""
    return get_mentions(message.project_id, message.author_id, content)[0]


def record_mentions(message, content):
    """Record the mentions of a new message. Call inside its transaction."""
    _insert_mentions(message, get_mentioned_user_ids(message, content))


def replace_mentions(message, old_content, content, *, mentioned=None):
    """Make an edited message's mentions match its new text. Call inside its transaction.

    `mentioned`: get_mentions of the new text when the caller has it already.
    Users mentioned before and after keep their mention (and its time), so an
    edit does not make an old mention look new; no query when neither text
    has an `@`.
    """
    if "@" not in old_content and "@" not in content:
        return
    if mentioned is None:
        mentioned = get_mentions(message.project_id, message.author_id, content)
    user_ids = mentioned[0]
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
