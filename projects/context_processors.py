"""The sidebar's server-rendered list, on every signed-in page (templates/_sidebar.html).

Lazy: the list (assembled from the cached skeleton and project cards as the
API's list is, through chat.realtime.me.read_sidebar as the socket's hello
reads it) is read
only when a template shows the sidebar, so JSON answers, the admin and
anonymous pages pay nothing. static/chat/sidebar.js keeps it live over /ws/me/.
"""

from django.conf import settings
from django.utils.functional import SimpleLazyObject


def sidebar(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"sidebar": SimpleLazyObject(lambda: build_sidebar(request, user))}


def build_sidebar(request, user):
    from chat.realtime.me import read_sidebar

    match = getattr(request, "resolver_match", None)
    current = match.kwargs.get("project_id") if match is not None else None
    # No query while the user's skeleton and the projects' cards are current;
    # after the project page's own read mark, one (the skeleton).
    items = read_sidebar(user)
    if current not in {i["id"] for i in items}:
        current = None  # a refused page says nothing of the project it refused
    projects = [i for i in items if i.get("kind", "project") != "dm"]
    dms = [i for i in items if i.get("kind", "project") == "dm"]
    total = sum(i["unread_count"] for i in items)
    state = {
        "wsBase": settings.WS_PUBLIC_URL,
        "userId": user.pk,
        "currentProjectId": current,
        "projects": [
            {"id": i["id"], "name": i["name"], "kind": i.get("kind", "project"),
             "unread_count": i["unread_count"], "mention_count": i["mention_count"]}
            for i in items
        ],
    }
    return {"projects": projects, "dms": dms, "current": current,
            "total_unread": total, "state": state}

