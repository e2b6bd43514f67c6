"""Server-rendered chat pages: a project's history with its composer, and search.

Both read without JavaScript; static/chat/chat.js makes the project page live.
Messages are rendered from serialize_messages(), the same dicts the API and the
socket send, so the three cannot drift.
"""

import re
import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from chat import selectors
from chat.actions import check_send_message
from chat.search import search_messages
from chat.serializers import serialize_messages, serialize_user
from chatsite.errors import ChatError, Forbidden, NotFound
from chatsite.pagination import DEFAULT_LIMIT
from projects.access import access_project, get_active_project
from projects.actions import do_mark_read
from projects.dms import get_project_title
from projects.models import Membership, Project
from projects.selectors import get_member_page
from projects.views import render_forbidden, render_not_found

SNIPPET_CHARS = 300
# Members listed in the project page's panel; members.js loads the rest.
MEMBERS_SHOWN = 100


def parse_seq(raw):
    """Return a positive whole number from a query value, or None for anything else."""
    try:
        number = int(raw)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


# The one answer for a project the caller may not know of: a missing id and a
# private project they are not in must read the same, or looping over ids
# would list which private projects exist (and, named, what they are called).
NO_SUCH_PROJECT = "No such project."


def open_project(request, project_id):
    """Return (project, membership, None) or (None, None, an error page response).

    A public project the caller has not joined is named with a join button
    (403); a private one answers exactly as a missing one (404).
    """
    try:
        project, membership = access_project(request.user, project_id)
    except NotFound:
        return None, None, render_not_found(request, NO_SUCH_PROJECT)
    except Forbidden as error:
        # One more query, on the refusal path only, to tell public from private.
        try:
            project = get_active_project(project_id)
        except NotFound:
            project = None
        if project is None or project.is_private:
            return None, None, render_not_found(request, NO_SUCH_PROJECT)
        return None, None, render_forbidden(request, error.message, project=project)
    return project, membership, None


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def project_page(request, project_id):
    """GET: the latest page of messages (or an older one); POST: send from the no-JS composer."""
    project, membership, refusal = open_project(request, project_id)
    if refusal is not None:
        return refusal
    if request.method == "POST":
        return post_message(request, project, membership)
    return render_project(request, project, membership)


def post_message(request, project, membership):
    """Send, then redirect back to the latest page (POST/redirect/GET).

    The form carries a client_msg_id made when the page was rendered, so a
    double-clicked Send or a re-submitted form creates the message once.
    """
    content = request.POST.get("content", "")
    try:
        check_send_message(
            request.user, project.pk, content, request.POST.get("client_msg_id") or None
        )
    except ChatError as error:
        return render_project(
            request, project, membership, error=error.message, draft=content, status=422
        )
    return redirect(reverse("project", args=[project.pk]) + "#composer")


# A mention in content_html (chat.rendering): a span with the mentioned user's
# id, or "all". The sanitizer keeps attributes in the order written, but the
# check below does not rely on it.
MENTION_TAG = re.compile(r"<span\b([^>]*)>")
MENTION_USER = re.compile(r'\sdata-user-id="([^"]*)"')
MENTION_ALL = "all"
# The longest side of a thumbnail (the attachments' thumbnails are made so).
THUMBNAIL_SIDE = 400
DEFAULT_UPLOAD_MAX_BYTES = 25 * 1024 * 1024


def mark_mentions_of(content_html, reader_id):
    """Return (content_html with the reader's mentions classed `mention-me`, whether any).

    `@reader` and `@all` mention the reader; chat.js marks live messages alike.
    Only a class name is added to markup the renderer already sanitized.
    """
    if 'class="mention"' not in content_html:
        return content_html, False
    wanted = {str(reader_id), MENTION_ALL}
    found = False

    def mark(match):
        nonlocal found
        attributes = match.group(1)
        user = MENTION_USER.search(attributes)
        if ' class="mention"' not in attributes or not user or user.group(1) not in wanted:
            return match.group(0)
        found = True
        return match.group(0).replace(' class="mention"', ' class="mention mention-me"', 1)

    return MENTION_TAG.sub(mark, content_html), found


