"""Replica reads and PgBouncer on loopback: stale reads, the fence, fallback, overhead.

Usage:
    .venv/bin/python bench/replica_bench.py [--tries 200] [--queries 2000]
        [--out bench/results/replicas.md]

Brings up a throwaway PostgreSQL primary, a streaming replica and PgBouncer in
transaction mode on free loopback ports (chatsite.scaleout.postgres, under
/tmp; stopped and removed at the end) and measures, with the service's own
router (chatsite/dbrouter.py; Django set up on that layout, Redis from
REDIS_URL with a key prefix of its own):

1. stale reads: `--tries` times, a row is inserted on the primary (autocommit)
   and read back at once -- straight from the replica (no fence), and through
   `replica_read` (the LSN fence): how many reads missed the row, and how many
   the fenced reads served from the replica;
2. the fence's cost per read: choose_alias() with no write in between (the
   remembered replayed LSN suffices: one cache GET) and right after a write
   (one more statement on the replica);
3. fallback: the replica is stopped; the time of the first read (the pool
   finds the replica gone) and of the next ones (skipped: straight to the
   primary); then started again, and how long until reads return to it;
4. PgBouncer: `--queries` one-statement transactions (SELECT of one row by
   primary key, no prepared statements) on one held connection, direct and
   through PgBouncer; and connect + query + close, direct and through it.
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatsite.scaleout.postgres import PostgresCluster, missing_binaries  # noqa: E402


def micros(seconds, count):
    return seconds / count * 1e6


def measure_stale(tries):
    from django.db import connections

    from chatsite.dbrouter import read_alias, replica_read

    primary = connections["default"]
    replica = connections["replica1"]

    def insert(i):
        with primary.cursor() as cursor:
            cursor.execute("INSERT INTO bench_rows (v) VALUES (%s) RETURNING id", [str(i)])
            return cursor.fetchone()[0]

    unfenced = 0
    for i in range(tries):
        new_id = insert(i)
        with replica.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_rows WHERE id = %s", [new_id])
            unfenced += cursor.fetchone()[0] == 0

    @replica_read
    def fenced_read(new_id):
        with connections[read_alias()].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_rows WHERE id = %s", [new_id])
            return read_alias(), cursor.fetchone()[0]

    fenced = on_replica = 0
    for i in range(tries):
        alias, found = fenced_read(insert(i))
        fenced += found == 0
        on_replica += alias != "default"
    return unfenced, fenced, on_replica


def measure_fence_cost(count):
    from django.db import connections

    from chatsite.dbrouter import choose_alias

    primary = connections["default"]
    choose_alias()
    started = time.perf_counter()
    for _ in range(count):
        choose_alias()
    idle = time.perf_counter() - started
    after_write, results = 0.0, []
    for i in range(count // 4):
        with primary.cursor() as cursor:
            cursor.execute("INSERT INTO bench_rows (v) VALUES (%s)", [f"w{i}"])
        started = time.perf_counter()
        results.append(choose_alias())
        after_write += time.perf_counter() - started
    replica_share = sum(alias != "default" for alias, _ in results) / len(results)
    return micros(idle, count), micros(after_write, count // 4), replica_share


def measure_fallback(cluster, reads=20):
    from django.db import connections

    from chatsite.dbrouter import read_alias, replica_read

    @replica_read
    def read():
        with connections[read_alias()].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_rows WHERE id = 1")
            cursor.fetchone()
        return read_alias()

    cluster.replica.wait_caught_up(cluster.primary)
    assert read() == "replica1", "the replica should serve before the stop"
    connections.close_all()  # as at the end of a request: the connection back to its pool
    cluster.replica.stop()
    started = time.perf_counter()
    first_alias = read()
    first = time.perf_counter() - started
    connections.close_all()
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        assert read() == "default"
        times.append(time.perf_counter() - started)
        connections.close_all()
    stopped_at = time.perf_counter()
    cluster.replica.start()
    cluster.replica.wait_streaming(cluster.primary)
    restarted = time.perf_counter() - stopped_at
    started = time.perf_counter()
    while read() != "replica1":
        connections.close_all()
        time.sleep(0.05)
        if time.perf_counter() - started > 60:
            raise RuntimeError("reads did not return to the replica")
    back = time.perf_counter() - started
    return first_alias, first, statistics.median(times), restarted, back


def measure_bouncer(cluster, count):
    import psycopg

    direct_url = cluster.primary.url("chat")
    bounced_url = cluster.bouncer.url("chat")
    results = {}
    for name, url in (("direct", direct_url), ("PgBouncer", bounced_url)):
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            for _ in range(200):  # warm up
                conn.execute("SELECT v FROM bench_rows WHERE id = %s", [1]).fetchone()
            started = time.perf_counter()
            for i in range(count):
                conn.execute("SELECT v FROM bench_rows WHERE id = %s", [1 + i % 100]).fetchone()
            held = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(count // 10):
            with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
                conn.execute("SELECT 1").fetchone()
        connecting = time.perf_counter() - started
        results[name] = (micros(held, count), micros(connecting, count // 10))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tries", type=int, default=200)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench/results/replicas.md"))
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")
    base = tempfile.mkdtemp(prefix="chat-pg-bench-")
    cluster = PostgresCluster(base, primary_port=0, replica_port=0, bouncer_port=0)
    try:
        started = time.perf_counter()
        cluster.up()
        up_seconds = time.perf_counter() - started
        primary_url, replica_url = cluster.urls()
        os.environ.update({
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DATABASE_URL": primary_url,
            "DATABASE_REPLICA_URLS": replica_url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "CACHE_KEY_PREFIX": f"replicabench{uuid.uuid4().hex[:8]}",
            "SECRET_KEY": "replica-bench-" + "k" * 40,
            "LOG_LEVEL": "ERROR",
        })
        cluster.primary.execute(
            "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, v text)", database="chat")
        cluster.primary.execute(
            "INSERT INTO bench_rows (v) SELECT g::text FROM generate_series(1, 1000) g",
            database="chat")
        cluster.replica.wait_caught_up(cluster.primary)
        import django

        django.setup()
        unfenced, fenced, on_replica = measure_stale(args.tries)
        idle_us, after_write_us, share = measure_fence_cost(args.queries)
        first_alias, first, later, restarted, back = measure_fallback(cluster)
        bouncer = measure_bouncer(cluster, args.queries)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 - Django may not be set up yet
            pass
        cluster.down(purge=True)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Replica reads and PgBouncer ({now})",
        "",
        f"`.venv/bin/python bench/replica_bench.py --tries {args.tries} --queries "
        f"{args.queries}`: throwaway primary + streaming replica + PgBouncer 1.18 on "
        f"loopback, up in {up_seconds:.1f} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| stale: insert, then read the replica at once (no fence) | {unfenced} of "
        f"{args.tries} |",
        f"| stale: insert, then read through `replica_read` (LSN fence) | {fenced} of "
        f"{args.tries} |",
        f"| fenced reads served by the replica (the rest: the primary) | {on_replica} of "
        f"{args.tries} |",
        f"| fence cost per read, no write since the last (one cache GET) | {idle_us:.0f} µs |",
        f"| fence cost per read right after a write (+ replayed-LSN statement) | "
        f"{after_write_us:.0f} µs, replica chosen {share:.0%} |",
        f"| replica stopped: first read (served by {first_alias}) | {first * 1000:.0f} ms |",
        f"| replica stopped: later reads (skipped, primary) | {later * 1000:.2f} ms |",
        f"| replica restarted and streaming after | {restarted:.1f} s |",
        f"| reads back on the replica after it streamed | {back:.1f} s |",
        f"| one-row SELECT on a held connection, direct | {bouncer['direct'][0]:.0f} µs |",
        f"| the same through PgBouncer (transaction mode) | {bouncer['PgBouncer'][0]:.0f} µs |",
        f"| connect + SELECT 1 + close, direct | {bouncer['direct'][1]:.0f} µs |",
        f"| the same through PgBouncer | {bouncer['PgBouncer'][1]:.0f} µs |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
