"""Show the statements that cost the database most, from pg_stat_statements (docs/OPERATIONS.md, "slow_queries").

pg_stat_statements counts every statement of every server process, so this is
the view across all workers and machines; the slow-query log and the admin
performance page only see what one process ran.

The report shows statement shapes, never values: pg_stat_statements keeps each
SELECT/INSERT/UPDATE/DELETE with its constants replaced by $1, $2, ... (and
Django binds parameters server-side here anyway); the utility statements it
keeps as written (SAVEPOINT, SET, ...) carry no user data in this app.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection

ORDERS = {
    "total": "total_exec_time",
    "mean": "mean_exec_time",
    "max": "max_exec_time",
    "calls": "calls",
}

NOT_PRELOADED = """pg_stat_statements is not loaded by the PostgreSQL server.
Configure it once as a superuser and restart PostgreSQL:
  ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements';
    (or the line shared_preload_libraries = 'pg_stat_statements' in postgresql.conf)
  pg_ctlcluster <version> main restart   (or: systemctl restart postgresql)
then, in database "{database}":
  CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
.ci/run does all of this."""

NOT_CREATED = """pg_stat_statements is loaded, but the extension is not created in database "{database}".
Run as a superuser (or the database owner), in that database:
  CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"""


def require_postgresql(command, needs="PostgreSQL"):
    """Raise a CommandError (exit 1) naming what is needed unless on PostgreSQL."""
    if connection.vendor != "postgresql":
        raise CommandError(
            f"{command} needs {needs}; this database is {connection.display_name} "
            "(the embedded default). Set DATABASE_URL=postgres://... and run it again.",
            returncode=1,
        )


def format_table(headers, rows, right=()):
    """Return rows as aligned text columns; columns named in `right` align right."""
    cells = [list(headers)] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, value in enumerate(row):
            last = i == len(row) - 1
            if headers[i] in right:
                parts.append(value.rjust(widths[i]))
            else:
                parts.append(value if last else value.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def one_line(text, width):
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


class Command(BaseCommand):
    help = (
        "Top statements from pg_stat_statements for this database: calls, total, "
        "mean and max time, and the query. --reset then clears this database's statistics."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=10, help="how many (default 10)")
        parser.add_argument("--order", choices=sorted(ORDERS), default="total",
                            help="rank by total (default), mean or max time, or calls")
        parser.add_argument("--width", type=int, default=100,
                            help="characters of each query to show (default 100)")
        parser.add_argument("--reset", action="store_true",
                            help="after the report, reset this database's statistics")

    def handle(self, *args, limit, order, width, reset, **options):
        require_postgresql("slow_queries", "PostgreSQL with pg_stat_statements")
        if limit < 1:
            raise CommandError("--limit must be at least 1.")
        database = connection.settings_dict["NAME"]
        with connection.cursor() as cursor:
            if "pg_stat_statements" not in self.preloaded_libraries(cursor):
                raise CommandError(NOT_PRELOADED.format(database=database), returncode=1)
            if not self.extension_created(cursor):
                raise CommandError(NOT_CREATED.format(database=database), returncode=1)
            rows = self.top_statements(cursor, ORDERS[order], limit)
            since = self.statistics_since(cursor)
        self.stdout.write(
            f'pg_stat_statements of database "{database}", top {limit} by {order} '
            f"(last full reset: {since}):"
        )
        if rows:
            self.stdout.write(format_table(
                ("#", "calls", "total ms", "mean ms", "max ms", "rows", "query"),
                [
                    (rank, calls, f"{total:.1f}", f"{mean:.2f}", f"{peak:.2f}", rows_out,
                     one_line(query, width))
                    for rank, (calls, total, mean, peak, rows_out, query)
                    in enumerate(rows, start=1)
                ],
                right=("#", "calls", "total ms", "mean ms", "max ms", "rows"),
            ))
        else:
            self.stdout.write("No statements recorded yet.")
        if reset:
            try:
                with connection.cursor() as cursor:
                    # This database's statements only: others on the server
                    # keep their statistics.
                    cursor.execute(
                        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database "
                        "WHERE datname = current_database()), 0)"
                    )
            except DatabaseError as exc:
                raise CommandError(
                    f"Could not reset pg_stat_statements ({exc}). It takes a superuser, or "
                    "GRANT EXECUTE ON FUNCTION pg_stat_statements_reset TO <role>.",
                    returncode=1,
                ) from exc
            self.stdout.write(f'pg_stat_statements reset for database "{database}".')

    def preloaded_libraries(self, cursor):
        cursor.execute("SHOW shared_preload_libraries")
        return cursor.fetchone()[0]

    def extension_created(self, cursor):
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
        return cursor.fetchone() is not None

    def top_statements(self, cursor, order_column, limit):
        # PostgreSQL 13 renamed the *_time columns to *_exec_time.
        if connection.pg_version < 130000:
            order_column = order_column.replace("_exec_time", "_time")
            columns = "calls, total_time, mean_time, max_time, rows, query"
        else:
            columns = "calls, total_exec_time, mean_exec_time, max_exec_time, rows, query"
        cursor.execute(
            f"SELECT {columns} FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query NOT LIKE %s "
            f"ORDER BY {order_column} DESC LIMIT %s",
            ["%pg_stat_statements%", limit],
        )
        return cursor.fetchall()

    def statistics_since(self, cursor):
        # pg_stat_statements_info exists from PostgreSQL 14 on.
        if connection.pg_version < 140000:
            return "unknown"
        cursor.execute("SELECT to_char(stats_reset AT TIME ZONE 'UTC', "
                       "'YYYY-MM-DD HH24:MI:SS') FROM pg_stat_statements_info")
        row = cursor.fetchone()
        return f"{row[0]} UTC" if row and row[0] else "never"
