"""Search (chat.search): only my projects, never deleted messages, newest first with a
cursor, hits open in context; on PostgreSQL the GIN full-text index serves it."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.actions import do_delete_message, do_send_message
from chat.management.commands.seed_demo import PHRASES
from chat.models import Message
from chat.search import search_messages
from projects.actions import do_create_project, do_join_project
from projects.models import Membership, Project


def hit_ids(rows):
    return [m.pk for m in rows]


# --- whose messages: both backends --------------------------------------------------------


@pytest.fixture
def scattered(owner, member, outsider, make_user, project):
    """The word "needle" in my project and in five places I may not see."""
    stranger = make_user("stranger")
    private = do_create_project(stranger, name="Private", is_private=True)
    public = do_create_project(stranger, name="Public, not joined")
    left = do_create_project(owner, name="Left")
    do_join_project(member, left.pk)
    archived = do_create_project(owner, name="Archived")
    do_join_project(member, archived.pk)

    visible = do_send_message(owner, project.pk, "needle visible")[0]
    do_send_message(stranger, private.pk, "needle private")
    do_send_message(stranger, public.pk, "needle public")
    do_send_message(owner, left.pk, "needle left")
    do_send_message(owner, archived.pk, "needle archived")
    deleted = do_send_message(owner, project.pk, "needle deleted")[0]
    do_delete_message(deleted)

    Membership.objects.filter(user=member, project=left).delete()
    Project.objects.filter(pk=archived.pk).update(is_active=False)
    return visible


def test_search_returns_only_live_messages_of_my_active_projects(member, scattered):
    rows, has_more = search_messages(member, "needle")
    assert hit_ids(rows) == [scattered.pk]
    assert not has_more


def test_search_api_and_page_show_nothing_from_elsewhere(client_member, scattered):
    body = client_member.get("/api/search?q=needle").json()
    assert [m["id"] for m in body["items"]] == [scattered.pk]
    text = client_member.get("/search", {"q": "needle"}).text
    assert text.count('class="hit"') == 1
    for elsewhere in ("private", "public", "left", "archived", "deleted"):
        assert f"needle {elsewhere}" not in str(body)
        assert f"</mark> {elsewhere}" not in text


# --- order and cursor ----------------------------------------------------------------------


def test_search_is_newest_first_and_the_cursor_pages_through_all_hits(
    owner, member, project, client_member
):
    other = do_create_project(owner, name="Other")
    do_join_project(member, other.pk)
    sent = []
    for i in range(7):
        target = project if i % 2 else other
        sent.append(do_send_message(owner, target.pk, f"needle number {i}")[0])
        do_send_message(owner, target.pk, f"hay {i}")
    seen, cursor, pages = [], None, 0
    while True:
        url = "/api/search?q=needle&limit=3" + (f"&before={cursor}" if cursor else "")
        body = client_member.get(url).json()
        pages += 1
        seen += [m["id"] for m in body["items"]]
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            break
        assert cursor == body["items"][-1]["id"]
    assert seen == [m.pk for m in reversed(sent)]  # newest first, each once
    assert pages == 3


def test_search_cursor_within_one_project(owner, project, member):
    sent = [do_send_message(owner, project.pk, f"needle {i}")[0] for i in range(5)]
    rows, has_more = search_messages(
        member, "needle", project_id=project.pk, before=sent[3].pk, limit=2
    )
    assert hit_ids(rows) == [sent[2].pk, sent[1].pk]
    assert has_more


# --- a hit opens in context --------------------------------------------------------------------


def test_search_hit_opens_the_project_page_around_it(owner, project, client_member):
    for i in range(120):
        content = "the needle is here" if i == 9 else f"hay {i}"
        do_send_message(owner, project.pk, content)
    hit = Message.objects.get(content="the needle is here")
    text = client_member.get("/search", {"q": "needle"}).text
    link = f"/projects/{project.pk}/?around={hit.seq}#m-{hit.seq}"
    assert f'class="hit-body" href="{link}"' in text

    page = client_member.get(link.split("#")[0]).text
    # An older page of history holding the hit, the hit highlighted.
    assert re.search(rf'class="msg[^"]*msg-highlight[^"]*" id="m-{hit.seq}"', page)
    assert "the needle is here" in page
    assert f'id="m-{120}"' not in page


# --- PostgreSQL: the GIN index at 100,000 messages -------------------------------------------

PG_PROJECTS = 10
PG_PER_PROJECT = 10_000  # 100,000 messages in all
RARE_EVERY = 3_333  # "kumquat": 3 messages per project
MEDIUM_EVERY = 100  # "quarterly": 1 % of messages
OLD_UNTIL = 1_000  # "bygone": in every message of each project's first 1,000 only


@pytest.fixture
def hundred_thousand(owner, member):
    """100,000 messages over 10 projects (the member in half of them), analyzed."""
    projects = []
    for i in range(PG_PROJECTS):
        project = do_create_project(owner, name=f"bulk {i}")
        if i % 2 == 0:
            do_join_project(member, project.pk)
        projects.append(project)
    for project in projects:
        rows = []
        for n in range(1, PG_PER_PROJECT + 1):
            content = PHRASES[(n * 7 + project.pk) % len(PHRASES)]
            if n % MEDIUM_EVERY == 0:
                content += " Quarterly numbers are in."
            if n % RARE_EVERY == 0:
                content += " Who brought the kumquat?"
            if n <= OLD_UNTIL:
                content += " In bygone days."
            rows.append(
                Message(project=project, author=owner, content=content, seq=n, changed_seq=n)
            )
        Message.objects.bulk_create(rows, batch_size=5_000)
    Project.objects.filter(pk__in=[p.pk for p in projects]).update(seq=PG_PER_PROJECT)
    assert Message.objects.count() == PG_PROJECTS * PG_PER_PROJECT
    with connection.cursor() as cursor:
        # Statistics of the indexed expression are what let the planner see
        # how rare a word is.
        cursor.execute("ANALYZE chat_message")
        cursor.execute("ANALYZE projects_project")
        cursor.execute("ANALYZE projects_membership")
    return projects


def explain_search(user, query, **kwargs):
    """Run the real search and return (its hits, the plan of the SQL it sent)."""
    with CaptureQueriesContext(connection) as captured:
        rows, _ = search_messages(user, query, **kwargs)
    (sql,) = [q["sql"] for q in captured.captured_queries if "chat_message" in q["sql"]]
    with connection.cursor() as cursor:
        # Parameters are bound client-side, so this is the statement the
        # server planned.
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return rows, plan


def assert_reads_hits_through_the_fulltext_index(plan):
    assert "Bitmap Index Scan on idx_message_content_fulltext" in plan, plan
    assert "Seq Scan on chat_message" not in plan, plan
    # The trap chat/search.py avoids: reading the newest rows first through
    # an ordered index and computing to_tsvector() on each until 50 match.
    assert not re.search(r"Index Scan (Backward )?using \w+ on chat_message", plan), plan


# Words of every frequency, with how many hits each of the member's projects has.
WORDS = [
    ("kumquat", PG_PER_PROJECT // RARE_EVERY),  # 0.03 %
    ("quarterly", PG_PER_PROJECT // MEDIUM_EVERY),  # 1 %
    ("deploy", PG_PER_PROJECT // 20),  # a demo phrase: 5 %
    ("bygone", OLD_UNTIL),  # 10 %, all of them old
]


@pytest.mark.postgres
def test_search_uses_the_fulltext_index_at_100k_messages(hundred_thousand, member):
    # One 100,000-row fixture for every word (building it takes seconds).
    mine = {p.pk for p in hundred_thousand[::2]}
    for word, hits_per_project in WORDS:
        rows, plan = explain_search(member, word, limit=50)
        assert_reads_hits_through_the_fulltext_index(plan)
        assert len(rows) == min(50, len(mine) * hits_per_project), word
        assert {m.project_id for m in rows} <= mine, word
        assert hit_ids(rows) == sorted(hit_ids(rows), reverse=True), word
    # The newest of the old hits comes first, though 9,000 newer messages per
    # project do not match.
    newest = Message.objects.filter(project_id__in=mine, content__contains="bygone")
    rows, _ = search_messages(member, "bygone", limit=1)
    assert rows[0].pk == newest.latest("id").pk


@pytest.mark.postgres
def test_search_in_one_project_and_with_a_cursor_uses_the_fulltext_index(
    hundred_thousand, member
):
    project = hundred_thousand[0]
    first, _ = explain_search(member, "kumquat", project_id=project.pk, limit=2)
    rows, plan = explain_search(
        member, "kumquat", project_id=project.pk, before=first[-1].pk, limit=2
    )
    assert_reads_hits_through_the_fulltext_index(plan)
    assert [m.project_id for m in first + rows] == [project.pk] * 3
    assert hit_ids(first + rows) == sorted(hit_ids(first + rows), reverse=True)
