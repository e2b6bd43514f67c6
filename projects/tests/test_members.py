"""Members: list, remove, change role (docs/API.md "Members"), the page's panel, and
removal ending access at once (cached entries retired, the removed member's socket
closed 4403)."""

import pytest
from asgiref.sync import sync_to_async

from conftest import assert_error, auth_queries, login_client
from projects.access import access_key, access_project_cached
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project

MAX_ID = 2**63 - 1


def members_url(project, user=None):
    base = f"/api/projects/{project.pk}/members"
    return base if user is None else f"{base}/{user if isinstance(user, int) else user.pk}"


def patch_role(client, project, user, role):
    return client.patch(members_url(project, user), {"role": role},
                        content_type="application/json")


def set_role(user, project, role):
    Membership.objects.filter(user=user, project=project).update(role=role)


def roles(project):
    return dict(Membership.objects.filter(project=project)
                .values_list("user__username", "role"))


@pytest.fixture
def team(make_user, owner, member, project):
    """The project with an admin and two more plain members besides owner and member."""
    admin = make_user("adam")
    zed, amy = make_user("zed"), make_user("amy")
    for user in (admin, zed, amy):
        do_join_project(user, project.pk)
    set_role(admin, project, Membership.Role.ADMIN)
    return {"owner": owner, "admin": admin, "member": member, "zed": zed, "amy": amy}


# --- list --------------------------------------------------------------------------------


def test_members_are_listed_owners_then_admins_then_by_username(team, project):
    set_role(team["zed"], project, Membership.Role.OWNER)
    body = login_client(team["member"]).get(members_url(project)).json()
    assert [(i["user"]["username"], i["role"]) for i in body["items"]] == [
        ("owner", "owner"), ("zed", "owner"), ("adam", "admin"),
        ("amy", "member"), ("member", "member"),
    ]
    assert {k: body[k] for k in ("total", "page", "per_page", "has_next", "has_prev")} == {
        "total": 5, "page": 1, "per_page": 50, "has_next": False, "has_prev": False}
    first = body["items"][0]
    assert set(first) == {"user", "role", "joined_at"}
    assert first["user"] == {"id": team["owner"].pk, "username": "owner", "display_name": ""}
    assert first["joined_at"].startswith("20")


def test_members_show_display_names(team, project):
    team["amy"].display_name = "Amy Pond"
    team["amy"].save(update_fields=["display_name"])
    body = login_client(team["member"]).get(members_url(project)).json()
    amy = next(i for i in body["items"] if i["user"]["username"] == "amy")
    assert amy["user"]["display_name"] == "Amy Pond"


def test_members_are_paged(team, project):
    client = login_client(team["member"])
    second = client.get(members_url(project) + "?page=2&per_page=2").json()
    assert [i["user"]["username"] for i in second["items"]] == ["amy", "member"]
    assert (second["total"], second["has_next"], second["has_prev"]) == (5, True, True)
    past = client.get(members_url(project) + "?page=9&per_page=2").json()
    assert (past["items"], past["total"], past["has_next"]) == ([], 5, False)


@pytest.mark.parametrize("query", ["?page=0", "?per_page=x", "?page=-1"])
def test_bad_page_numbers_are_400(client_member, project, query):
    assert_error(client_member.get(members_url(project) + query), 400, "bad_request")


@pytest.mark.parametrize("n_members", [3, 60])
def test_member_page_is_one_query_after_the_access_check(
    n_members, make_user, project, client_member, django_assert_num_queries
):
    for i in range(n_members):
        do_join_project(make_user(f"m{i:03d}"), project.pk)
    # auth (cached); 1 the caller's membership with its project (access_project);
    # 2 the page: memberships with their users joined, the total a window count.
    with django_assert_num_queries(auth_queries() + 2):
        response = client_member.get(members_url(project) + "?per_page=100")
    assert response.json()["total"] == n_members + 2
    assert len(response.json()["items"]) == n_members + 2


def test_outsiders_cannot_list_members(owner, client_outsider, project):
    assert_error(client_outsider.get(members_url(project)), 403, "not_member")
    private = do_create_project(owner, name="Secret", is_private=True)
    assert_error(client_outsider.get(members_url(private)), 404, "not_found")
    assert_error(client_outsider.get("/api/projects/999999/members"), 404, "not_found")


