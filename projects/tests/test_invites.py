"""Invite links (projects.invites): the API, the /join page, sign-up through it,
use counting (race-safe on PostgreSQL) and the throttle."""

import hashlib
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.models import User
from accounts.ratelimit import record_login_failure
from conftest import assert_error, login_client
from projects import invites
from projects.actions import do_create_project
from projects.models import Invite, Membership, Project

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "correct-horse-battery-9"


def make_invite(user, project, **kwargs):
    invite, token = invites.check_create_invite(user, project.pk, **kwargs)
    return invite, token


def post_json(client, url, body=None):
    return client.post(url, body or {}, content_type="application/json")


def signup_data(username="newbie", email=None, password=NEW_PASSWORD):
    return {"username": username, "email": email or f"{username}@example.com",
            "password": password}


# --- the API -----------------------------------------------------------------------


def test_owner_makes_an_invite_whose_token_is_stored_only_hashed(client_owner, project):
    response = post_json(client_owner, f"/api/projects/{project.pk}/invites",
                         {"max_uses": 3, "expires_in_hours": 2})
    assert response.status_code == 201, response.content
    body = response.json()
    token = body["token"]
    assert body["url"] == f"/join/{token}"
    assert body["max_uses"] == 3
    assert len(token) >= 43  # token_urlsafe(32): 256 bits
    invite = Invite.objects.get(pk=body["id"])
    assert invite.token_hash == hashlib.sha256(token.encode()).hexdigest()
    # The token itself is in no column of the row.
    row = Invite.objects.filter(pk=invite.pk).values().get()
    assert all(token not in str(value) for value in row.values())
    expires = timezone.datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=1, minutes=59) < expires - timezone.now() <= timedelta(hours=2)


def test_two_invites_get_different_tokens(owner, project):
    tokens = {make_invite(owner, project)[1] for _ in range(5)}
    assert len(tokens) == 5


def test_an_admin_may_invite_but_a_member_may_not(owner, member, project, make_user):
    admin = make_user("admin")
    Membership.objects.create(user=admin, project=project, role=Membership.Role.ADMIN)
    url = f"/api/projects/{project.pk}/invites"
    assert post_json(login_client(admin), url).status_code == 201
    assert_error(post_json(login_client(member), url), 403, "forbidden")
    assert_error(login_client(member).get(url), 403, "forbidden")
    assert_error(login_client(member).delete(f"{url}/1"), 403, "forbidden")


def test_a_non_member_is_refused_as_elsewhere(owner, outsider, client_outsider, project):
    assert_error(post_json(client_outsider, f"/api/projects/{project.pk}/invites"),
                 403, "not_member")
    private = do_create_project(owner, name="Hidden", is_private=True)
    assert_error(post_json(client_outsider, f"/api/projects/{private.pk}/invites"),
                 404, "not_found")
    assert_error(post_json(client_outsider, "/api/projects/999999/invites"), 404)


def test_signed_out_and_csrf_less_requests_are_refused(owner, project):
    url = f"/api/projects/{project.pk}/invites"
    assert_error(post_json(Client(enforce_csrf_checks=True), url), 403, "csrf_failed")
    assert_error(Client().get(url), 401, "not_authenticated")
    assert_error(post_json(login_client(owner, enforce_csrf=True), url), 403, "csrf_failed")


@pytest.mark.parametrize("body, field, reason", [
    ({"max_uses": 0}, "max_uses", "too_small"),
    ({"expires_in_hours": 0}, "expires_in_hours", "too_small"),
    ({"expires_in_hours": 10**9}, "expires_in_hours", "too_large"),
    ({"max_uses": 10**12}, "max_uses", "too_large"),
    ({"max_uses": "3"}, "max_uses", None),
    ({"expires_in_hours": 1.5}, "expires_in_hours", None),
    ({"max_uses": True}, "max_uses", None),
])
def test_bad_numbers_are_422_naming_the_field(client_owner, project, body, field, reason):
    error = assert_error(post_json(client_owner, f"/api/projects/{project.pk}/invites", body),
                         422)
    assert field in error["fields"]
    if reason:
        assert error["fields"][field] == reason
    assert not Invite.objects.exists()


