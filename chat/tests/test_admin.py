import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from chat.admin import EstimatedCountPaginator
from chat.models import Message
from conftest import login_client
from projects.models import Membership, Project

pytestmark = pytest.mark.django_db

# session, its user, the project filter's choices (at most 20 rows), the capped
# count, the page with authors and projects joined; PostgreSQL adds the
# planner's estimate. Whatever the number of messages.
CHANGELIST_MAX_QUERIES = 6


@pytest.fixture
def staff(make_user):
    return make_user("boss", is_staff=True, is_superuser=True)


@pytest.fixture
def client_staff(staff):
    return login_client(staff)


def test_staff_gets_every_changelist_and_change_form(
    client_staff, staff, project, member, send
):
    message = send(member, project)[0]
    membership = Membership.objects.get(user=member, project=project)
    urls = [
        "/admin/",
        "/admin/accounts/user/",
        f"/admin/accounts/user/{member.pk}/change/",
        "/admin/accounts/user/add/",
        "/admin/projects/project/",
        f"/admin/projects/project/{project.pk}/change/",
        "/admin/projects/project/add/",
        "/admin/projects/membership/",
        f"/admin/projects/membership/{membership.pk}/change/",
        "/admin/chat/message/",
        f"/admin/chat/message/{message.pk}/change/",
        "/admin/chat/message/?deleted=yes",
        f"/admin/chat/message/?deleted=no&project={project.pk}",
        "/admin/chat/message/?q=hello",
        f"/admin/projects/membership/?role=owner&project={project.pk}",
        "/admin/projects/project/?is_active__exact=1&q=Gen",
        "/admin/accounts/user/?is_active__exact=1&q=memb",
    ]
    for url in urls:
        response = client_staff.get(url)
        assert response.status_code == 200, url


def test_autocomplete_finds_users_and_projects(client_staff, project, member):
    users = client_staff.get(
        "/admin/autocomplete/",
        {
            "term": "memb",
            "app_label": "projects",
            "model_name": "membership",
            "field_name": "user",
        },
    )
    projects = client_staff.get(
        "/admin/autocomplete/",
        {
            "term": "gen",
            "app_label": "projects",
            "model_name": "membership",
            "field_name": "project",
        },
    )

    assert [r["text"] for r in users.json()["results"]] == ["member"]
    assert [r["text"] for r in projects.json()["results"]] == ["General"]


def test_message_filters_select_the_right_rows(
    client_staff, project, owner, member, send
):
    other = Project.objects.create(name="Other", owner=owner)
    Membership.objects.create(user=owner, project=other, role=Membership.Role.OWNER)
    kept, gone = send(member, project, 2)
    theirs = send(owner, other, prefix="bye")[0]
    client_staff.post(
        "/admin/chat/message/",
        {"action": "delete_with_tombstones", "_selected_action": [gone.pk]},
    )

    def listed(query):
        response = client_staff.get(f"/admin/chat/message/{query}")
        return {m.pk for m in response.context["cl"].result_list}

    assert listed("?deleted=yes") == {gone.pk}
    assert listed("?deleted=no") == {kept.pk, theirs.pk}
    assert listed(f"?project={other.pk}") == {theirs.pk}
    assert listed("?q=hello+0") == {kept.pk}


def test_project_filter_offers_a_bounded_list(client_staff, owner):
    Project.objects.bulk_create(Project(name=f"p{i}", owner=owner) for i in range(30))
    chosen = Project.objects.order_by("id").first()

    response = client_staff.get(f"/admin/projects/membership/?project={chosen.pk}")

    project_filter = next(
        spec
        for spec in response.context["cl"].filter_specs
        if getattr(spec, "parameter_name", None) == "project"
    )
    choices = list(project_filter.lookup_choices)
    # At most 20 of the most active, plus the chosen one when it is not among them.
    assert len(choices) == 21
    assert choices[0][0] == str(chosen.pk)


def test_a_bad_project_filter_value_is_not_an_error(client_staff):
    response = client_staff.get("/admin/chat/message/?project=abc")

    assert response.status_code == 302 and "e=1" in response["Location"]


@pytest.mark.parametrize("n", [5, 60])
def test_message_changelist_queries_do_not_grow_with_messages(
    n, client_staff, project, member, send, django_assert_max_num_queries
):
    send(member, project, n)

    with django_assert_max_num_queries(CHANGELIST_MAX_QUERIES):
        response = client_staff.get("/admin/chat/message/")

    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == min(n, 50)


def _unbounded_counts(queries):
    """COUNTs over chat_message that are not capped by a LIMIT."""
    return [
        q["sql"]
        for q in queries
        if re.search(r"COUNT\(", q["sql"], re.IGNORECASE)
        and "chat_message" in q["sql"]
        and not re.search(r"\bLIMIT\b", q["sql"], re.IGNORECASE)
    ]


@pytest.mark.parametrize(
    "query", ["", "?p=1", "?deleted=no", "?q=hello", "?o=-2", "?project=1"]
)
def test_message_changelist_never_counts_the_whole_table(
    query, client_staff, project, member, send
):
    send(member, project, 60)

    with CaptureQueriesContext(connection) as captured:
        response = client_staff.get(f"/admin/chat/message/{query}")

    assert response.status_code == 200
    assert _unbounded_counts(captured.captured_queries) == []
    counts = [q for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) <= 1


