"""The home page: my projects with unread counts, create a project, join one.

Plain HTML forms that POST to these views and redirect (PRG), so everything
works without JavaScript. The views only parse, call one action, and answer.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from chatsite.errors import ChatError, Forbidden, Invalid, NotFound
from projects import actions, selectors

HOME_PAGE_SIZE = 50
PUBLIC_PROJECTS_SHOWN = 50


def parse_page_number(raw):
    """Return a page number from a query value; anything odd means page 1.

    A page is for people following links, so a bad value shows the first page
    instead of an error (the JSON API answers 400 for the same input).
    """
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


def render_forbidden(request, message, *, project=None):
    """Render the friendly 403 page; offers a join button for a public project."""
    context = {
        "message": message,
        "project": project,
        "can_join": project is not None and not project.is_private,
    }
    return render(request, "403.html", context, status=403)


def render_not_found(request, message="There is nothing here."):
    return render(request, "404.html", {"message": message}, status=404)


def render_home(request, *, create_error=None, create_form=None, status=200):
    user = request.user
    page = parse_page_number(request.GET.get("page"))
    projects, total = selectors.get_user_project_items(
        user, page=page, per_page=HOME_PAGE_SIZE)
    context = {
        # The API's list (projects.list_cache); its DMs in their own section.
        "projects": [p for p in projects if p["kind"] != "dm"],
        "direct_messages": [p for p in projects if p["kind"] == "dm"],
        "total": total,
        "page": page,
        "has_next": page * HOME_PAGE_SIZE < total,
        "has_prev": page > 1,
        "public_projects": selectors.get_public_projects_to_join(
            user, limit=PUBLIC_PROJECTS_SHOWN
        ),
        "create_error": create_error,
        "create_form": create_form or {},
    }
    return render(request, "projects/home.html", context, status=status)


@require_GET
@login_required
def home(request):
    """My projects (with unread counts), a create form, public projects to join."""
    return render_home(request)


@require_POST
@login_required
def create_project(request):
    """Create a project from the home page form; the creator becomes its owner."""
    form = {
        "name": request.POST.get("name", ""),
        "description": request.POST.get("description", ""),
        "is_private": request.POST.get("is_private") in ("on", "1", "true"),
    }
    try:
        project = actions.check_create_project(request.user, **form)
    except Invalid as error:
        return render_home(
            request, create_error=error.message, create_form=form, status=422
        )
    messages.success(request, f"Created {project.name}.")
    return redirect("project", project_id=project.pk)


@require_POST
@login_required
def join_project(request, project_id):
    """Join a public project and open it."""
    try:
        project, _ = actions.do_join_project(request.user, project_id)
    except NotFound as error:
        return render_not_found(request, error.message)
    except Forbidden as error:
        return render_forbidden(request, error.message, project=None)
    except ChatError as error:  # Invalid: a DM's members are fixed (its member sees it)
        messages.error(request, error.message)
        return redirect("project", project_id=project_id)
    return redirect("project", project_id=project.pk)


@require_POST
@login_required
def leave_project(request, project_id):
    """Leave a project; the last owner is told why they cannot."""
    try:
        project = actions.do_leave_project(request.user, project_id)
    except NotFound as error:
        return render_not_found(request, error.message)
    except Forbidden as error:
        return render_forbidden(request, error.message)
    except ChatError as error:  # Conflict: the last owner cannot leave
        messages.error(request, error.message)
        return redirect("project", project_id=project_id)
    messages.success(request, f"You left {project.name}.")
    return redirect(reverse("home"))


# --- invite links (projects.invites; docs/API.md §9) ------------------------------


def render_gone(request):
    """The 410 page of an invite that expired, was revoked or was used up; it
    names no project."""
    return render(request, "410.html", status=410)


@never_cache
@require_http_methods(["GET", "POST"])
def join_by_invite(request, token):
    """/join/<token>: the project's name for a holder of a live invite; a POST joins
    a signed-in user, or signs a new person up and joins them, then opens the project."""
    from accounts.forms import SignUpForm
    from accounts.views import render_form_page, sign_up
    from projects.invites import InviteGone, do_join_by_invite, get_invite

    try:
        invite = get_invite(token)
        if request.user.is_authenticated:
            if request.method == "POST":
                project, _ = do_join_by_invite(request.user, token)
                return redirect("project", project_id=project.pk)
            return render(request, "projects/join.html", {"invite": invite,
                          "project": invite.project, "token": token})
        data = request.POST if request.method == "POST" else None
        form = SignUpForm(request=request, data=data)
        context = {"invite": invite, "project": invite.project, "token": token, "form": form}
        if request.method == "POST":
            if form.is_valid() and sign_up(request, form, invite=invite) is not None:
                return redirect("project", project_id=invite.project_id)
            return render_form_page(request, "projects/join.html", context, form)
        return render(request, "projects/join.html", context)
    except NotFound:
        return render_not_found(request, "This invite link is not valid.")
    except InviteGone:
        return render_gone(request)


# --- direct messages (projects.dms; docs/API.md "Direct messages") -----------------


@require_POST
@login_required
def open_direct_message(request, username):
    """The "Message" button by an author's name: open (or start) the DM with them."""
    from projects.dms import check_open_dm

    try:
        project, _ = check_open_dm(request.user, [username])
    except NotFound:
        return render_not_found(request, "No such user.")
    except ChatError as error:  # yourself alone; a conversation closed by an admin
        messages.error(request, error.message)
        return redirect(reverse("home"))
    return redirect("project", project_id=project.pk)
