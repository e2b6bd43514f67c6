"""Search latency on 1,000,000 messages: GET /api/search against a live server.

Usage:
    .venv/bin/python bench/search_bench.py [--messages 1000000] [--queries 200]
        [--out bench/results/search.md]

Needs PostgreSQL (DATABASE_URL; defaults to the local service) and uses Redis
when REDIS_URL is set (defaults to the local one). Everything runs in a
throwaway database (tests/live.py make_live_env()), dropped at the end:

1. `seed_demo --messages N --projects 5` (the demo phrases, ~90 s for 1M);
2. words are added to some messages: "rare" words, each in 20 messages spread
   over the whole history, and "old" words, each in 60,000 messages (6 %) of
   the oldest 100,000 only -- a word that was popular long ago, the case where
   reading the newest messages first until 50 match walks most of the table
   (see the comment in chat/search.py);
3. ANALYZE, as autovacuum would have done on a live database;
4. one production server (uvicorn, one worker per core) and one signed-in
   client sending the queries one after another (latency, not throughput):
   common words of the demo phrases (each in 5-10 % of the messages), rare
   words, old words; the first results page of each (limit 50), newest first.

Prints a table of p50 / p95 / max per kind of word and the plan of one query
of each kind, and writes them to --out.
"""

import argparse
import datetime
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

from tests.live import LiveServer, login, make_live_env, run_manage  # noqa: E402

PASSWORD = "bench-pass-123"
# Words of seed_demo's phrases (stop words left out: they match nothing).
COMMON_WORDS = [
    "morning", "build", "deploy", "sync", "fix", "flaky", "test", "lunch",
    "dashboard", "review", "rotation", "release", "docs", "index", "query",
    "discussion", "coffee", "design", "question", "dependencies", "retro",
    "merged", "requests",
]
RARE_WORDS = [f"zephyr{i}" for i in range(100)]  # 20 messages each, anywhere
OLD_WORDS = [f"legacy{i}" for i in range(3)]  # 60,000 messages each, oldest 10 % only
RARE_COPIES = 20
OLD_COPIES = 60_000

ADD_WORDS = """
import random
from django.db import connection
rng = random.Random(8)
with connection.cursor() as cursor:
    cursor.execute("SELECT min(id), max(id) FROM chat_message")
    low, high = cursor.fetchone()
    old_high = low + (high - low) // 10
    for words, copies, top in ((RARE, RARE_COPIES, high), (OLD, OLD_COPIES, old_high)):
        for word in words:
            ids = rng.sample(range(low, top + 1), copies)
            cursor.execute(
                "UPDATE chat_message SET content = content || ' ' || %s WHERE id = ANY(%s)",
                [word, ids],
            )
    cursor.execute("VACUUM ANALYZE chat_message")
print("ok")
"""