def test_a_direct_message_has_no_invites(owner, member):
    dm = Project.objects.create(name="dm", owner=owner, is_private=True,
                                kind=Project.Kind.DM, dm_key=f"{owner.pk},{member.pk}")
    Membership.objects.create(user=owner, project=dm, role=Membership.Role.OWNER)
    client = login_client(owner)
    error = assert_error(post_json(client, f"/api/projects/{dm.pk}/invites"), 422)
    assert error["code"] == "dm_no_invites"
    assert_error(client.get(f"/api/projects/{dm.pk}/invites"), 422)


def test_the_list_shows_live_invites_newest_first_without_tokens(
        client_owner, owner, member, project):
    live_old, _ = make_invite(owner, project, max_uses=2)
    live_new, token = make_invite(owner, project)
    revoked, _ = make_invite(owner, project)
    Invite.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    expired, _ = make_invite(owner, project, expires_in_hours=1)
    Invite.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(1))
    used_up, _ = make_invite(owner, project, max_uses=1)
    Invite.objects.filter(pk=used_up.pk).update(uses=1)

    response = client_owner.get(f"/api/projects/{project.pk}/invites")

    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [live_new.pk, live_old.pk]
    assert body["total"] == 2 and body["has_next"] is False
    assert all("token" not in item and "url" not in item for item in body["items"])
    assert token not in response.content.decode()
    page = client_owner.get(f"/api/projects/{project.pk}/invites?per_page=1&page=2").json()
    assert [item["id"] for item in page["items"]] == [live_old.pk]
    assert_error(client_owner.get(f"/api/projects/{project.pk}/invites?page=0"), 400)


def test_listing_is_three_queries(client_owner, owner, project, django_assert_num_queries):
    for _ in range(3):
        make_invite(owner, project)
    # the membership with its project, the page of invites, their count
    with django_assert_num_queries(3):
        response = client_owner.get(f"/api/projects/{project.pk}/invites")
    assert len(response.json()["items"]) == 3


def test_revoking_makes_the_link_gone(client_owner, owner, project, make_user):
    invite, token = make_invite(owner, project)
    url = f"/api/projects/{project.pk}/invites/{invite.pk}"
    assert client_owner.delete(url).status_code == 204
    assert client_owner.delete(url).status_code == 204  # harmless twice
    assert Invite.objects.get(pk=invite.pk).revoked_at is not None
    response = login_client(make_user("late")).post(f"/join/{token}")
    assert response.status_code == 410
    assert project.name not in response.content.decode()


def test_revoking_another_projects_invite_or_a_missing_one_is_404(client_owner, owner, project):
    other = do_create_project(owner, name="Other")
    invite, _ = make_invite(owner, other)
    assert_error(client_owner.delete(f"/api/projects/{project.pk}/invites/{invite.pk}"), 404)
    assert_error(client_owner.delete(f"/api/projects/{project.pk}/invites/99999"), 404)
    assert_error(client_owner.delete(
        f"/api/projects/{project.pk}/invites/{2**63}"), 404)
    assert Invite.objects.get(pk=invite.pk).revoked_at is None


# --- the /join page: signed in ----------------------------------------------------------


def test_the_page_names_the_project_only_for_a_live_token(owner, project, make_user):
    _, token = make_invite(owner, project)
    anonymous = Client()
    page = anonymous.get(f"/join/{token}")
    assert page.status_code == 200
    text = page.content.decode()
    assert project.name in text
    assert 'name="username"' in text and 'name="email"' in text and 'name="password"' in text
    assert f"/login?next=/join/{token}" in text
    missing = anonymous.get(f"/join/{token[:-2]}xx")
    assert missing.status_code == 404
    assert project.name not in missing.content.decode()
    assert anonymous.get("/join/" + "a" * 500).status_code == 404


