"""Report unused indexes and tables read by sequential scans (docs/OPERATIONS.md "index_report"; the guide's
Index Monitoring queries), each row with a hint of what to do about it.

The counters are PostgreSQL's cumulative statistics since the last reset, for
this database only; read them after the service has run under real load.
"""

from django.core.management.base import BaseCommand
from django.db import connection

from chat.management.commands.slow_queries import format_table, require_postgresql

# Below this many rows PostgreSQL reads a table sequentially whatever its
# indexes: a few pages are cheaper to scan than an index is to walk.
SMALL_TABLE_ROWS = 1000

UNUSED_INDEXES = """
SELECT s.schemaname, s.relname, s.indexrelname, s.idx_scan,
       pg_relation_size(s.indexrelid), pg_size_pretty(pg_relation_size(s.indexrelid)),
       i.indisunique OR i.indisprimary, t.n_live_tup
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
JOIN pg_stat_user_tables t ON t.relid = s.relid
WHERE s.idx_scan = 0
ORDER BY pg_relation_size(s.indexrelid) DESC, s.schemaname, s.relname, s.indexrelname
LIMIT %s
"""

SEQUENTIAL_TABLES = """
SELECT schemaname, relname, seq_scan, seq_tup_read, COALESCE(idx_scan, 0),
       seq_tup_read / seq_scan AS avg_seq_tup_read, n_live_tup
FROM pg_stat_user_tables
WHERE seq_scan > 0
ORDER BY seq_tup_read DESC
LIMIT %s
"""


def unused_index_hint(is_unique, live_rows):
    if is_unique:
        return "enforces uniqueness: keep it, even if no query reads through it"
    if live_rows < SMALL_TABLE_ROWS:
        return (f"table has {live_rows} rows, scanned sequentially anyway: "
                "judge again under real data")
    return "never scanned: confirm no query needs it (EXPLAIN), then drop it; it slows writes"


def sequential_table_hint(seq_scan, idx_scan, avg_rows, live_rows):
    if live_rows < SMALL_TABLE_ROWS:
        return "small table: sequential scans are the cheap plan here"
    if seq_scan > idx_scan:
        return (f"read mostly by sequential scans (~{avg_rows} rows each): find the "
                "query (slow_queries) and EXPLAIN it; it may need an index")
    return "mostly index scans: fine"


class Command(BaseCommand):
    help = (
        "Unused indexes (idx_scan = 0, with size) and tables read by sequential scans, "
        "from PostgreSQL's statistics, with a hint per row."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=20,
                            help="rows per section (default 20)")

    def handle(self, *args, limit, **options):
        require_postgresql("index_report")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT to_char(stats_reset AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
                "FROM pg_stat_database WHERE datname = current_database()"
            )
            row = cursor.fetchone()
            since = f"{row[0]} UTC" if row and row[0] else "the database was created"
            cursor.execute(UNUSED_INDEXES, [limit])
            unused = cursor.fetchall()
            cursor.execute(SEQUENTIAL_TABLES, [limit])
            sequential = cursor.fetchall()

        database = connection.settings_dict["NAME"]
        self.stdout.write(f'Index report for database "{database}" (statistics since {since})')
        self.stdout.write("")
        self.stdout.write("Unused indexes (idx_scan = 0):")
        if unused:
            self.stdout.write(format_table(
                ("table", "index", "scans", "size", "hint"),
                [
                    (self.qualified(schema, table), index, scans, size,
                     unused_index_hint(is_unique, live_rows))
                    for schema, table, index, scans, _, size, is_unique, live_rows in unused
                ],
                right=("scans", "size"),
            ))
        else:
            self.stdout.write("None: every index has been scanned.")
        self.stdout.write("")
        self.stdout.write("Tables by rows read in sequential scans:")
        if sequential:
            self.stdout.write(format_table(
                ("table", "seq_scan", "seq_tup_read", "idx_scan", "avg rows/seq", "live rows",
                 "hint"),
                [
                    (self.qualified(schema, table), seq_scan, seq_read, idx_scan, avg_rows,
                     live_rows, sequential_table_hint(seq_scan, idx_scan, avg_rows, live_rows))
                    for schema, table, seq_scan, seq_read, idx_scan, avg_rows, live_rows
                    in sequential
                ],
                right=("seq_scan", "seq_tup_read", "idx_scan", "avg rows/seq", "live rows"),
            ))
        else:
            self.stdout.write("None: no table has been read by a sequential scan.")

    @staticmethod
    def qualified(schema, table):
        return table if schema == "public" else f"{schema}.{table}"