def test_paginator_counts_at_most_the_cap(project, member, send, monkeypatch):
    send(member, project, 30)
    monkeypatch.setattr(EstimatedCountPaginator, "count_cap", 10)

    paginator = EstimatedCountPaginator(Message.objects.order_by("-id"), 5)
    small = EstimatedCountPaginator(
        Message.objects.filter(seq__lte=3).order_by("-id"), 5
    )

    assert paginator.count == 10 and paginator.num_pages == 2
    assert small.count == 3


def test_tombstone_action_blanks_content_and_takes_new_numbers(
    client_staff, project, member, send
):
    messages = send(member, project, 3)
    chosen = [messages[0].pk, messages[2].pk]

    response = client_staff.post(
        "/admin/chat/message/",
        {"action": "delete_with_tombstones", "_selected_action": chosen},
    )

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.seq == 5  # 3 sends and 2 deletes, no gaps
    tombstones = Message.objects.filter(pk__in=chosen).order_by("pk")
    assert [(m.content, m.deleted_at is not None) for m in tombstones] == [
        ("", True)
    ] * 2
    assert [m.changed_seq for m in tombstones] == [4, 5]
    assert [m.seq for m in tombstones] == [1, 3]
    untouched = Message.objects.get(pk=messages[1].pk)
    assert untouched.deleted_at is None and untouched.changed_seq == 2
    assert Message.objects.count() == 3


def test_tombstone_action_leaves_existing_tombstones_alone(
    client_staff, project, member, send
):
    message = send(member, project)[0]
    for _ in range(2):
        client_staff.post(
            "/admin/chat/message/",
            {"action": "delete_with_tombstones", "_selected_action": [message.pk]},
        )

    message.refresh_from_db()
    assert message.changed_seq == 2


def test_messages_cannot_be_hard_deleted_or_added(client_staff, project, member, send):
    message = send(member, project)[0]

    response = client_staff.get("/admin/chat/message/")
    actions = [
        value for value, _ in response.context["action_form"].fields["action"].choices
    ]

    assert "delete_with_tombstones" in actions
    assert "delete_selected" not in actions
    assert (
        client_staff.get(f"/admin/chat/message/{message.pk}/delete/").status_code == 403
    )
    assert client_staff.get("/admin/chat/message/add/").status_code == 403
    assert Message.objects.filter(pk=message.pk).exists()


def test_sequence_fields_are_read_only(client_staff, project, member, send):
    message = send(member, project)[0]

    response = client_staff.post(
        f"/admin/chat/message/{message.pk}/change/",
        {"content": "moderated", "seq": 99, "changed_seq": 99},
    )

    assert response.status_code == 302
    message.refresh_from_db()
    project.refresh_from_db()
    # The edit went through chat.actions: a new change number, not the posted one.
    assert (message.content, message.seq, message.changed_seq) == ("moderated", 1, 2)
    assert message.edited_at is not None and project.seq == 2


def test_an_edit_in_admin_rewrites_the_mentions(client_staff, project, owner, member):
    from chat.actions import do_send_message
    from chat.models import Mention

    message = do_send_message(member, project.pk, "ping @owner")[0]
    assert Mention.objects.filter(message=message, user=owner).exists()

    response = client_staff.post(
        f"/admin/chat/message/{message.pk}/change/", {"content": "moderated"}
    )

    assert response.status_code == 302
    assert not Mention.objects.filter(message=message).exists()


def test_an_empty_edit_is_refused(client_staff, project, member, send):
    message = send(member, project)[0]

    response = client_staff.post(
        f"/admin/chat/message/{message.pk}/change/", {"content": "  "}
    )

    assert response.status_code == 200
    message.refresh_from_db()
    assert message.content == "hello 0" and message.changed_seq == 1


def test_deactivate_action_deactivates_projects(client_staff, project):
    response = client_staff.post(
        "/admin/projects/project/",
        {"action": "deactivate_selected", "_selected_action": [project.pk]},
    )

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.is_active is False


def test_project_added_in_admin_has_its_owner_as_member(client_staff, owner):
    response = client_staff.post(
        "/admin/projects/project/add/",
        {"name": "Admin made", "description": "", "owner": owner.pk, "is_active": "on"},
    )

    assert response.status_code == 302
    project = Project.objects.get(name="Admin made")
    assert Membership.objects.filter(
        user=owner, project=project, role=Membership.Role.OWNER
    ).exists()


def test_user_added_in_admin_gets_its_email(client_staff):
    response = client_staff.post(
        "/admin/accounts/user/add/",
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "usable_password": "true",
            "password1": "a-long-pass-123",
            "password2": "a-long-pass-123",
        },
    )

    assert response.status_code == 302
    user = User.objects.get(username="newbie")
    assert user.email == "newbie@example.com" and user.check_password("a-long-pass-123")


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/chat/message/",
        "/admin/projects/project/",
        "/admin/accounts/user/",
    ],
)
def test_non_staff_is_sent_to_the_admin_login(client_member, url):
    response = client_member.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
