"""The execute wrapper: slow-query lines, SQL echo, query-type metrics, slowest list."""

import logging

import pytest
from django.db import connection
from django.test import override_settings
from prometheus_client import REGISTRY

from chatsite.db import SlowestQueries, install_query_observer, observe_query, query_type

# Longer than both previews, in plain single spaces so truncation is exact.
LONG_QUERY = "SELECT " + ", ".join(f"{n} AS column_{n:03d}" for n in range(40))
LONG_PARAM = "p" * 300


def slow_query_records(caplog):
    return [r for r in caplog.records if getattr(r, "event", None) == "slow_query"]


def test_the_wrapper_is_on_the_connection_once_and_outermost(db):
    connection.ensure_connection()
    install_query_observer(connection=connection)
    install_query_observer(connection=connection)
    assert connection.execute_wrappers.count(observe_query) == 1
    assert connection.execute_wrappers[0] is observe_query


def test_a_query_over_the_threshold_logs_one_truncated_line(db, caplog):
    sql = LONG_QUERY + ", %s AS long_param"
    with override_settings(SLOW_QUERY_THRESHOLD=0), \
            caplog.at_level(logging.WARNING, logger="chatsite.db"):
        with connection.cursor() as cursor:
            cursor.execute(sql, [LONG_PARAM])
    records = slow_query_records(caplog)
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    # The statement's shape: its literals and its parameter are all "?".
    shape = "SELECT " + ", ".join(f"? AS column_{n:03d}" for n in range(40))
    assert record.query == shape[:200]
    assert len(record.params_hash) == 12 and not hasattr(record, "params")
    message = record.getMessage()
    assert message.startswith("event=slow_query duration=")
    assert f"query={shape[:200]} params_hash={record.params_hash}" in message
    assert "ppp" not in message
    assert "\n" not in message


def test_a_fast_query_logs_nothing(db, caplog):
    with override_settings(SLOW_QUERY_THRESHOLD=10), \
            caplog.at_level(logging.DEBUG, logger="chatsite.db"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    assert not slow_query_records(caplog)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "sql"]


def test_sql_echo_logs_every_statement(db, caplog):
    with override_settings(SQL_ECHO=True, SLOW_QUERY_THRESHOLD=10), \
            caplog.at_level(logging.INFO, logger="chatsite.db"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.execute("SELECT %s", [2])
    echoed = [r for r in caplog.records if getattr(r, "event", None) == "sql"]
    assert [r.getMessage().split(" query=")[1] for r in echoed] == [
        "SELECT 1 params=None", "SELECT %s params=[2]"
    ]


def test_statements_are_timed_by_kind(member):
    def count(kind):
        return REGISTRY.get_sample_value(
            "database_query_duration_seconds_count", {"query_type": kind}) or 0.0

    before = {kind: count(kind) for kind in ("select", "insert", "update", "delete")}
    from accounts.models import User

    user = User.objects.create_user("timed", "timed@example.com", "pw-secret-1")
    User.objects.filter(pk=user.pk).update(first_name="T")
    list(User.objects.filter(pk=user.pk))
    User.objects.filter(pk=user.pk).delete()
    for kind in before:
        assert count(kind) > before[kind], kind


@pytest.mark.parametrize("sql, kind", [
    ("SELECT 1", "select"), ("  insert into t values (1)", "insert"),
    ("UPDATE t SET a = 1", "update"), ("DELETE FROM t", "delete"),
    ("SAVEPOINT s1", "other"), ("WITH x AS (SELECT 1) SELECT * FROM x", "other"),
])
def test_query_type(sql, kind):
    assert query_type(sql) == kind


def test_slowest_queries_keeps_the_slowest_first():
    slowest = SlowestQueries(size=3, window=60)
    for duration in (0.01, 0.5, 0.02, 0.3, 0.001, 0.4):
        slowest.record(duration, f"SELECT {duration}", None, "default")
    assert [e["duration_ms"] for e in slowest.snapshot()] == [500.0, 400.0, 300.0]


def test_slowest_queries_forgets_old_windows():
    slowest = SlowestQueries(size=2, window=0.0)
    slowest.record(1.0, "SELECT old", None, "default")
    slowest.window = 1000.0
    slowest._started -= 5000  # two windows ago
    slowest.record(0.001, "SELECT new", None, "default")
    assert [e["query"] for e in slowest.snapshot()] == ["SELECT new"]


def test_bulk_parameters_are_previewed_cheaply():
    from chatsite.db import one_line

    preview = one_line(list(range(100_000)), 100)
    assert preview.startswith("[0, 1, 2") and len(preview) <= 100