def test_listing_needs_a_session(project):
    from django.test import Client

    assert_error(Client().get(members_url(project)), 401, "not_authenticated")


# --- remove ------------------------------------------------------------------------------


def test_owner_removes_a_member(team, project):
    response = login_client(team["owner"]).delete(members_url(project, team["member"]))
    assert response.status_code == 204
    assert "member" not in roles(project)


def test_admin_removes_a_member_and_another_admin(team, project, make_user):
    other_admin = make_user("ada")
    do_join_project(other_admin, project.pk)
    set_role(other_admin, project, Membership.Role.ADMIN)
    client = login_client(team["admin"])
    assert client.delete(members_url(project, team["zed"])).status_code == 204
    assert client.delete(members_url(project, other_admin)).status_code == 204
    assert set(roles(project)) == {"owner", "adam", "member", "amy"}


def test_admin_cannot_remove_an_owner(team, project):
    response = login_client(team["admin"]).delete(members_url(project, team["owner"]))
    assert "owner" in assert_error(response, 403, "forbidden")["message"]
    assert roles(project)["owner"] == "owner"


def test_plain_member_cannot_remove_others(team, project):
    response = login_client(team["member"]).delete(members_url(project, team["zed"]))
    assert_error(response, 403, "forbidden")
    assert "zed" in roles(project)


def test_removing_yourself_leaves(team, project):
    assert login_client(team["zed"]).delete(members_url(project, team["zed"])).status_code == 204
    assert "zed" not in roles(project)


def test_the_last_owner_cannot_be_removed_even_by_themselves(team, project):
    response = login_client(team["owner"]).delete(members_url(project, team["owner"]))
    assert_error(response, 422, "last_owner")
    assert roles(project)["owner"] == "owner"


def test_an_owner_removes_another_owner_and_the_project_owner_moves(team, project):
    set_role(team["zed"], project, Membership.Role.OWNER)
    response = login_client(team["zed"]).delete(members_url(project, team["owner"]))
    assert response.status_code == 204
    assert "owner" not in roles(project)
    project.refresh_from_db()
    assert project.owner_id == team["zed"].pk
    # Now zed is the last owner.
    response = login_client(team["zed"]).delete(members_url(project, team["zed"]))
    assert_error(response, 422, "last_owner")


@pytest.mark.parametrize("user_id", [999999, MAX_ID, MAX_ID + 1])
def test_removing_a_non_member_is_404(team, project, outsider, user_id):
    client = login_client(team["owner"])
    assert_error(client.delete(members_url(project, outsider)), 404, "not_found")
    assert_error(client.delete(members_url(project, user_id)), 404, "not_found")


def test_outsiders_cannot_remove(team, project, client_outsider, owner):
    assert_error(client_outsider.delete(members_url(project, team["member"])), 403,
                 "not_member")
    private = do_create_project(owner, name="Secret", is_private=True)
    assert_error(client_outsider.delete(members_url(private, owner)), 404, "not_found")


def test_removal_retires_the_cached_access_entry(team, project):
    from django.core.cache import cache

    member = team["member"]
    assert access_project_cached(member, project.pk) == "member"
    assert cache.get(access_key(member.pk, project.pk)) == "member"
    login_client(team["owner"]).delete(members_url(project, member))
    with pytest.raises(Exception) as refused:
        access_project_cached(member, project.pk)
    assert getattr(refused.value, "status", None) == 403
    # The member's own reads now refuse too.
    assert_error(login_client(member).get(f"/api/projects/{project.pk}/messages"), 403)


# --- change role -------------------------------------------------------------------------


def test_owner_makes_a_member_admin_visible_at_once(team, project):
    client = login_client(team["owner"])
    response = patch_role(client, project, team["member"], "admin")
    assert response.status_code == 200
    assert response.json()["user"]["username"] == "member"
    assert response.json()["role"] == "admin"
    listed = {i["user"]["username"]: i["role"]
              for i in client.get(members_url(project)).json()["items"]}
    assert listed["member"] == "admin"