def describe_reactions(reactions, reader_id, names):
    """Return each reaction with whether it is the reader's and a title naming who."""
    described = []
    for reaction in reactions:
        count = reaction["count"]
        who = [names[i] for i in reaction["user_ids"] if i in names]
        if who:
            title = ", ".join(who)
            if count > len(who):
                title += f" and {count - len(who)} more"
        else:
            title = f"{count} reaction{'' if count == 1 else 's'}"
        described.append({
            "emoji": reaction["emoji"],
            "count": count,
            "mine": reader_id in reaction["user_ids"],
            "title": title,
        })
    return described


def describe_attachments(attachments):
    """Return the attachments with an image's thumbnail size (longest side THUMBNAIL_SIDE)."""
    described = []
    for attachment in attachments:
        item = dict(attachment)
        width, height = attachment.get("width"), attachment.get("height")
        item["is_image"] = bool(attachment.get("thumbnail_url") and width and height)
        if item["is_image"]:
            scale = min(1, THUMBNAIL_SIDE / max(width, height))
            item["thumb_width"] = max(1, round(width * scale))
            item["thumb_height"] = max(1, round(height * scale))
        described.append(item)
    return described


def display_message(message, reader_id, names):
    """Return a copy of the message JSON with what the template shows for the reader."""
    shown = dict(message)
    shown["mentions_me"] = False
    if not message["deleted"] and message["user"]["id"] != reader_id:
        # Your own messages mention nobody to you (@all skips its author too).
        shown["content_html"], shown["mentions_me"] = mark_mentions_of(
            message["content_html"], reader_id
        )
    shown["reaction_items"] = describe_reactions(message["reactions"], reader_id, names)
    shown["attachment_items"] = describe_attachments(message["attachments"])
    return shown


def render_project(request, project, membership, *, error=None, draft="", status=200):
    """Render a page of history in a constant number of queries (see the tests).

    `?before=<seq>` shows the page of messages before that number (the no-JS "older"
    link); `?around=<seq>` shows the page holding that message (search hits).
    """
    before = parse_seq(request.GET.get("before"))
    around = parse_seq(request.GET.get("around"))
    if around is not None:
        before = around + DEFAULT_LIMIT // 2
    # A cursor past the project's last number shows the same rows as no cursor.
    is_latest = before is None or before > project.seq
    rows, has_older = selectors.get_recent_messages(
        project.pk, before=None if is_latest else before, limit=DEFAULT_LIMIT
    )
    rows.reverse()  # oldest at the top
    chat_messages = serialize_messages(rows)
    # Reactors are named from the authors on the page (no query per message).
    names = {m["user"]["id"]: m["user"]["username"] for m in chat_messages}
    names[request.user.pk] = "you"
    shown = [display_message(m, request.user.pk, names) for m in chat_messages]

    last_read_seq = membership.last_read_seq
    first_unread_seq = next(
        (
            m["seq"]
            for m in chat_messages
            if m["seq"] > last_read_seq and m["user"]["id"] != request.user.pk
        ),
        None,
    )
    if is_latest and request.method == "GET" and last_read_seq < project.seq:
        # Showing the latest page reads it, which is what a reader without
        # JavaScript needs; chat.js reports reads of live messages itself.
        do_mark_read(request.user, project.pk, project.seq)

    # The members panel's first page and the member count, in one query
    # (templates/chat/_members.html; static/chat/members.js pages on).
    members, member_count = get_member_page(project.pk, limit=MEMBERS_SHOWN)
    viewer_role = membership.role
    is_dm = project.kind == Project.Kind.DM
    # A DM is titled by its other members (projects.dms: one query, DMs only).
    title = get_project_title(project, request.user)
    # A "Message" button by each other author opens a DM with them; in a
    # two-person DM it would only reopen this page.
    message_buttons = project.kind != project.Kind.DM or member_count > 2
    state = {
        "projectId": project.pk,
        "projectName": title,
        "messageButtons": message_buttons,
        "dmUrl": reverse("dm_open", args=["_"])[:-1],
        # The project's number as read with the membership, before the rows:
        # a change committed in between is both rendered and replayed by the
        # socket (the client applies changes by id, so once), never missed.
        "lastChangedSeq": project.seq,
        "oldestSeq": chat_messages[0]["seq"] if chat_messages else None,
        "newestSeq": chat_messages[-1]["seq"] if chat_messages else None,
        "hasOlder": has_older,
        "isLatest": is_latest,
        "lastReadSeq": max(last_read_seq, project.seq) if is_latest else last_read_seq,
        "user": serialize_user(request.user),
        "role": membership.role,
        "canModerate": membership.role
        in (Membership.Role.OWNER, Membership.Role.ADMIN),
        # The composer asks before an @all that reaches more than a few people.
        "memberCount": member_count,
        "messageMaxLength": settings.MESSAGE_MAX_LENGTH,
        "wsBase": settings.WS_PUBLIC_URL,
        "editWindowSeconds": settings.EDIT_WINDOW_SECONDS,
        "projectUrl": reverse("project", args=[project.pk]),
        "loginUrl": settings.LOGIN_URL,
        "uploadMaxBytes": getattr(settings, "UPLOAD_MAX_BYTES", DEFAULT_UPLOAD_MAX_BYTES),
        # The rendered messages' JSON: chat.js needs the source text (the
        # editor), the reactions' user ids and the attachments of each, which
        # the HTML does not carry. json_script escapes it for the page.
        "messages": chat_messages,
    }
    context = {
        "project": project,
        "project_title": title,
        "message_buttons": message_buttons,
        "membership": membership,
        "member_count": member_count,
        "members": members,
        "members_more": member_count > len(members),
        # What the panel offers (projects.actions checks again): owners and
        # admins remove (admins not owners), owners set roles; nobody in a DM.
        "can_remove_members": not is_dm and viewer_role in (
            Membership.Role.OWNER, Membership.Role.ADMIN),
        "can_change_roles": not is_dm and viewer_role == Membership.Role.OWNER,
        "chat_messages": shown,
        "has_older": has_older,
        "is_latest": is_latest,
        "first_unread_seq": first_unread_seq,
        "highlight_seq": around,
        "chat_state": state,
        "max_length": settings.MESSAGE_MAX_LENGTH,
        "client_msg_id": uuid.uuid4(),
        "error": error,
        "draft": draft,
    }
    return render(request, "chat/project.html", context, status=status)


