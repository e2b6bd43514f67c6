"""The project list under writes (docs/PERFORMANCE.md, "The project list under writes").

Usage:
    .venv/bin/python bench/list_bench.py [--users 200] [--projects 10]
        [--readers 100] [--rates 0,20,100] [--duration 15] [--out FILE]

The production HTTP server (granian's WSGI interface, one worker per core, as
`make serve`) on PostgreSQL + Redis, seeded with `seed_demo` (every user a
member of every project). For each message rate: a writer posts messages to
random projects at that rate, first alone for --duration seconds, then while
wrk (64 connections) reads `GET /api/projects` as --readers different users
(a cookie per request, `bench/cookies.lua`). The list's CPU per read is the
server's CPU of the second phase minus the first's, over the reads: what the
reads cost with the writes they have to follow. A `/healthz` calibration
opens the run. Needs wrk; loopback only, bounded by --duration.
"""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

from tests.live import LiveServer, cookie_header, login, make_live_env, run_manage  # noqa: E402

PASSWORD = "bench-pass-123"


class Writer(threading.Thread):
    """Posts messages at `rate` per second to random projects until stopped."""

    def __init__(self, sessions, project_ids, rate):
        super().__init__(daemon=True)
        self.sessions, self.project_ids, self.rate = sessions, project_ids, rate
        self.stopped = threading.Event()
        self.sent = self.failed = 0

    def run(self):
        if self.rate <= 0:
            return
        interval, next_at = 1.0 / self.rate, time.monotonic()
        while not self.stopped.is_set():
            session = random.choice(self.sessions)
            r = session.post(
                session.base_url + "/api/messages",
                json={"project_id": random.choice(self.project_ids), "content": "list bench"},
                headers={"X-CSRFToken": session.csrf, "Referer": session.base_url + "/"},
                timeout=10)
            if r.status_code == 201:
                self.sent += 1
            else:
                self.failed += 1
            next_at += interval
            self.stopped.wait(max(0.0, next_at - time.monotonic()))


def wrk(url, *, seconds, script=None, args=()):
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "30s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url, *(["--", *args] if args else [])], text=True,
                         capture_output=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    pct = dict(re.findall(r"^PCT (\d+) ([\d.]+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "requests": total, "p95": float(pct.get("95", "nan")),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--writers", type=int, default=10)
    parser.add_argument("--rates", default="0,20,100")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    env, close = make_live_env({"SEND_RATE_PER_USER": "0"})
    server = None
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    try:
        run_manage(env, "seed_demo", "--users", str(args.users), "--projects",
                   str(args.projects), "--messages", str(args.messages), "--password", PASSWORD,
                   timeout=1800)
        server = LiveServer(env, http="granian", workers=os.cpu_count() or 2).start()
        people = [login(server.url, f"user{i}", PASSWORD)
                  for i in range(1, args.readers + args.writers + 1)]
        readers, writers = people[:args.readers], people[args.readers:]
        project_ids = [p["id"] for p in
                       readers[0].get(server.url + "/api/projects?per_page=100").json()["items"]]
        with tempfile.NamedTemporaryFile("w", suffix=".cookies", delete=False) as f:
            f.write("\n".join(cookie_header(s) for s in readers) + "\n")
            cookies = f.name
        calibration = wrk(server.url + "/healthz", seconds=5,
                          script=ROOT / "bench/percentiles.lua")
        say(f"list bench: {args.users} users in {len(project_ids)} projects (each a member of "
            f"all), {args.readers} readers, wrk 64 connections, {args.duration} s a phase")
        say(f"calibration: /healthz {calibration['rps']:,.0f} req/s")
        say("")
        say("| messages/s | list reads/s | p95 | server CPU per read | sends | errors |")
        say("|---:|---:|---:|---:|---:|---:|")
        for rate in [float(r) for r in args.rates.split(",")]:
            writer = Writer(writers, project_ids, rate)
            writer.start()
            time.sleep(1)
            cpu0 = server.cpu_seconds()
            time.sleep(args.duration)
            cpu1 = server.cpu_seconds()
            reads = wrk(server.url + "/api/projects", seconds=args.duration,
                        script=ROOT / "bench/cookies.lua", args=[cookies])
            cpu2 = server.cpu_seconds()
            writer.stopped.set()
            writer.join()
            per_read = ((cpu2 - cpu1) - (cpu1 - cpu0)) / reads["requests"] * 1000
            say(f"| {rate:g} | {reads['rps']:,.0f} | {reads['p95']:.1f} ms | {per_read:.3f} ms "
                f"| {writer.sent} | {reads['errors'] + writer.failed} |")
    finally:
        if server is not None:
            server.stop()
        close()
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