def test_role_change_retires_the_cached_access_entry(team, project):
    member = team["member"]
    assert access_project_cached(member, project.pk) == "member"
    patch_role(login_client(team["owner"]), project, member, "admin")
    assert access_project_cached(member, project.pk) == "admin"
    # The new role works at once: the member, now an admin, removes someone.
    response = login_client(member).delete(members_url(project, team["zed"]))
    assert response.status_code == 204


@pytest.mark.parametrize("who", ["admin", "member"])
def test_only_owners_change_roles(team, project, who):
    response = patch_role(login_client(team[who]), project, team["amy"], "admin")
    assert_error(response, 403, "forbidden")
    assert roles(project)["amy"] == "member"


def test_the_last_owner_cannot_be_demoted(team, project):
    client = login_client(team["owner"])
    assert_error(patch_role(client, project, team["owner"], "admin"), 422, "last_owner")
    assert roles(project)["owner"] == "owner"
    # With a second owner, the first may step down.
    assert patch_role(client, project, team["zed"], "owner").status_code == 200
    assert patch_role(client, project, team["owner"], "member").status_code == 200
    assert roles(project) == {"owner": "member", "zed": "owner", "adam": "admin",
                                    "member": "member", "amy": "member"}
    project.refresh_from_db()
    assert project.owner_id == team["zed"].pk


def test_setting_the_same_role_writes_nothing(team, project):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login_client(team["owner"])
    with CaptureQueriesContext(connection) as queries:
        response = patch_role(client, project, team["admin"], "admin")
    assert response.json()["role"] == "admin"
    statements = [q["sql"].split()[0] for q in queries.captured_queries
                  if "SAVEPOINT" not in q["sql"]]
    # auth (cached); access; the owners locked; the target locked with its user.
    assert statements == ["SELECT"] * (auth_queries() + 3)


@pytest.mark.parametrize("body", [{"role": "boss"}, {"role": ""}, {"role": 3}, {},
                                  {"role": None}, {"role": "owner\x00"}])
def test_a_bad_role_is_422(team, project, body):
    response = login_client(team["owner"]).patch(
        members_url(project, team["member"]), body, content_type="application/json")
    assert_error(response, 422)
    assert roles(project)["member"] == "member"


def test_malformed_json_is_400(team, project):
    response = login_client(team["owner"]).patch(
        members_url(project, team["member"]), "{", content_type="application/json")
    assert_error(response, 400, "bad_request")


def test_changing_a_non_member_is_404(team, project, outsider):
    response = patch_role(login_client(team["owner"]), project, outsider, "admin")
    assert_error(response, 404, "not_found")


# --- direct messages ---------------------------------------------------------------------


@pytest.fixture
def dm(owner, member):
    """A DM as the DM helper makes them: private, kind dm, fixed members."""
    ids = sorted([owner.pk, member.pk])
    project = Project.objects.create(
        name="dm", owner=owner, is_private=True, kind=Project.Kind.DM,
        dm_key=",".join(map(str, ids)))
    Membership.objects.create(user=owner, project=project, role=Membership.Role.MEMBER)
    Membership.objects.create(user=member, project=project, role=Membership.Role.MEMBER)
    return project


def test_dm_members_are_fixed(dm, owner, member, client_member):
    client = login_client(owner)
    assert_error(client.delete(members_url(dm, member)), 422, "dm_members_fixed")
    assert_error(client_member.delete(members_url(dm, member)), 422, "dm_members_fixed")
    assert_error(patch_role(client, dm, member, "admin"), 422, "dm_members_fixed")
    assert Membership.objects.filter(project=dm).count() == 2
    # Listing works as anywhere.
    assert client.get(members_url(dm)).json()["total"] == 2


# --- the page's panel --------------------------------------------------------------------


def page(client, project):
    return client.get(f"/projects/{project.pk}/")


def test_page_lists_members_with_roles(team, project):
    response = page(login_client(team["member"]), project)
    members = response.context["members"]
    assert [m["user"]["username"] for m in members] == ["owner", "adam", "amy", "member", "zed"]
    text = response.text
    assert 'id="members-panel"' in text
    assert text.index('data-username="owner"') < text.index('data-username="adam"')
    assert 'data-can-remove="false"' in text and 'data-can-change-roles="false"' in text
    assert "chat/members.js" in text


@pytest.mark.parametrize("who, can_remove, can_change", [
    ("owner", "true", "true"), ("admin", "true", "false"), ("member", "false", "false")])
