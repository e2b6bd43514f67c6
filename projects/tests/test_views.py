"""The home page and its forms: list, create, join, leave (no JavaScript needed)."""

import re

import pytest
from django.test import Client

from chat.actions import do_delete_message, do_send_message
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project

pytestmark = pytest.mark.django_db


def project_item(response, project):
    """The home page's list item of one project."""
    match = re.search(
        rf'<li class="project-item[^"]*" data-project-id="{project.pk}">(.*?)</li>',
        response.text,
        re.DOTALL,
    )
    assert match, f"{project.name} is not listed"
    return match.group(1)


def test_home_lists_my_projects_with_unread_counts(
    client_member, project, member, owner, send
):
    send(owner, project, 3)
    do_send_message(member, project.pk, "my own words are never unread")
    quiet = do_create_project(owner, name="Quiet")
    do_join_project(member, quiet.pk)
    response = client_member.get("/")
    assert response.status_code == 200
    assert "3 unread" in project_item(response, project)
    assert "unread" not in project_item(response, quiet)
    assert f'href="/projects/{project.pk}/"' in response.text


def test_home_unread_count_skips_deleted_messages_and_drops_after_reading(
    client_member, project, owner, send
):
    first, _ = send(owner, project, 2)
    do_delete_message(first)
    assert "1 unread" in project_item(client_member.get("/"), project)
    client_member.get(f"/projects/{project.pk}/")
    assert "unread" not in project_item(client_member.get("/"), project)


def test_home_lists_public_projects_to_join_but_not_private_or_mine(
    client_member, project, owner
):
    public = do_create_project(owner, name="Open Door")
    private = do_create_project(owner, name="Back Room", is_private=True)
    response = client_member.get("/")
    join_section = response.text.split('id="join-heading"', 1)[1]
    assert "Open Door" in join_section
    assert f'action="/projects/{public.pk}/join"' in join_section
    assert "Back Room" not in response.text
    assert f"/projects/{private.pk}/join" not in response.text
    assert f"/projects/{project.pk}/join" not in response.text


def test_home_is_a_constant_number_of_queries(
    client_member, member, owner, django_assert_num_queries
):
    for i in range(12):
        joined = do_create_project(owner, name=f"Joined {i}")
        do_join_project(member, joined.pk)
        do_create_project(owner, name=f"Public {i}")
    # Once the session and the user are in the cache (cached_db sessions,
    # accounts.backends.CachedModelBackend): the list as the API assembles it
    # (projects.list_cache; cold here: the memberships, the projects, their
    # message tails), public projects to join; the sidebar's list
    # (projects.context_processors) takes the same skeleton and cards.
    assert client_member.get("/login").status_code == 302
    with django_assert_num_queries(4):
        response = client_member.get("/")
    assert response.text.count('class="project-link"') == 12
    with django_assert_num_queries(1):  # warm: only the public projects
        again = client_member.get("/")
    assert again.text.count('class="project-link"') == 12


def test_home_pages_through_many_projects(client_member, member, owner):
    for i in range(55):
        p = do_create_project(owner, name=f"P{i:02d}")
        do_join_project(member, p.pk)
    first = client_member.get("/")
    assert first.text.count('class="project-link"') == 50
    assert 'href="?page=2"' in first.text
    second = client_member.get("/?page=2")
    assert second.text.count('class="project-link"') == 5
    assert client_member.get("/?page=zzz").status_code == 200


def test_create_project_form_makes_me_the_owner_and_opens_it(client_member, member):
    response = client_member.post(
        "/projects/new",
        {"name": "  Launch  ", "description": "ship it", "is_private": "on"},
    )
    project = Project.objects.get(name="Launch")
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/"
    assert project.is_private and project.description == "ship it"
    assert Membership.objects.get(project=project, user=member).role == "owner"
    assert client_member.get(response["Location"]).status_code == 200


def test_create_project_form_with_a_blank_name_shows_the_error(client_member):
    response = client_member.post(
        "/projects/new", {"name": "   ", "description": "kept"}
    )
    assert response.status_code == 422
    assert "A project needs a name." in response.text
    assert ">kept</textarea>" in response.text
    assert not Project.objects.exists()


def test_create_project_needs_post(client_member):
    assert client_member.get("/projects/new").status_code == 405


def test_join_form_joins_a_public_project_and_opens_it(
    client_outsider, outsider, project
):
    response = client_outsider.post(f"/projects/{project.pk}/join")
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/"
    assert Membership.objects.filter(
        project=project, user=outsider, role="member"
    ).exists()
    assert client_outsider.get(response["Location"]).status_code == 200


def test_join_from_the_403_page_works(client_outsider, outsider, project):
    refusal = client_outsider.get(f"/projects/{project.pk}/")
    assert f'action="/projects/{project.pk}/join"' in refusal.text
    client_outsider.post(f"/projects/{project.pk}/join")
    assert client_outsider.get(f"/projects/{project.pk}/").status_code == 200


def test_join_form_refuses_a_private_project(client_outsider, outsider, owner):
    private = do_create_project(owner, name="Back Room", is_private=True)
    response = client_outsider.post(f"/projects/{private.pk}/join")
    # As a missing project: nothing says a private project exists.
    assert response.status_code == 404
    assert "Back Room" not in response.text
    assert not Membership.objects.filter(project=private, user=outsider).exists()


def test_join_form_for_an_unknown_project_is_404(client_outsider):
    assert client_outsider.post("/projects/424242/join").status_code == 404


def test_join_form_needs_the_csrf_token(outsider, project):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(outsider)
    assert browser.post(f"/projects/{project.pk}/join").status_code == 403
    assert not Membership.objects.filter(project=project, user=outsider).exists()


def test_forms_need_a_signed_in_user(client, project):
    response = client.post("/projects/new", {"name": "x"})
    assert response.status_code == 302 and response["Location"].startswith(
        "/login?next="
    )
    assert not Project.objects.filter(name="x").exists()


def test_leave_form_removes_my_membership(client_member, member, project):
    response = client_member.post(f"/projects/{project.pk}/leave")
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Membership.objects.filter(project=project, user=member).exists()
    assert "You left General." in client_member.get("/").text


def test_last_owner_cannot_leave_and_is_told_why(client_owner, owner, project):
    response = client_owner.post(f"/projects/{project.pk}/leave", follow=True)
    assert Membership.objects.filter(project=project, user=owner).exists()
    assert "The last owner cannot leave" in response.text
