"""One serializer per payload, shared by the API, the pages and the WebSocket."""

from chat.rendering import current_html

# The Message fields serialize_message reads (for .only() in every query whose
# rows it serializes: a field left out would cost a query per message).
MESSAGE_FIELDS = (
    "id", "project_id", "seq", "changed_seq", "content", "content_html", "render_version",
    "reaction_summary", "attachment_summary", "created_at", "edited_at", "deleted_at",
    "client_msg_id", "author_id",
)


def serialize_message(message):
    """Return the message JSON of docs/API.md §6 (a deleted message keeps no content)."""
    deleted = message.deleted_at is not None
    return {
        "id": message.pk,
        "project_id": message.project_id,
        "seq": message.seq,
        "changed_seq": message.changed_seq,
        "user": {"id": message.author_id, "username": message.author.username},
        "content": "" if deleted else message.content,
        "content_html": "" if deleted else current_html(
            message.pk, message.content, message.content_html, message.render_version,
            author_id=message.author_id, author_username=message.author.username,
        ),
        "reactions": [] if deleted else message.reaction_summary,
        "attachments": [] if deleted else message.attachment_summary,
        "created_at": message.created_at,
        "edited_at": message.edited_at,
        "deleted": deleted,
        "client_msg_id": str(message.client_msg_id) if message.client_msg_id else None,
    }


def serialize_messages(messages):
    return [serialize_message(m) for m in messages]


def serialize_mention(mention):
    """Return the message JSON of a mention with `mention_id` and `project_name`."""
    data = serialize_message(mention.message)
    data["mention_id"] = mention.pk
    data["project_name"] = mention.project.name
    return data


def serialize_user(user):
    return {"id": user.pk, "username": user.username}


def serialize_project(
    project, *, membership=None, unread_count=None, member_count=None, mention_count=None,
    name=None,
):
    """Return the project JSON of docs/API.md; `name` overrides the stored one
    (a DM is named per viewer from its other members: projects.dms)."""
    data = {
        "id": project.pk,
        "name": project.name if name is None else name,
        "kind": project.kind,
        "description": project.description,
        "owner_id": project.owner_id,
        "is_private": project.is_private,
        "is_active": project.is_active,
        "created_at": project.created_at,
        "seq": project.seq,
    }
    if membership is not None:
        data["role"] = membership.role
        data["last_read_seq"] = membership.last_read_seq
    if unread_count is not None:
        data["unread_count"] = unread_count
    if mention_count is not None:
        data["mention_count"] = mention_count
    if member_count is not None:
        data["member_count"] = member_count
    return data
