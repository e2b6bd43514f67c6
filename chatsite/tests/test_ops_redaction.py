"""What operators see of statements: shapes only, never message text or session keys.

The admin performance page (any staff user) and the slow-query log show
statements as chatsite.db.normalize_sql makes them; a signed-in user's session
key and a private message's text appear in neither.
"""

import logging
import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings

from chatsite.db import SLOWEST_QUERIES, normalize_sql, params_hash


@pytest.fixture
def secret_text():
    return f"classified-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def every_statement_kept(monkeypatch):
    """Keep every statement in the slowest list, so none can hide by being fast."""
    monkeypatch.setattr(SLOWEST_QUERIES, "size", 100_000)
    SLOWEST_QUERIES.clear()
    yield
    SLOWEST_QUERIES.clear()


def sign_in_and_send(member, project, text):
    """Sign in (a django_session INSERT), send one message; return the session key."""
    client = Client()
    response = client.post(
        "/api/auth/login", {"username": member.username, "password": "pw-secret-1"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    response = client.post(
        "/api/messages", {"project_id": project.pk, "content": text},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert len(session_key) >= 32
    return session_key


def test_performance_page_shows_no_message_text_or_session_key(
    admin_client, member, project, secret_text, every_statement_kept
):
    session_key = sign_in_and_send(member, project, secret_text)
    with connection.cursor() as cursor:
        # A statement with the values inlined as literals is scrubbed too.
        cursor.execute(f"SELECT '{secret_text}' AS content, 987654321 AS amount")

    response = admin_client.get("/admin/performance/")

    assert response.status_code == 200
    page = response.content.decode()
    assert secret_text not in page
    assert session_key not in page
    assert "987654321" not in page
    # The statements are there, as shapes.
    shapes = [entry["query"] for entry in response.context["slowest"]]
    assert any('INSERT INTO "django_session"' in shape for shape in shapes)
    assert any('INSERT INTO "chat_message"' in shape for shape in shapes)
    assert "SELECT ? AS content, ? AS amount" in shapes


def test_slow_query_log_carries_no_message_text_or_session_key(
    member, project, secret_text, caplog
):
    with override_settings(SLOW_QUERY_THRESHOLD=0), \
            caplog.at_level(logging.WARNING, logger="chatsite.db"):
        session_key = sign_in_and_send(member, project, secret_text)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT '{secret_text}' AS content, 987654321 AS amount")

    records = [r for r in caplog.records if getattr(r, "event", None) == "slow_query"]
    queries = [r.query for r in records]
    assert any('INSERT INTO "django_session"' in query for query in queries)
    assert any('INSERT INTO "chat_message"' in query for query in queries)
    for record in records:
        # The message and every extra field a JSON log line would carry.
        logged = record.getMessage() + repr(vars(record))
        assert secret_text not in logged
        assert session_key not in logged
        assert "987654321" not in logged


def test_repeated_parameters_share_a_hash_and_different_ones_do_not(secret_text):
    assert params_hash([secret_text, 1]) == params_hash([secret_text, 1])
    assert params_hash([secret_text, 1]) != params_hash([secret_text, 2])
    assert secret_text not in params_hash([secret_text, 1])
    assert params_hash(None) == params_hash([]) == "-"


@pytest.mark.parametrize("sql, shape", [
    ('SELECT "t"."id" FROM "t" WHERE "t"."name" = %s AND "t"."n" IN (%s, %s, %s)',
     'SELECT "t"."id" FROM "t" WHERE "t"."name" = ? AND "t"."n" IN (?, ...)'),
    ("UPDATE t SET a = 'it''s secret', b = 42, c = -1.5e3 WHERE T2.id = $1",
     "UPDATE t SET a = ?, b = ?, c = -? WHERE T2.id = ?"),
    ("SELECT E'a \\' secret', $$dollar secret$$, $x$tagged secret$x$ /* secret */ -- secret",
     "SELECT ?, ..."),
    ("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (%s, %s)",
     "INSERT INTO t (a, b) VALUES (?, ...), ..."),
    ("SELECT 1 WHERE x LIKE %s ESCAPE '\\' AND y = 'unterminated secret",
     "SELECT ? WHERE x LIKE ? ESCAPE ? AND y = ?"),
])
def test_normalize_sql_keeps_identifiers_and_replaces_every_value(sql, shape):
    assert normalize_sql(sql) == shape


def test_a_profiled_request_logs_no_message_text(make_user, project, secret_text, caplog):
    from conftest import login_client
    from projects.actions import do_join_project

    staff = make_user("profiled", is_staff=True)
    do_join_project(staff, project.pk)
    client = login_client(staff)
    with caplog.at_level(logging.INFO, logger="chatsite.profiling"):
        response = client.post(
            "/api/messages?profile=1", {"project_id": project.pk, "content": secret_text},
            content_type="application/json",
        )
    assert response.status_code == 201
    profiles = [r for r in caplog.records if getattr(r, "event", None) == "request_profile"]
    assert profiles
    for record in profiles:
        assert secret_text not in record.getMessage() + repr(vars(record))
