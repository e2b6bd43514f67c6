from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count, F, Max, Min

from accounts.models import User
from chat.actions import do_send_message
from chat.models import Message
from projects.models import Membership, Project

pytestmark = pytest.mark.django_db

SMALL = ["--users", "6", "--projects", "3", "--messages", "100", "--batch-size", "7"]


def seed(*args):
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def counts():
    return (
        User.objects.count(),
        Project.objects.count(),
        Membership.objects.count(),
        Message.objects.count(),
    )


def test_seed_creates_the_requested_counts():
    output = seed(*SMALL)

    # demo + user1..user6; 3 projects with everyone in each; 100 messages split 34/33/33
    assert counts() == (7, 3, 21, 100)
    assert list(Project.objects.order_by("id").values_list("name", flat=True)) == [
        "General",
        "Random",
        "Engineering",
    ]
    per_project = sorted(
        Message.objects.values("project_id")
        .annotate(n=Count("id"))
        .values_list("n", flat=True)
    )
    assert per_project == [33, 33, 34]
    demo = User.objects.get(username="demo")
    assert demo.is_staff and demo.is_superuser
    assert demo.check_password("demo-pass-123")
    assert User.objects.get(username="user6").check_password("demo-pass-123")
    assert set(Project.objects.values_list("owner_id", flat=True)) == {demo.pk}
    assert Membership.objects.filter(user=demo, role=Membership.Role.OWNER).count() == 3
    assert "Demo login: demo / demo-pass-123" in output
    assert "http://127.0.0.1:8000/" in output


def test_seed_twice_creates_nothing_more():
    seed(*SMALL)
    before = counts()

    seed(*SMALL)

    assert counts() == before


def test_seed_numbers_each_project_from_one_without_gaps():
    seed(*SMALL)

    for project in Project.objects.all():
        seqs = list(
            Message.objects.filter(project=project)
            .order_by("seq")
            .values_list("seq", flat=True)
        )
        assert seqs == list(range(1, len(seqs) + 1))
        assert project.seq == len(seqs)
        assert (
            not Message.objects.filter(project=project)
            .exclude(changed_seq=F("seq"))
            .exists()
        )


def test_seed_spreads_times_increasing_with_seq_and_rotates_authors():
    seed(*SMALL)
    project = Project.objects.get(name="General")

    times = list(
        Message.objects.filter(project=project)
        .order_by("seq")
        .values_list("created_at", flat=True)
    )
    assert times == sorted(times) and len(set(times)) == len(times)
    assert (times[-1] - times[0]).days >= 20
    authors = (
        Message.objects.filter(project=project).values("author_id").distinct().count()
    )
    assert authors == Membership.objects.filter(project=project).count()


def test_send_after_seed_takes_the_next_number():
    seed(*SMALL)
    project = Project.objects.get(name="General")
    k = Message.objects.filter(project=project).count()
    user = User.objects.get(username="user1")

    message, created = do_send_message(user, project.pk, "after the seed")

    assert created and message.seq == k + 1 and message.changed_seq == k + 1


def test_seed_tops_up_to_a_larger_total_continuing_the_numbers():
    seed(*SMALL)
    project = Project.objects.get(name="General")
    do_send_message(User.objects.get(username="user1"), project.pk, "a real one")

    seed("--users", "6", "--projects", "3", "--messages", "300")

    project.refresh_from_db()
    stats = Message.objects.filter(project=project).aggregate(
        n=Count("id"), low=Min("seq"), high=Max("seq")
    )
    # 34 seeded + 1 sent, topped up to its share of 300 (100), numbered on.
    assert stats == {"n": 100, "low": 1, "high": 100}
    assert project.seq == 100
    assert Message.objects.count() == 300


def test_once_prints_the_login_and_creates_nothing_when_data_exists():
    seed(*SMALL)
    before = counts()

    output = seed("--once", "--messages", "5000", "--users", "50")

    assert counts() == before
    assert "Demo login: demo / demo-pass-123" in output
    assert "http://127.0.0.1:8000/" in output


