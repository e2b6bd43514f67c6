"""The project list assembled from skeletons and cards (projects.list_cache)
answers what the list query answers, after any change, and costs what it says."""

import random

import orjson
import pytest

from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.reactions import do_add_reaction
from chatsite.pagination import page_numbered
from projects import list_cache
from projects.actions import (
    do_create_project,
    do_join_project,
    do_leave_project,
    do_mark_read,
)
from projects.selectors import get_user_project_page, get_user_projects_body


def listed(user, page=1, per_page=50):
    return orjson.loads(get_user_projects_body(user, page=page, per_page=per_page))


def queried(user, page=1, per_page=50):
    items, total = get_user_project_page(user, offset=(page - 1) * per_page, limit=per_page)
    return orjson.loads(orjson.dumps(page_numbered(items, total, page, per_page)))


@pytest.fixture
def small_tail(monkeypatch):
    """Six changes of tail: members fall behind it and cards trim within a test."""
    monkeypatch.setattr(list_cache, "TAIL_SEQS", 6)


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_list_what_the_query_lists(
    seed, small_tail, make_user, django_capture_on_commit_callbacks
):
    rng = random.Random(seed)
    users = [make_user(f"u{i}") for i in range(4)]
    projects = []
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(3):
            project = do_create_project(users[i], name=f"room {'cab'[i]}")
            projects.append(project)
            for user in users:
                if user is not users[i] and rng.random() < 0.8:
                    do_join_project(user, project.pk)
    from projects.models import Membership

    def members(project):
        return list(Membership.objects.filter(project=project).select_related("user"))

    for step in range(60):
        project = rng.choice(projects)
        people = members(project)
        if not people:
            continue
        actor = rng.choice(people).user
        op = rng.random()
        with django_capture_on_commit_callbacks(execute=True):
            live = list(project.messages.filter(deleted_at__isnull=True))
            if op < 0.45 or not live:
                named = rng.choice(people).user.username
                content = rng.choice(["hi", f"@{named} look", "@all hey", "plain"])
                do_send_message(actor, project.pk, content)
            elif op < 0.6:
                target = rng.choice(live)
                named = rng.choice(people).user.username
                do_edit_message(target, rng.choice(["edited", f"@{named} edited"]))
            elif op < 0.7:
                do_delete_message(rng.choice(live))
            elif op < 0.75:
                do_add_reaction(actor, rng.choice(live), "👍")
            elif op < 0.88:
                project.refresh_from_db()
                do_mark_read(actor, project.pk, rng.randint(0, project.seq))
            elif op < 0.92:
                do_leave_project(actor, project.pk) if actor.pk != project.owner_id else None
            elif op < 0.96:
                outsider = rng.choice(users)
                if not Membership.objects.filter(project=project, user=outsider).exists():
                    do_join_project(outsider, project.pk)
            else:
                project.refresh_from_db()
                project.name = f"room {rng.choice('xyzab')}{step}"
                project.save()
        for user in users:
            assert listed(user) == queried(user), (seed, step, user.username)


def test_a_member_behind_the_tail_gets_the_query(
    small_tail, owner, member, project, send, django_assert_num_queries,
    django_capture_on_commit_callbacks
):
    from chatsite.cache import CACHE_LOOKUPS

    miss = CACHE_LOOKUPS.labels("project_list", "miss")
    do_join_project(member, project.pk)
    send(owner, project, 4)
    before = miss._value.get()
    assert listed(member)["items"][0]["unread_count"] == 4
    assert miss._value.get() == before  # within the tail: assembled
    send(owner, project, 4)  # 8 unread: the member's pointer is below the 6-change tail
    with django_assert_num_queries(3):  # the card's row and changes, then the query
        assert listed(member)["items"][0]["unread_count"] == 8
    assert miss._value.get() == before + 1
    with django_capture_on_commit_callbacks(execute=True):
        do_mark_read(member, project.pk, 8)
    send(owner, project, 1)
    assert listed(member)["items"][0]["unread_count"] == 1
    assert miss._value.get() == before + 1  # caught up: assembled again
    assert listed(member) == queried(member)


def test_a_user_deleted_takes_their_messages_out_of_every_count(
    owner, member, make_user, project, send, django_capture_on_commit_callbacks,
    django_assert_num_queries
):
    leaver = make_user("leaver")
    do_join_project(member, project.pk)
    do_join_project(leaver, project.pk)
    send(owner, project, 1)
    send(leaver, project, 3)
    assert listed(member)["items"][0]["unread_count"] == 4
    with django_capture_on_commit_callbacks(execute=True):
        leaver.delete()  # its messages go with it: no changed_seq moves
    # The deletion marked the project: its next card is read whole.
    with django_assert_num_queries(2):  # the project's row and its whole tail
        assert listed(member)["items"][0]["unread_count"] == 1
    assert listed(member) == queried(member)


def test_a_renamed_project_reads_the_skeleton_again(owner, member, send,
                                                    django_capture_on_commit_callbacks):
    first = do_create_project(owner, name="aaa")
    second = do_create_project(owner, name="bbb")
    for project in (first, second):
        do_join_project(member, project.pk)
    assert [p["name"] for p in listed(member)["items"]] == ["aaa", "bbb"]
    with django_capture_on_commit_callbacks(execute=True):
        first.name = "ccc"
        first.save()  # bumps the members' versions and the project's
    assert [p["name"] for p in listed(member)["items"]] == ["bbb", "ccc"]
    assert listed(member) == queried(member)


def test_cards_follow_an_edit_adding_and_removing_a_mention(owner, member, project, send,
                                                            django_capture_on_commit_callbacks):
    do_join_project(member, project.pk)
    message = send(owner, project, 1)[0]
    assert listed(member)["items"][0]["mention_count"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        do_edit_message(message, "@member now")
    assert listed(member)["items"][0]["mention_count"] == 1
    message.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        do_edit_message(message, "no one")
    assert listed(member)["items"][0]["mention_count"] == 0
    assert listed(member) == queried(member)


def test_cards_are_kept_per_process_and_bounded(monkeypatch, owner, member, send):
    monkeypatch.setattr(list_cache, "CARDS_MAX", 4)
    for i in range(6):
        project = do_create_project(owner, name=f"p{i}")
        do_join_project(member, project.pk)
    assert len(listed(member)["items"]) == 6
    assert len(list_cache._cards) <= 4
    assert listed(member) == queried(member)
