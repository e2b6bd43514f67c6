"""Message search: PostgreSQL full-text (GIN index), a portable fallback elsewhere."""

from django.db import connection

from chat.models import Message
from projects.models import Membership


def search_messages(user, query, *, project_id=None, before=None, limit=50):
    """Return (hits newest first, has_more), only from the user's projects."""
    mine = Membership.objects.filter(user_id=user.pk, project__is_active=True).values(
        "project_id"
    )
    qs = Message.objects.filter(project_id__in=mine, deleted_at__isnull=True)
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    if connection.vendor == "postgresql":
        # Matches the expression of idx_message_content_fulltext exactly, so
        # the planner can use the GIN index.
        qs = qs.extra(
            where=["to_tsvector('english', chat_message.content) @@ "
                   "plainto_tsquery('english', %s)"],
            params=[query],
        )
    else:
        qs = qs.filter(content__icontains=query)
    rows = list(qs.select_related("author").order_by("-id")[: limit + 1])
    return rows[:limit], len(rows) > limit