def test_page_offers_controls_by_role(team, project, who, can_remove, can_change):
    text = page(login_client(team[who]), project).text
    assert f'data-can-remove="{can_remove}"' in text
    assert f'data-can-change-roles="{can_change}"' in text


def test_page_of_a_dm_offers_no_member_controls(dm, owner):
    text = page(login_client(owner), dm).text
    assert 'data-can-remove="false"' in text and 'data-can-change-roles="false"' in text


def test_page_shows_the_first_hundred_members_and_the_total(project, make_user):
    from chat.page_views import MEMBERS_SHOWN

    Membership.objects.bulk_create(
        Membership(user=make_user(f"u{i:03d}"), project=project)
        for i in range(MEMBERS_SHOWN + 5))
    response = page(login_client(project.owner), project)
    assert len(response.context["members"]) == MEMBERS_SHOWN
    assert response.context["member_count"] == MEMBERS_SHOWN + 7
    assert response.context["members_more"] is True


def test_panel_escapes_names(team, project):
    team["amy"].display_name = "<b>Amy</b>"
    team["amy"].save(update_fields=["display_name"])
    text = page(login_client(team["member"]), project).text
    assert "<b>Amy</b>" not in text and "&lt;b&gt;Amy&lt;/b&gt;" in text


# --- admin -------------------------------------------------------------------------------


def test_membership_admin_searches_and_filters(team, project, make_user):
    from django.test import Client

    staff = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)

    def listed(query):
        response = client.get(f"/admin/projects/membership/{query}")
        assert response.status_code == 200
        return {(m.user.username, m.role) for m in response.context["cl"].result_list}

    assert listed("?q=zed") == {("zed", "member")}
    assert listed("?role=admin") == {("adam", "admin")}
    assert ("owner", "owner") in listed(f"?q=General&project={project.pk}")


def test_membership_admin_page_is_a_fixed_number_of_queries(team, project, make_user):
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    staff = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    client.get("/admin/projects/membership/")

    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/admin/projects/membership/").status_code == 200
        return [q["sql"] for q in queries.captured_queries]

    few = page_queries()
    Membership.objects.bulk_create(
        Membership(user=make_user(f"y{i}"), project=project) for i in range(40))
    many = page_queries()
    # Users and projects are joined into the page query: more rows, no more queries.
    assert len(many) == len(few)
    counts = [sql for sql in many if "COUNT(" in sql and "projects_membership" in sql]
    # Counted as the message admin counts: capped (or estimated), never the whole table.
    assert counts and all("LIMIT" in sql for sql in counts)


# --- removal closes the removed member's socket ------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_removal_through_the_api_closes_the_members_socket_4403(people, project):
    from chat.realtime.frames import CLOSE_NOT_MEMBER
    from chat.tests.test_revocation import assert_revoked, open_pair

    member_socket, bystander_socket = await open_pair(people, project)

    def remove():
        response = people["clients"]["owner"].delete(members_url(project, people["member"]))
        assert response.status_code == 204, response.content

    await sync_to_async(remove)()
    await assert_revoked(member_socket, bystander_socket, people["owner"], project.pk,
                         CLOSE_NOT_MEMBER)
    await bystander_socket.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_role_change_keeps_the_socket_open(people, project):
    """A role change ends no access: the member's socket still receives."""
    from chat.tests.test_revocation import open_pair, receive_message, send

    member_socket, bystander_socket = await open_pair(people, project)

    def promote():
        response = people["clients"]["owner"].patch(
            members_url(project, people["member"]), {"role": "admin"},
            content_type="application/json")
        assert response.status_code == 200, response.content

    await sync_to_async(promote)()
    await send(people["owner"], project.pk, "after the promotion")
    await receive_message(member_socket, "after the promotion")
    await member_socket.disconnect()
    await bystander_socket.disconnect()


@pytest.fixture
def people(owner, member, make_user, project):
    from chat.tests.test_revocation import signed_in_client

    bystander = make_user("bystander")
    do_join_project(bystander, project.pk)
    return {"owner": owner, "member": member, "bystander": bystander,
            "clients": {u.username: signed_in_client(u) for u in (owner, member, bystander)}}
