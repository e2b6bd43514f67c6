"""The messages API: history (page-numbered and cursor), send, edit, delete, search."""

from typing import Annotated

from django.http import HttpResponse
from ninja import Router, Schema
from ninja.security import django_auth
from pydantic import Field, StrictInt

from chat import actions, reactions, selectors
from chat.search import search_messages
from chat.serializers import serialize_mention, serialize_message, serialize_messages
from chat.uploads import MAX_ATTACHMENTS
from chatsite.api import (
    BODY_ERRORS,
    SIGNED_IN,
    UNSAFE,
    documented,
    page_query,
    parse_positive_int,
    query_param,
    validate_query_is_utf8,
)
from chatsite.errors import BadRequest
from chatsite.pagination import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT, MAX_SEARCH_LIMIT
from projects.access import access_project
from projects.api import page_params

router = Router(tags=["messages"], auth=django_auth)

ID_QUERY = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
# q is stripped (str.strip: these are Python's spaces) and may not hold a NUL.
SEARCH_QUERY_PATTERN = (r"^[^\u0000]*[^\u0000\t-\r\u001c-\u001f \u0085\u00a0\u1680"
                        r"\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$")
LIMIT_QUERY = query_param(
    "limit", ID_QUERY, f"Items at most (default {DEFAULT_LIMIT}; clamped to {MAX_LIMIT})."
)


UploadId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class MessageIn(Schema):
    # Strict: `true` or "1" is not a project id (pydantic would coerce both).
    project_id: StrictInt
    content: str
    client_msg_id: str | None = None
    # The caller's own unattached uploads in the project (docs/API.md "Attachments").
    attachment_ids: list[UploadId] | None = Field(None, max_length=MAX_ATTACHMENTS)


class EditIn(Schema):
    content: str


@router.get("/messages", openapi_extra=documented(
    {200: "MessagePage"}, (400, *SIGNED_IN, 403, 404),
    page_query(query_param(
        "project_id", ID_QUERY,
        "The project (newest first by seq). Without it: the caller's newest messages "
        "across all their active projects, newest first by created_at."))))
def list_messages(request):
    """Page-numbered messages, newest first (the guide's shape): a project's history,
    or without project_id the caller's newest messages across all their projects."""
    project_id = request.GET.get("project_id")
    if project_id in (None, ""):
        page, per_page = page_params(request)
        return json_body(
            selectors.get_all_messages_body(request.user, page=page, per_page=per_page)
        )
    project_id = parse_positive_int(project_id, "project_id")
    page, per_page = page_params(request)
    return json_body(
        selectors.get_message_page_body(request.user, project_id, page=page, per_page=per_page)
    )


@router.get("/projects/{int:project_id}/messages", openapi_extra=documented(
    {200: "MessageCursor"}, (400, *SIGNED_IN, 403, 404), [
        query_param("before", ID_QUERY, "Page back: messages with seq below this."),
        query_param("after", {**ID_QUERY, "minimum": 0},
                    "Catch up: changes with changed_seq above this (not with before)."),
        LIMIT_QUERY]))
def project_messages(request, project_id: int):
    """Cursor history by seq: `before` pages back, `after` catches up by changed_seq."""
    before = request.GET.get("before")
    after = request.GET.get("after")
    limit = parse_positive_int(request.GET.get("limit"), "limit", default=DEFAULT_LIMIT)
    limit = min(limit, MAX_LIMIT)
    if before not in (None, "") and after not in (None, ""):
        raise BadRequest("Give before or after, not both.", fields={"before": "conflict"})
    before = None if before in (None, "") else parse_positive_int(before, "before")
    after = None if after in (None, "") else parse_positive_int(after, "after", minimum=0)
    return json_body(selectors.get_history_body(
        request.user, project_id, before=before, after=after, limit=limit
    ))


@router.get("/mentions", openapi_extra=documented(
    {200: "MentionCursor"}, (400, *SIGNED_IN),
    [query_param("before", ID_QUERY, "A mention id (cursor)."), LIMIT_QUERY]))
def list_mentions(request):
    """My mentions in my projects, newest first; `before` is a mention id (cursor)."""
    before = request.GET.get("before")
    before = None if before in (None, "") else parse_positive_int(before, "before")
    limit = parse_positive_int(request.GET.get("limit"), "limit", default=DEFAULT_LIMIT)
    limit = min(limit, MAX_LIMIT)
    rows, has_more = selectors.get_user_mentions(request.user, before=before, limit=limit)
    next_cursor = rows[-1].pk if has_more and rows else None
    return {
        "items": [serialize_mention(m) for m in rows],
        "has_more": has_more,
        "next_cursor": next_cursor,
    }