def test_a_signed_in_user_joins_with_a_post_and_lands_in_the_project(
        owner, project, make_user):
    invite, token = make_invite(owner, project)
    newcomer = make_user("newcomer")
    client = login_client(newcomer)
    page = client.get(f"/join/{token}")
    assert page.status_code == 200 and 'id="join-form"' in page.content.decode()
    assert not Membership.objects.filter(user=newcomer, project=project).exists()  # GET joins nobody

    response = client.post(f"/join/{token}")

    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/"
    membership = Membership.objects.get(user=newcomer, project=project)
    assert membership.role == Membership.Role.MEMBER
    assert Invite.objects.get(pk=invite.pk).uses == 1
    assert client.get(f"/api/projects/{project.pk}/messages").status_code == 200


def test_a_member_already_in_uses_nothing(client_member, owner, member, project):
    invite, token = make_invite(owner, project, max_uses=1)
    assert client_member.post(f"/join/{token}").status_code == 302
    assert Invite.objects.get(pk=invite.pk).uses == 0


def test_an_invite_opens_a_private_project(owner, make_user):
    private = do_create_project(owner, name="Secret room", is_private=True)
    _, token = make_invite(owner, private)
    guest = make_user("guest")
    assert login_client(guest).post(f"/join/{token}").status_code == 302
    assert Membership.objects.filter(user=guest, project=private).exists()


def test_joining_needs_the_csrf_token(owner, project, make_user):
    _, token = make_invite(owner, project)
    guest = make_user("guest")
    response = login_client(guest, enforce_csrf=True).post(f"/join/{token}")
    assert response.status_code == 403
    assert not Membership.objects.filter(user=guest, project=project).exists()


@pytest.mark.parametrize("state", ["expired", "revoked", "used_up", "project_inactive"])
def test_a_dead_invite_is_a_410_page_naming_no_project(owner, project, make_user, state):
    invite, token = make_invite(owner, project, max_uses=2)
    if state == "expired":
        Invite.objects.filter(pk=invite.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1))
    elif state == "revoked":
        Invite.objects.filter(pk=invite.pk).update(revoked_at=timezone.now())
    elif state == "used_up":
        Invite.objects.filter(pk=invite.pk).update(uses=2)
    else:
        Project.objects.filter(pk=project.pk).update(is_active=False)
    guest = make_user("guest")
    for client in (Client(), login_client(guest)):
        for method in (client.get, client.post):
            response = method(f"/join/{token}")
            assert response.status_code == 410
            text = response.content.decode()
            assert "no longer valid" in text
            assert project.name not in text
    assert Client().post(f"/join/{token}", signup_data()).status_code == 410
    assert not Membership.objects.filter(user=guest, project=project).exists()
    assert not User.objects.filter(username="newbie").exists()


def test_uses_are_counted_up_to_max_uses(owner, project, make_user):
    invite, token = make_invite(owner, project, max_uses=2)
    codes = [login_client(make_user(f"u{i}")).post(f"/join/{token}").status_code
             for i in range(3)]
    assert codes == [302, 302, 410]
    assert Invite.objects.get(pk=invite.pk).uses == 2
    assert Membership.objects.filter(project=project, user__username__startswith="u").count() == 2


# --- the /join page: signing up ------------------------------------------------------


def test_a_new_person_signs_up_joins_and_lands_in_the_project(owner, project):
    invite, token = make_invite(owner, project)
    client = Client(enforce_csrf_checks=True)
    page = client.get(f"/join/{token}")
    csrf = page.cookies[settings.CSRF_COOKIE_NAME].value

    response = client.post(f"/join/{token}", {**signup_data(), "csrfmiddlewaretoken": csrf})

    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == f"/projects/{project.pk}/"
    user = User.objects.get(username="newbie")
    assert user.email == "newbie@example.com" and user.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=user, project=project).role == Membership.Role.MEMBER
    assert Invite.objects.get(pk=invite.pk).uses == 1
    assert client.get("/api/auth/me").json()["user"]["username"] == "newbie"
    assert client.get(f"/projects/{project.pk}/").status_code == 200


