"""The hot path's one multi-key read on a single Redis and on a Redis Cluster.

Usage:
    .venv/bin/python bench/redis_cluster_bench.py [--redis redis://127.0.0.1:6379/13]
        [--dir /tmp/chat-bench-redis-cluster] [--rounds 5] [--reads 2000]

Starts a 3-master + 3-replica cluster on loopback (chatsite/scaleout/
redis_cluster.py, ports 7101-7106; stopped at the end), stores the seven keys
of a first-history-page read (a session, the project's version and page, an
access entry, the user's stamp and the user, one key missing) on both, and
times reading them back, client CPU and wall clock per read: one MGET on the
single Redis, ``multi_get`` on the cluster (one MGET per hash slot, written to
every shard before reading; chatsite/scaleout/redis_client.py), and redis-py's
``mget_nonatomic`` for comparison. Prints min and median over the rounds.
Then the bus: 200 changes, one at a time, from ``SPUBLISH`` to a hub of this
process (chat/realtime/cluster_bus.py), median and p95 (docs/SCALING.md,
"Redis Cluster").
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEYS = [":1:django.contrib.sessions.cached_dbabcdef123", ":1:v:project:42",
        ":1:hist:42:None:None:50", ":1:acc:7:42", ":1:ustamp:7", ":1:user:7", ":1:absent"]


def measure(read, rounds, reads):
    cpu, wall = [], []
    for _ in range(rounds):
        for _ in range(reads // 10):
            read()
        started_cpu, started = time.process_time(), time.perf_counter()
        for _ in range(reads):
            read()
        cpu.append((time.process_time() - started_cpu) / reads * 1e6)
        wall.append((time.perf_counter() - started) / reads * 1e6)
    cpu.sort()
    wall.sort()
    return cpu[0], cpu[len(cpu) // 2], wall[len(wall) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir())
                                             / "chat-bench-redis-cluster"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()

    import redis

    from chatsite.scaleout.redis_client import cluster_client, multi_get
    from chatsite.scaleout.redis_cluster import RedisClusterKit

    with RedisClusterKit(args.dir) as kit:
        single = redis.Redis.from_url(args.redis)
        cluster = cluster_client(kit.url)
        for client in (single, cluster):
            for key in KEYS[:-1]:
                client.set(key, b"x" * 200, ex=600)
        shards = {cluster.get_node_from_key(k).name for k in KEYS}
        assert multi_get(cluster, KEYS) == cluster.mget_nonatomic(KEYS) == single.mget(KEYS)
        print(f"{len(KEYS)} keys, {len(shards)} shards; µs per read, "
              f"{args.rounds} rounds of {args.reads}")
        print("| read | CPU min | CPU median | wall median |\n|---|---|---|---|")
        for name, read in (
            ("single Redis, one MGET", lambda: single.mget(KEYS)),
            ("cluster, multi_get", lambda: multi_get(cluster, KEYS)),
            ("cluster, redis-py mget_nonatomic", lambda: cluster.mget_nonatomic(KEYS)),
        ):
            cpu_min, cpu_median, wall_median = measure(read, args.rounds, args.reads)
            print(f"| {name} | {cpu_min:.0f} | {cpu_median:.0f} | {wall_median:.0f} |")
        single.delete(*KEYS)
        cluster.close()
        median, p95 = bus_latency(kit.url)
        print(f"SPUBLISH to hub: median {median:.2f} ms, p95 {p95:.2f} ms (200 changes)")


def bus_latency(url, changes=200):
    """ms from the start of an SPUBLISH to the hub's feed_raw: (median, p95)."""
    os.environ.update(DJANGO_SETTINGS_MODULE="chatsite.settings", REDIS_URL=url,
                      CHANNEL_REDIS_URLS="redis://127.0.0.1:6379/0", LOG_LEVEL="WARNING",
                      DATABASE_URL=f"sqlite:///{tempfile.gettempdir()}/chat-bench-bus.sqlite3")
    import django

    django.setup()
    from chat.realtime.bus import get_bus
    from chat.realtime.hub import get_registry

    bus = get_bus()

    class Hub:
        def __init__(self, project_id):
            self.project_id, self.loop, self.consumers = project_id, asyncio.get_running_loop(), set()
            self.arrived = asyncio.Event()

        def feed_raw(self, data):
            self.arrived.set()

        def request_catch_up(self):
            pass

    async def run():
        hubs = [Hub(pid) for pid in range(1, 7)]  # channels on every shard
        get_registry().hubs.update({h.project_id: h for h in hubs})
        for hub in hubs:
            await bus.subscribe(hub)
        took = []
        for i in range(changes):
            hub = hubs[i % len(hubs)]
            hub.arrived.clear()
            started = time.perf_counter()
            await asyncio.to_thread(bus.publish, hub.project_id, b"{}")
            await hub.arrived.wait()
            took.append((time.perf_counter() - started) * 1000)
        await bus._subscriber(asyncio.get_running_loop()).close()
        took.sort()
        return took[len(took) // 2], took[int(len(took) * 0.95)]

    return asyncio.run(run())


if __name__ == "__main__":
    main()