def json_body(body):
    """Answer with JSON bytes that were encoded (and cached) once."""
    return HttpResponse(body, content_type="application/json")


@router.post("/messages", response={200: dict, 201: dict}, openapi_extra=documented(
    {200: "Message", 201: "Message"}, (*BODY_ERRORS, *UNSAFE, 404, 409, 429)))
def send_message(request, payload: MessageIn):
    """Send a message; a repeated client_msg_id answers 200 with the existing one.

    Sends are limited per user, HTTP and sockets together: over the limit, 429
    `rate_limited` with Retry-After, and nothing is stored.
    """
    message, created = actions.check_send_message(
        request.user, payload.project_id, payload.content, payload.client_msg_id,
        attachment_ids=payload.attachment_ids,
    )
    return (201 if created else 200), serialize_message(message)


@router.patch("/messages/{int:message_id}", openapi_extra=documented(
    {200: "Message"}, (*BODY_ERRORS, *UNSAFE, 404)))
def edit_message(request, message_id: int, payload: EditIn):
    """The author edits a message within the edit window; a deleted message is 404."""
    return serialize_message(
        actions.check_edit_message(request.user, message_id, payload.content)
    )


@router.delete("/messages/{int:message_id}", response={204: None},
               openapi_extra=documented({204: None}, (*UNSAFE, 404)))
def delete_message(request, message_id: int):
    """The author or a project admin deletes a message, leaving a tombstone.

    Deleting a deleted message answers 204 and changes nothing.
    """
    actions.check_delete_message(request.user, message_id)
    return 204, None


@router.get("/search", openapi_extra=documented(
    {200: "MessageCursor"}, (400, *SIGNED_IN, 403, 404), [
        query_param("q", {"type": "string", "pattern": SEARCH_QUERY_PATTERN},
                    "Words to find: not only spaces, no NUL.", required=True),
        query_param("project_id", ID_QUERY, "Only in this project."),
        query_param("before", ID_QUERY, "A message id (cursor)."),
        query_param("limit", ID_QUERY, f"Items at most (default {DEFAULT_LIMIT}; "
                    f"clamped to {MAX_SEARCH_LIMIT}).")]))
def search(request):
    """Full-text search in the caller's projects, newest first."""
    validate_query_is_utf8(request)
    query = (request.GET.get("q") or "").strip()
    if not query:
        raise BadRequest("q is required.", fields={"q": "required"})
    if "\x00" in query:
        raise BadRequest("q cannot contain NUL characters.", fields={"q": "nul"})
    project_id = request.GET.get("project_id")
    project_id = None if project_id in (None, "") else parse_positive_int(project_id, "project_id")
    before = request.GET.get("before")
    before = None if before in (None, "") else parse_positive_int(before, "before")
    limit = parse_positive_int(request.GET.get("limit"), "limit", default=DEFAULT_LIMIT)
    limit = min(limit, MAX_SEARCH_LIMIT)
    if project_id is not None:
        access_project(request.user, project_id)
    rows, has_more = search_messages(
        request.user, query[:200], project_id=project_id, before=before, limit=limit
    )
    next_cursor = rows[-1].pk if has_more and rows else None
    return {"items": serialize_messages(rows), "has_more": has_more, "next_cursor": next_cursor}


# --- reactions (docs/API.md "Reactions") ---------------------------------------------


class ReactionIn(Schema):
    emoji: str


EMOJI_QUERY = query_param(
    "emoji", {"type": "string", "minLength": 1},
    "One emoji (one grapheme cluster, at most 32 bytes) or a :shortcode:.", required=True,
)


@router.post("/messages/{int:message_id}/reactions", response={200: dict, 201: dict},
             openapi_extra=documented({200: "Message", 201: "Message"},
                                      (*BODY_ERRORS, *UNSAFE, 404, 429)))
def add_reaction(request, message_id: int, payload: ReactionIn):
    """A member adds their reaction (201); one already there answers 200, unchanged."""
    message, added = reactions.check_add_reaction(request.user, message_id, payload.emoji)
    return (201 if added else 200), serialize_message(message)


@router.delete("/messages/{int:message_id}/reactions", response={204: None},
               openapi_extra=documented({204: None}, (400, *UNSAFE, 404, 422, 429),
                                        [EMOJI_QUERY]))
def remove_reaction(request, message_id: int):
    """A member removes their reaction; 204 also when it was not there."""
    emoji = request.GET.get("emoji")
    if emoji is None:
        raise BadRequest("emoji is required.", fields={"emoji": "required"})
    reactions.check_remove_reaction(request.user, message_id, emoji)
    return 204, None