def test_once_seeds_an_empty_database():
    seed("--once", *SMALL)

    assert counts() == (7, 3, 21, 100)


def test_members_per_project_limits_each_project():
    seed(
        "--users",
        "6",
        "--projects",
        "3",
        "--messages",
        "30",
        "--members-per-project",
        "3",
    )

    for project in Project.objects.all():
        members = Membership.objects.filter(project=project)
        assert members.count() == 3
        assert members.filter(
            user__username="demo", role=Membership.Role.OWNER
        ).exists()
        authors = set(
            Message.objects.filter(project=project).values_list("author_id", flat=True)
        )
        assert authors <= set(members.values_list("user_id", flat=True))


def test_loadtest_creates_numbered_users_in_one_load_project():
    output = seed(
        "--loadtest", "--users", "5", "--messages", "10", "--password", "load-pass-1"
    )

    load = Project.objects.get(name="Load")
    assert list(Project.objects.values_list("name", flat=True)) == ["Load"]
    usernames = set(
        Membership.objects.filter(project=load).values_list("user__username", flat=True)
    )
    assert usernames == {"demo", "load0", "load1", "load2", "load3", "load4"}
    assert User.objects.get(username="load4").check_password("load-pass-1")
    assert Message.objects.filter(project=load).count() == 10
    assert "Demo login: demo / load-pass-1" in output

    seed("--loadtest", "--users", "5", "--messages", "10", "--password", "load-pass-1")
    assert User.objects.count() == 6 and Membership.objects.count() == 6


def test_users_prefix_names_the_numbered_users():
    seed(
        "--users", "2", "--projects", "1", "--messages", "0", "--users-prefix", "alice"
    )

    assert set(User.objects.values_list("username", flat=True)) == {
        "demo",
        "alice1",
        "alice2",
    }


def test_loadtest_projects_spread_the_users_round_robin():
    seed(
        "--loadtest", "--users", "7", "--loadtest-projects", "3", "--messages", "9"
    )

    demo = User.objects.get(username="demo")
    projects = {p.name: p for p in Project.objects.all()}
    assert sorted(projects) == ["Load", "Load 2", "Load 3"]
    for project in projects.values():
        assert project.owner_id == demo.pk and not project.is_private
        assert Membership.objects.filter(
            project=project, user=demo, role=Membership.Role.OWNER
        ).exists()
        assert Message.objects.filter(project=project).count() == 3

    def members(name):
        return set(
            Membership.objects.filter(project=projects[name])
            .exclude(user=demo)
            .values_list("user__username", flat=True)
        )

    # load i is a member of project i % 3 only.
    assert members("Load") == {"load0", "load3", "load6"}
    assert members("Load 2") == {"load1", "load4"}
    assert members("Load 3") == {"load2", "load5"}
    assert not Membership.objects.exclude(user=demo).exclude(
        role=Membership.Role.MEMBER
    ).exists()
    before = counts()
    assert before == (8, 3, 10, 9)

    seed("--loadtest", "--users", "7", "--loadtest-projects", "3", "--messages", "9")

    assert counts() == before


def test_loadtest_projects_default_is_one_load_project():
    seed("--loadtest", "--users", "3", "--messages", "0", "--loadtest-projects", "1")

    assert list(Project.objects.values_list("name", flat=True)) == ["Load"]
    assert Membership.objects.count() == 4


def test_loadtest_projects_must_be_positive():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--loadtest-projects"):
        seed("--loadtest", "--loadtest-projects", "0")


def test_seeded_messages_are_stored_rendered_as_a_send_stores_them():
    from chat.rendering import RENDER_VERSION, render

    seed(*SMALL)

    rows = list(Message.objects.values_list("content", "content_html", "render_version"))
    assert rows and {version for _c, _h, version in rows} == {RENDER_VERSION}
    assert all(html == render(content) for content, html, _v in rows)