# The SQL search_messages sends, explained as it is and with the plain
# ORDER BY id it avoids (chat/search.py).
EXPLAIN = """
from django.db import connection
from django.test.utils import CaptureQueriesContext
from accounts.models import User
from chat.search import search_messages
user = User.objects.get(username="demo")
FENCED = '("chat_message"."id" + 0) DESC'
for word in WORDS:
    with CaptureQueriesContext(connection) as captured:
        search_messages(user, word, limit=50)
    sql = [q["sql"] for q in captured.captured_queries if "chat_message" in q["sql"]][-1]
    assert FENCED in sql
    for order, text in (("id + 0", sql), ("id", sql.replace(FENCED, '"chat_message"."id" DESC'))):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN ANALYZE " + text)
            lines = [row[0] for row in cursor.fetchall()]
        access = [l.strip() for l in lines if " on chat_message" in l and "Scan" in l]
        total = [l for l in lines if l.startswith("Execution Time")][0].split(": ")[1]
        path = "; ".join(a.split("  (")[0].lstrip("-> ") for a in access)
        print(f"| {word} | ORDER BY {order} | {path} | {total} |")
"""


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200, help="common + rare queries")
    parser.add_argument("--old-queries", type=int, default=50)
    parser.add_argument("--out", default=str(ROOT / "bench/results/search.md"))
    args = parser.parse_args()

    started = time.monotonic()
    env, close = make_live_env()
    server = None
    try:
        t = time.monotonic()
        run_manage(env, "seed_demo", "--messages", str(args.messages), "--projects", "5",
                   "--users", "20", "--password", PASSWORD, timeout=1800)
        seed_seconds = time.monotonic() - t
        t = time.monotonic()
        code = (f"RARE = {RARE_WORDS!r}\nOLD = {OLD_WORDS!r}\nRARE_COPIES = {RARE_COPIES}\n"
                f"OLD_COPIES = {OLD_COPIES}\n" + ADD_WORDS)
        run_manage(env, "shell", "-c", code, timeout=900)
        words_seconds = time.monotonic() - t
        print(f"seeded {args.messages:,} messages in {seed_seconds:.0f} s, "
              f"rare words and ANALYZE in {words_seconds:.0f} s", flush=True)

        workers = os.cpu_count() or 1
        server = LiveServer(env, workers=workers).start()
        session = login(server.url, "demo", PASSWORD)

        rng = random.Random(7)
        half = args.queries // 2
        plan = (
            [("common", rng.choice(COMMON_WORDS)) for _ in range(half)]
            + [("rare", rng.choice(RARE_WORDS)) for _ in range(args.queries - half)]
            + [("old", rng.choice(OLD_WORDS)) for _ in range(args.old_queries)]
        )
        rng.shuffle(plan)
        for word in ("deploy", "zephyr1", "legacy1", "coffee"):  # warm up each worker
            for _ in range(workers * 2):
                session.get(f"{server.url}/api/search", params={"q": word}, timeout=30)

        latencies, hits, errors = {}, {}, 0
        for kind, word in plan:
            t = time.perf_counter()
            response = session.get(f"{server.url}/api/search", params={"q": word}, timeout=30)
            elapsed = (time.perf_counter() - t) * 1000
            if response.status_code != 200:
                errors += 1
                continue
            latencies.setdefault(kind, []).append(elapsed)
            hits.setdefault(kind, []).append(len(response.json()["items"]))

        explained = "\n".join(
            line for line in run_manage(
                env, "shell", "-c",
                f"WORDS = {['deploy', 'test', 'zephyr1', 'legacy1']!r}\n" + EXPLAIN,
            ).stdout.splitlines()
            if line.startswith("|")
        )
    finally:
        if server is not None:
            server.stop()
        close()

    rows = []
    order = ["common", "rare", "old"]
    every = [v for kind in order for v in latencies.get(kind, [])]
    for kind, values in [(k, latencies.get(k, [])) for k in order] + [("all", every)]:
        if not values:
            continue
        per_kind_hits = hits.get(kind) or [h for k in order for h in hits.get(k, [])]
        rows.append(
            f"| {kind} | {len(values)} | {statistics.median(per_kind_hits):.0f} "
            f"| {percentile(values, 0.50):.1f} | {percentile(values, 0.95):.1f} "
            f"| {max(values):.1f} |"
        )
    machine = subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()
    pg_version = subprocess.run(
        ["psql", os.environ["DATABASE_URL"], "-Atc", "SHOW server_version"],
        capture_output=True, text=True,
    ).stdout.strip() or "?"
    report = "\n".join([
        f"Search latency, `GET /api/search?q=<word>` (first page, 50 hits, newest first), "
        f"{args.messages:,} messages in 5 projects, signed in as `demo` (member of all).",
        "",
        "| words | queries | hits per page (median) | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Errors (non-200): {errors}.",
        "",
        "One query of each kind, EXPLAIN ANALYZE of the SQL `search_messages` sends"
        " (ORDER BY id + 0) and of the same SQL with a plain ORDER BY id:",
        "",
        "| word | order | chat_message read by | execution |",
        "|---|---|---|---|",
        explained,
        "",
        f"Run {datetime.date.today().isoformat()} on {machine}, {os.cpu_count()} cores, "
        f"PostgreSQL {pg_version}, one uvicorn server with {os.cpu_count()} workers, one "
        f"client sending one query at a time on the same machine; whole run "
        f"{time.monotonic() - started:.0f} s.",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
