"""manage.py slow_queries and index_report: real rows on PostgreSQL, a clear exit 1 elsewhere."""

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from chat.management.commands import slow_queries

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def as_sqlite(db, monkeypatch):
    """Run on SQLite, or make the PostgreSQL connection look like SQLite."""
    if connection.vendor != "sqlite":
        monkeypatch.setattr(connections["default"], "vendor", "sqlite")
        monkeypatch.setattr(connections["default"], "display_name", "SQLite")


@pytest.fixture
def pg_stat_statements(db):
    """The extension in the test database (template1 has it where .ci/run ran)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_preload_libraries")
        if "pg_stat_statements" not in cursor.fetchone()[0]:
            pytest.fail("pg_stat_statements is not preloaded: run .ci/run's set-up "
                        "(ALTER SYSTEM SET shared_preload_libraries + restart)")
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


@pytest.mark.parametrize("command", ["slow_queries", "index_report"])
def test_on_sqlite_the_command_says_what_it_needs_and_exits_1(as_sqlite, command):
    with pytest.raises(CommandError) as raised:
        call_command(command, stdout=StringIO())
    assert raised.value.returncode == 1
    assert f"{command} needs PostgreSQL" in str(raised.value)
    assert "DATABASE_URL=postgres://" in str(raised.value)


def test_manage_py_on_sqlite_exits_1_with_the_message(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/empty.sqlite3"
    result = subprocess.run([sys.executable, "manage.py", "slow_queries"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "slow_queries needs PostgreSQL with pg_stat_statements" in result.stderr


@pytest.mark.postgres
def test_slow_queries_prints_the_top_statements(pg_stat_statements, owner, project, send):
    send(owner, project, 3)
    out = StringIO()
    call_command("slow_queries", "--limit", "5", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f'pg_stat_statements of database "{connection.settings_dict["NAME"]}", top 5 by total')
    assert lines[1].split() == ["#", "calls", "total", "ms", "mean", "ms", "max", "ms", "rows",
                                "query"]
    rows = lines[2:]
    assert 1 <= len(rows) <= 5
    assert rows[0].split()[0] == "1"
    calls = [int(row.split()[1]) for row in rows]
    assert all(c >= 1 for c in calls)


@pytest.mark.postgres
def test_slow_queries_orders_by_mean_and_resets(pg_stat_statements, owner, project, send):
    send(owner, project, 2)
    out = StringIO()
    call_command("slow_queries", "--order", "mean", "--limit", "3", "--reset", stdout=out)
    text = out.getvalue()
    assert "top 3 by mean" in text
    assert text.rstrip().endswith(
        f'pg_stat_statements reset for database "{connection.settings_dict["NAME"]}".')


@pytest.mark.postgres
def test_slow_queries_says_how_to_preload_the_library(db, monkeypatch):
    monkeypatch.setattr(slow_queries.Command, "preloaded_libraries", lambda self, cursor: "")
    with pytest.raises(CommandError) as raised:
        call_command("slow_queries", stdout=StringIO())
    assert raised.value.returncode == 1
    message = str(raised.value)
    assert "shared_preload_libraries = 'pg_stat_statements'" in message
    assert "restart" in message and "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" in message


@pytest.mark.postgres
def test_slow_queries_says_how_to_create_the_extension(db, monkeypatch):
    monkeypatch.setattr(slow_queries.Command, "preloaded_libraries",
                        lambda self, cursor: "pg_stat_statements")
    monkeypatch.setattr(slow_queries.Command, "extension_created", lambda self, cursor: False)
    with pytest.raises(CommandError) as raised:
        call_command("slow_queries", stdout=StringIO())
    assert raised.value.returncode == 1
    assert "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" in str(raised.value)


@pytest.mark.postgres
def test_index_report_lists_unused_indexes_and_sequential_tables(owner, project, send):
    send(owner, project, 3)
    out = StringIO()
    call_command("index_report", stdout=out)
    text = out.getvalue()
    assert text.startswith(f'Index report for database "{connection.settings_dict["NAME"]}"')
    unused = text.split("Unused indexes (idx_scan = 0):\n")[1].split("\n\n")[0].splitlines()
    assert unused[0].split()[:4] == ["table", "index", "scans", "size"]
    # A fresh test database has indexes nothing has read through yet, the
    # named ones of docs/ARCHITECTURE.md §2 among them.
    names = {line.split()[1] for line in unused[1:]}
    assert names, text
    assert all(line.split()[2] == "0" for line in unused[1:])
    assert "Tables by rows read in sequential scans:" in text