def highlight(content, query):
    """Split content into (text, is_match) parts around the query's words.

    A snippet of about SNIPPET_CHARS around the first match keeps long
    messages short. The template escapes every part.
    """
    words = [re.escape(word) for word in query.split()[:10] if word]
    pattern = re.compile("|".join(words), re.IGNORECASE) if words else None
    first = pattern.search(content) if pattern else None
    start = 0
    if len(content) > SNIPPET_CHARS:
        start = max(0, (first.start() if first else 0) - SNIPPET_CHARS // 3)
    text = content[start : start + SNIPPET_CHARS]
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + SNIPPET_CHARS < len(content) else ""
    parts = [(prefix, False)] if prefix else []
    position = 0
    for match in pattern.finditer(text) if pattern else ():
        if match.start() > position:
            parts.append((text[position : match.start()], False))
        parts.append((match.group(0), True))
        position = match.end()
    parts.append((text[position:], False))
    if suffix:
        parts.append((suffix, False))
    return [part for part in parts if part[0]]


@require_GET
@login_required
def search_page(request):
    """Search my projects; each hit links to its place in the project's history."""
    query = (request.GET.get("q") or "").strip()[:200]
    project_id = parse_seq(request.GET.get("project_id"))
    before = parse_seq(request.GET.get("before"))
    # The user's projects, for the filter and to name each hit's project
    # without a query per hit. A page reading one list is clearer here than a
    # selector used nowhere else.
    projects = list(
        Membership.objects.filter(user_id=request.user.pk, project__is_active=True)
        .select_related("project")
        .only("project_id", "project__id", "project__name")
        .order_by("project__name", "project_id")
    )
    names = {m.project_id: m.project.name for m in projects}
    if project_id is not None and project_id not in names:
        _, _, refusal = open_project(request, project_id)
        if refusal is not None:
            return refusal

    hits, has_more, next_before = [], False, None
    if query:
        rows, has_more = search_messages(
            request.user,
            query,
            project_id=project_id,
            before=before,
            limit=DEFAULT_LIMIT,
        )
        for message in serialize_messages(rows):
            message["project_name"] = names.get(message["project_id"], "")
            message["parts"] = highlight(message["content"], query)
            hits.append(message)
        next_before = rows[-1].pk if has_more and rows else None
    context = {
        "query": query,
        "project_id": project_id,
        "projects": [m.project for m in projects],
        "hits": hits,
        "has_more": has_more,
        "next_before": next_before,
        "searched": bool(query),
    }
    return render(request, "chat/search.html", context)
