"""The targets run (docs/PERFORMANCE.md, "The targets, where we stand"): the production server on PostgreSQL + Redis, locust on the same box.

Usage:
    .venv/bin/python bench/loadtest_targets.py [--users 500] [--projects 25]
        [--duration 60] [--message-rate 120] [--workers 2] [--steady]
        [--think-time MIN,MAX] [--me-sockets] [--http-workers N] [--http-threads N]
        [--csv PREFIX] [--metrics FILE] [--extra KEY=VALUE ...]

Starts `make serve`'s layout (HTTP on granian's WSGI interface, sockets on
`uvicorn chatsite.asgi`, one worker per core each) on a fresh database, seeds
the load-test users with `seed_demo --loadtest`, and runs `manage.py loadtest`,
which prints the targets tables. Loopback only; bounded by --duration.
"""

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

from tests.live import LiveServer, free_port, make_live_env, run_manage  # noqa: E402

PASSWORD = "load-pass-123"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--projects", type=int, default=25)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--message-rate", type=float, default=120)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--http-workers", type=int, default=None,
                        help="granian workers (default: --workers)")
    parser.add_argument("--http-threads", type=int, default=8,
                        help="granian blocking threads per worker (make serve's HTTP_THREADS)")
    parser.add_argument("--spawn-rate", type=int, default=50)
    parser.add_argument("--think-time", default=None, help="MIN,MAX seconds between HTTP tasks")
    parser.add_argument("--ws-users", default=None, help="users with a socket (loadtest's --ws-users)")
    parser.add_argument("--steady", action="store_true", help="steady-state latencies (loadtest's --steady)")
    parser.add_argument("--me-sockets", action="store_true",
                        help="every user also holds /ws/me/ (loadtest's --me-sockets)")
    parser.add_argument("--csv", metavar="PREFIX", default=None,
                        help="locust's CSV files (stats, per-second history) at PREFIX")
    parser.add_argument("--metrics", metavar="FILE", default=None,
                        help="save both servers' /metrics after the run to FILE")
    parser.add_argument("--extra", nargs="*", default=[], help="KEY=VALUE server settings")
    parser.add_argument("--layout", choices=["single", "cluster"], default="single",
                        help="cluster: a fresh PostgreSQL primary + replica behind PgBouncer "
                             "and a 3+3 Redis Cluster (make cluster's layout, ports 7121-7127 "
                             "and 7221-7223), stopped at the end (docs/SCALING.md)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.extra)
    stop_layout = None
    if args.layout == "cluster":
        layout_env, stop_layout = start_cluster_layout()
        extra = {**layout_env, **extra}
        print("layout:", " ".join(f"{k}={v}" for k, v in layout_env.items()), flush=True)
    try:
        run(args, extra)
    finally:
        if stop_layout is not None:
            stop_layout()


def start_cluster_layout():
    """make cluster's layout in a temporary directory: (its env, stop)."""
    import tempfile

    from chatsite.scaleout.postgres import PostgresCluster
    from chatsite.scaleout.redis_cluster import RedisClusterKit

    base = Path(tempfile.mkdtemp(prefix="chat-bench-layout-"))
    base.chmod(0o755)  # the PostgreSQL servers run as `postgres` when we are root
    postgres = PostgresCluster(base / "postgres", primary_port=7221, replica_port=7222,
                               bouncer_port=7223)
    redis = RedisClusterKit(base / "redis", range(7121, 7127), channel_layer_port=7127)

    def stop():
        redis.stop()
        postgres.down(purge=True)
        shutil.rmtree(base, ignore_errors=True)

    try:
        env = dict(postgres.up())
        redis.start()
        env.update(redis.env())
    except BaseException:
        stop()
        raise
    return env, stop


def run(args, extra):
    env, close = make_live_env(extra)
    server = sockets = None
    try:
        run_manage(env, "seed_demo", "--loadtest", "--users", str(args.users),
                   "--loadtest-projects", str(args.projects), "--messages", "2000",
                   "--password", PASSWORD, timeout=600)
        # make serve's layout: sockets on uvicorn, HTTP on granian (WSGI).
        # The socket server accepts the pages' origin (docs/REALTIME.md).
        page_port = free_port()
        sockets = LiveServer(env, workers=args.workers, extra_env={
            "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{page_port}"}).start()
        server = LiveServer(env, port=page_port, workers=args.http_workers or args.workers,
                            http="granian", threads=args.http_threads,
                            extra_env={"WS_PUBLIC_URL": sockets.ws_url}).start()
        calibration = healthz_calibration(server.url)
        http_before, sockets_before = server.cpu_seconds(), sockets.cpu_seconds()
        machine_before = machine_cpu()
        generator_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        cmd = [sys.executable, "manage.py", "loadtest", "--url", server.url,
               "--ws-url", sockets.ws_url,
               "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
               "--duration", str(args.duration), "--projects", str(args.projects),
               "--password", PASSWORD, "--message-rate", str(args.message_rate),
               "--quiet-locust"]
        if args.think_time:
            cmd += ["--think-time", args.think_time]
        if args.ws_users is not None:
            cmd += ["--ws-users", args.ws_users]
        if args.steady:
            cmd += ["--steady"]
        if args.me_sockets:
            cmd += ["--me-sockets"]
        if args.csv:
            cmd += ["--csv", args.csv]
        print("$", " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True,
                              timeout=args.duration + 600)
        elapsed = time.monotonic() - started
        busy, total = (after - start for after, start in zip(machine_cpu(), machine_before))
        print(proc.stdout)
        print(proc.stderr[-3000:], file=sys.stderr)
        http_cpu = server.cpu_seconds() - http_before
        sockets_cpu = sockets.cpu_seconds() - sockets_before
        cpu = http_cpu + sockets_cpu
        generator_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        generator = sum(getattr(generator_after, f) - getattr(generator_before, f)
                        for f in ("ru_utime", "ru_stime"))
        print(f"server CPU: {cpu:.1f} s over {elapsed:.0f} s = {cpu / elapsed * 100:.0f}% of one "
              f"core ({args.workers} workers); load average now {os.getloadavg()}")
        print(f"  of which HTTP (granian) {http_cpu:.1f} s, sockets (uvicorn) {sockets_cpu:.1f} s")
        rate = requests_per_second(proc.stdout)
        if rate:
            print(f"server CPU per request (server CPU ÷ (req/s × {elapsed:.0f} s)): "
                  f"{cpu / (rate * elapsed) * 1000:.2f} ms, HTTP server alone "
                  f"{http_cpu / (rate * elapsed) * 1000:.2f} ms")
        if calibration:
            print(f"calibration, same server before the load: {calibration}")
        print(f"load generator CPU (manage.py loadtest and locust): {generator:.1f} s = "
              f"{generator / elapsed * 100:.0f}% of one core")
        print(f"machine CPU (all processes, /proc/stat): {busy / total * 100:.0f}% busy of "
              f"{os.cpu_count()} cores over the whole run, ramp-up and drain included")
        errors = [line for srv in (server, sockets) for line in srv.output().splitlines()
                  if "Traceback" in line]
        print(f"server tracebacks: {len(errors)}")
        if args.metrics:
            save_metrics(args.metrics, server, sockets)
    finally:
        for srv in (server, sockets):
            if srv is not None:
                srv.stop()
        close()


def requests_per_second(report):
    """The measured requests/s of the targets table, or None."""
    match = re.search(r"Requests/sec\s*\|[^|]*\|\s*([\d.,]+)", report)
    return float(match.group(1).replace(",", "")) if match else None


def healthz_calibration(url, seconds=5):
    """/healthz through Django with wrk (64 connections) on the server about to be
    loaded: the box's speed today, printed beside the result (docs/PERFORMANCE.md)."""
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", f"{url}/healthz"],
                         text=True, capture_output=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return f"/healthz {float(match.group(1)):,.0f} req/s (wrk, 64 connections, {seconds} s)" if match else None


def machine_cpu():
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def save_metrics(path, *servers):
    """Both servers' Prometheus exposition (cache hit ratios, hot-path outcomes, hub counters)."""
    import urllib.request

    with open(path, "w") as out:
        for srv in servers:
            with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as response:
                out.write(f"# --- {srv.url}/metrics\n")
                out.write(response.read().decode())
    print(f"metrics saved to {path}")


if __name__ == "__main__":
    main()
