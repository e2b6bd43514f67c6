"""Reads of chat history. History is ordered by seq, never by time or offset."""

from chat.models import Message


def _messages(project_id):
    return Message.objects.filter(project_id=project_id).select_related("author").only(
        "id", "project_id", "seq", "changed_seq", "content", "created_at", "edited_at",
        "deleted_at", "client_msg_id", "author_id", "author__id", "author__username",
    )


def get_recent_messages(project_id, *, before=None, limit=50):
    """Return (messages newest first, has_more) with seq < before."""
    qs = _messages(project_id)
    if before is not None:
        qs = qs.filter(seq__lt=before)
    rows = list(qs.order_by("-seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


def get_changes_after(project_id, *, after, limit=200, upto=None):
    """Return (changes oldest first by changed_seq, has_more) with changed_seq > after."""
    qs = _messages(project_id).filter(changed_seq__gt=after)
    if upto is not None:
        qs = qs.filter(changed_seq__lte=upto)
    rows = list(qs.order_by("changed_seq")[: limit + 1])
    return rows[:limit], len(rows) > limit


def get_message_page(project_id, *, page, per_page):
    """Return (messages newest first, total) for a page-numbered listing."""
    total = Message.objects.filter(project_id=project_id).count()
    start = (page - 1) * per_page
    rows = list(_messages(project_id).order_by("-seq")[start : start + per_page])
    return rows, total


def get_message(message_id):
    return _messages_by_id().filter(pk=message_id).first()


def _messages_by_id():
    return Message.objects.select_related("author")
