"""Behaviour that only PostgreSQL can show: concurrent numbering and query plans."""

import re
import threading
import uuid

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from chat import actions, selectors
from chat.models import Message
from projects.actions import do_create_project, do_join_project
from projects.models import Project

pytestmark = pytest.mark.postgres


def run_concurrently(n, work):
    """Run work(i) in n threads released together; return results and errors."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def target(i):
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            # Each thread has its own connection; hand it back.
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a sender hung"
    return results, errors


# --- concurrent numbering -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_are_numbered_without_gap_or_duplicate(
    owner, member, project, published
):
    senders = [owner, member]

    def work(i):
        message, _ = actions.do_send_message(senders[i % 2], project.pk, f"m{i}")
        return message.seq

    results, errors = run_concurrently(20, work)
    assert errors == []
    assert sorted(results) == list(range(1, 21))
    stored = list(
        Message.objects.filter(project=project).values_list("seq", "changed_seq")
    )
    assert sorted(seq for seq, _ in stored) == list(range(1, 21))
    assert all(seq == changed for seq, changed in stored)
    assert Project.objects.get(pk=project.pk).seq == 20
    assert len(published) == 20  # every committed change published once


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_with_one_client_msg_id_make_one_row(
    member, project, published
):
    key = uuid.uuid4()

    def work(i):
        message, created = actions.do_send_message(member, project.pk, f"try {i}", key)
        return message.pk, created

    results, errors = run_concurrently(10, work)
    assert errors == []
    assert Message.objects.filter(author=member, client_msg_id=key).count() == 1
    assert Message.objects.count() == 1
    assert len({pk for pk, _ in results}) == 1  # every caller got the same message
    assert sum(created for _, created in results) == 1
    assert Project.objects.get(pk=project.pk).seq == 1  # losers gave their numbers back
    assert len(published) == 1


# --- query plans ----------------------------------------------------------------


PROJECTS = 20
PER_PROJECT = 600  # 12,000 messages in all


@pytest.fixture
def large_history(owner, member):
    """12,000 messages over 20 projects, with statistics gathered."""
    projects = []
    for i in range(PROJECTS):
        project = do_create_project(owner, name=f"bulk {i}")
        do_join_project(member, project.pk)
        projects.append(project)
    rows = [
        Message(
            project=project,
            author=owner if n % 2 else member,
            content=f"message {n} in {project.name}",
            seq=n,
            changed_seq=n,
        )
        for project in projects
        for n in range(1, PER_PROJECT + 1)
    ]
    Message.objects.bulk_create(rows, batch_size=2000)
    Project.objects.filter(pk__in=[p.pk for p in projects]).update(seq=PER_PROJECT)
    assert Message.objects.count() >= 10_000
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_message")
        cursor.execute("ANALYZE projects_project")
    return projects[PROJECTS // 2]


def executed_sql(call):
    """Run a selector and return the SQL it sent that reads chat_message."""
    with CaptureQueriesContext(connection) as captured:
        call()
    return [q["sql"] for q in captured.captured_queries if "chat_message" in q["sql"]]


def explain(sql):
    with connection.cursor() as cursor:
        # The captured SQL has its parameters bound already (client-side
        # binding), so it is exactly what the server planned.
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


# chat_message itself must be reached through one of its indexes (the join to
# accounts_user has its own index scans, which must not satisfy the check).
MESSAGE_INDEX_ACCESS = re.compile(
    r"Index (Only )?Scan (Backward )?using \w+ on chat_message"
    r"|Bitmap Index Scan on (idx|uniq)_message_\w+"
)


def assert_uses_index(sql):
    plan = explain(sql)
    assert "Index" in plan, plan
    assert "Seq Scan on chat_message" not in plan, plan
    assert MESSAGE_INDEX_ACCESS.search(plan), plan


def test_cursor_history_before_uses_an_index(large_history):
    (sql,) = executed_sql(
        lambda: selectors.get_recent_messages(large_history.pk, before=300, limit=50)
    )
    assert_uses_index(sql)


def test_cursor_history_latest_page_uses_an_index(large_history):
    (sql,) = executed_sql(
        lambda: selectors.get_recent_messages(large_history.pk, limit=50)
    )
    assert_uses_index(sql)


def test_cursor_history_after_uses_an_index(large_history):
    (sql,) = executed_sql(
        lambda: selectors.get_changes_after(large_history.pk, after=500, limit=200)
    )
    assert_uses_index(sql)


def test_page_numbered_history_uses_an_index(large_history):
    statements = executed_sql(
        lambda: selectors.get_message_page(large_history.pk, page=3, per_page=50)
    )
    assert len(statements) == 2  # the COUNT for `total`, then the page
    for sql in statements:
        assert_uses_index(sql)
