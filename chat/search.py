"""Message search: PostgreSQL full-text (GIN index), a portable fallback elsewhere."""

from django.db import connection
from django.db.models import BigIntegerField, ExpressionWrapper, F

from chat.models import Message
from chat.serializers import MESSAGE_FIELDS
from chatsite.dbrouter import replica_read
from projects.models import Membership


@replica_read
def search_messages(user, query, *, project_id=None, before=None, limit=50):
    """Return (hits newest first, has_more), only from the user's projects.

    `before` is a message id: the next page holds the hits older than it.
    """
    mine = Membership.objects.filter(user_id=user.pk, project__is_active=True).values(
        "project_id"
    )
    qs = Message.objects.filter(project_id__in=mine, deleted_at__isnull=True)
    if project_id is not None:
        qs = qs.filter(project_id=project_id)
    if before is not None:
        qs = qs.filter(pk__lt=before)
    newest_first = "-id"
    if connection.vendor == "postgresql":
        # Matches the expression of idx_message_content_fulltext exactly, so
        # the planner can use the GIN index.
        qs = qs.extra(
            where=["to_tsvector('english', chat_message.content) @@ "
                   "plainto_tsquery('english', %s)"],
            params=[query],
        )
        # Newest first by `id + 0`, which no index can serve, so the GIN index
        # finds every hit and a top-N sort keeps the newest. With a plain
        # ORDER BY id the planner, for any word in more than a few percent of
        # the rows, walks the primary key backwards computing to_tsvector()
        # on each row until `limit` match: fast when the word is spread over
        # all of history, but a walk of nearly the whole table when its hits
        # are old. Measured on 1,000,000 messages (docs/PERFORMANCE.md,
        # "Search on 1,000,000 messages"): a word in the oldest 6 % took
        # 1.7 s that way and 50 ms this way; a word spread over 5-10 % of all
        # messages costs 80-100 ms this way instead of 20-30 ms. The cost now
        # grows with the number of hits, never with the size of the table.
        newest_first = ExpressionWrapper(F("id") + 0, output_field=BigIntegerField()).desc()
    else:
        qs = qs.filter(content__icontains=query)
    rows = list(
        qs.select_related("author")
        .only(*MESSAGE_FIELDS, "author__id", "author__username")
        .order_by(newest_first)[: limit + 1]
    )
    return rows[:limit], len(rows) > limit