@pytest.mark.parametrize("data, field, text", [
    (signup_data(username="Owner"), "username", "This username is taken."),
    (signup_data(email="OWNER@example.com"), "email", "An account with this email exists."),
    (signup_data(password="short"), "password", "too short"),
    (signup_data(password="password1234"), "password", "too common"),
    (signup_data(username="margaretha", password="margaretha1"), "password", "too similar"),
    (signup_data(username="a@b"), "username", "Use letters, digits"),
    (signup_data(username="trailing."), "username", "Use letters, digits"),
    (signup_data(email="not-an-email"), "email", "valid email"),
    ({"username": "", "email": "", "password": ""}, "username", "required"),
])
def test_sign_up_refusals_are_field_errors_and_create_nothing(
        owner, project, data, field, text):
    invite, token = make_invite(owner, project)
    users_before = User.objects.count()

    response = Client().post(f"/join/{token}", data)

    assert response.status_code == 422
    form = response.context["form"]
    assert text in " ".join(form.errors[field]), form.errors
    html = response.content.decode()
    assert f'id="{field}-errors"' in html
    assert User.objects.count() == users_before
    assert Invite.objects.get(pk=invite.pk).uses == 0


def test_a_sign_up_that_loses_the_last_use_creates_no_account(owner, project, monkeypatch):
    invite, token = make_invite(owner, project, max_uses=1)
    stale = invites.get_invite(token)  # read as live by the sign-up's request ...
    Invite.objects.filter(pk=invite.pk).update(uses=1)  # ... then someone else used it
    monkeypatch.setattr(invites, "get_invite", lambda token: stale)

    response = Client().post(f"/join/{token}", signup_data())

    assert response.status_code == 410
    assert not User.objects.filter(username="newbie").exists()  # rolled back with the use


def test_failed_sign_ups_use_up_the_sign_in_throttle_of_the_address(owner, project):
    _, token = make_invite(owner, project)
    client = Client()
    for i in range(settings.LOGIN_FAILURE_LIMIT):
        response = client.post(f"/join/{token}", signup_data(username=f"p{i}", password="x"))
        assert response.status_code == 422

    response = client.post(f"/join/{token}", signup_data())

    assert response.status_code == 429
    assert "Too many failed attempts" in response.content.decode()
    assert not User.objects.filter(username="newbie").exists()


def test_failed_sign_ins_count_toward_the_sign_up_throttle(owner, project):
    _, token = make_invite(owner, project)
    client = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post("/login", {"username": "owner", "password": "wrong"})
    assert client.post(f"/join/{token}", signup_data()).status_code == 429
    assert not User.objects.filter(username="newbie").exists()


def test_a_throttled_address_elsewhere_can_still_sign_up(owner, project):
    _, token = make_invite(owner, project)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        record_login_failure("203.0.113.9", "someone")
    response = Client(REMOTE_ADDR="198.51.100.1").post(f"/join/{token}", signup_data())
    assert response.status_code == 302
    assert User.objects.filter(username="newbie").exists()


# --- PostgreSQL: the race for the last use ------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_people_racing_for_a_single_use_invite_get_one_membership(owner, project, make_user):
    invite, token = make_invite(owner, project, max_uses=1)
    racers = [make_user(f"racer{i}") for i in range(2)]
    barrier = threading.Barrier(2)
    outcomes = [None, None]

    def race(i):
        try:
            barrier.wait(timeout=30)
            invites.do_join_by_invite(racers[i], token)
            outcomes[i] = "joined"
        except invites.InviteGone:
            outcomes[i] = "gone"
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes[i] = repr(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["gone", "joined"]
    assert Invite.objects.get(pk=invite.pk).uses == 1
    assert Membership.objects.filter(project=project, user__in=racers).count() == 1
