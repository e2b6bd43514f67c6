#!/usr/bin/env python
"""The cost of the sidebar's socket: one project of MEMBERS members, all
holding /ws/me/, side by side with the same load without it.

    .venv/bin/python bench/me_bench.py                       # ~2 minutes
    .venv/bin/python bench/me_bench.py --members 500 --rates 10 50 --duration 10

Production shape on loopback (DATABASE_URL, REDIS_URL; defaults below): a
fresh database (tests/live.py make_live_env), one uvicorn worker
(chatsite.asgi). For each variant and rate a fresh server starts, the sockets
open, then one driver posts messages over HTTP (POST /api/messages, the real
send path; every tenth mentions a member) at the fixed rate for DURATION
seconds. Variants:

* calibration: no socket at all (the sends' own cost: HTTP, commit, publish);
* project: every member holds the project's socket (/ws/projects/{id}/), the
  page of one room;
* me: every member holds /ws/me/ only (the sidebar on another page);
* both: every member holds both (the project page with its sidebar).

Measured over the send window plus a drain: server CPU (utime+stime of the
uvicorn process group), CPU per message (and above calibration), frames/s
received by all clients together. Writes a markdown report to stdout and to
bench/results/me_bench.md.
"""

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
RESULTS = ROOT / "bench" / "results" / "me_bench.md"
VARIANTS = ("calibration", "project", "me", "both")
DRAIN_SECONDS = 2.0
# After the sockets open: the hubs start and the presence of 500 arrivals
# (a frame to every project socket per change) settles before measuring.
SETTLE_SECONDS = 8.0


def create_members(env, members):
    """Users m0000.. and a sender, all in one project; return its id."""
    from tests.live import PASSWORD, run_manage

    code = (
        "from accounts.models import User\n"
        "from projects.actions import do_create_project\n"
        "from projects.models import Membership\n"
        "from django.contrib.auth.hashers import make_password\n"
        f"pw = make_password({PASSWORD!r})\n"
        f"names = ['sender'] + ['m%04d' % i for i in range({members})]\n"
        "User.objects.bulk_create([User(username=n, email=n + '@example.com', password=pw)"
        " for n in names], ignore_conflicts=True)\n"
        "users = list(User.objects.filter(username__in=names))\n"
        "sender = next(u for u in users if u.username == 'sender')\n"
        "p = do_create_project(sender, name='Bench')\n"
        "Membership.objects.bulk_create([Membership(user=u, project=p) for u in users"
        " if u.pk != sender.pk])\n"
        "print(p.pk)\n"
    )
    out = run_manage(env, "shell", "-c", code)
    return int(out.stdout.strip().splitlines()[-1])


def sign_in_all(url, members):
    """Cookie headers of every member (API sign-in, in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.live import cookie_header, login

    names = [f"m{i:04d}" for i in range(members)]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda n: cookie_header(login(url, n)), names))


async def hold_sockets(server, project_id, cookies, paths, counts, ready, stop):
    from websockets.asyncio.client import connect

    async def one(cookie, path):
        ws = await connect(f"{server.ws_url}{path}", origin=server.url,
                           additional_headers={"Cookie": cookie}, max_size=2**24,
                           ping_interval=None, open_timeout=60)
        await ws.recv()  # hello
        return ws

    sockets = []
    for path in paths:
        for start in range(0, len(cookies), 50):
            sockets += await asyncio.gather(
                *(one(c, path) for c in cookies[start:start + 50]))

    async def read(ws):
        try:
            async for _frame in ws:
                counts[0] += 1
        except Exception:  # noqa: BLE001 - closed at the end
            pass

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    ready.set()
    while not stop.is_set():
        await asyncio.sleep(0.05)
    for ws in sockets:
        await ws.close()
    for task in readers:
        task.cancel()


def drive(session, project_id, rate, duration):
    """Post `rate` messages a second for `duration` seconds; return how many."""
    from tests.live import post_message

    sent, start = 0, time.monotonic()
    total = int(rate * duration)
    while sent < total:
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        text = f"bench {sent} @m0001" if sent % 10 == 0 else f"bench {sent}"
        response = post_message(session, project_id, text)
        if response.status_code != 201:
            raise RuntimeError(f"send failed: {response.status_code} {response.text[:200]}")
        sent += 1
    return sent


def run_variant(env, project_id, cookies, variant, rate, duration):
    from tests.live import LiveServer, login

    server = LiveServer(env).start()
    try:
        paths = {"calibration": [], "project": [f"/ws/projects/{project_id}/"],
                 "me": ["/ws/me/"], "both": [f"/ws/projects/{project_id}/", "/ws/me/"]}[variant]
        counts, ready, stop = [0], threading.Event(), threading.Event()
        loop_thread = threading.Thread(target=lambda: asyncio.run(
            hold_sockets(server, project_id, cookies, paths, counts, ready, stop)), daemon=True)
        loop_thread.start()
        if not ready.wait(300):
            raise RuntimeError("sockets did not open")
        session = login(server.url, "sender")
        time.sleep(SETTLE_SECONDS)
        counts[0] = 0
        cpu_before, started = server.cpu_seconds(), time.monotonic()
        sent = drive(session, project_id, rate, duration)
        time.sleep(DRAIN_SECONDS)
        elapsed = time.monotonic() - started
        cpu = server.cpu_seconds() - cpu_before
        frames = counts[0]
        stop.set()
        loop_thread.join(30)
        return {"variant": variant, "rate": rate, "sent": sent, "cpu": cpu,
                "cpu_per_msg_ms": 1000 * cpu / sent, "frames_per_s": frames / elapsed,
                "sockets": len(cookies) * len(paths)}
    finally:
        server.stop()


def report(results, args):
    calibration = {r["rate"]: r["cpu_per_msg_ms"] for r in results
                   if r["variant"] == "calibration"}
    lines = [
        f"# /ws/me/ cost: one project, {args.members} members", "",
        f"`bench/me_bench.py --members {args.members} --rates "
        f"{' '.join(map(str, args.rates))} --duration {args.duration}`, "
        f"{time.strftime('%Y-%m-%d')}, one uvicorn worker, PostgreSQL + Redis on loopback, "
        f"{os.cpu_count()} CPUs.", "",
        "| variant | sockets | msg/s | sent | server CPU s | CPU ms/msg | above calibration "
        "| frames/s received |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        above = r["cpu_per_msg_ms"] - calibration.get(r["rate"], 0.0)
        lines.append(
            f"| {r['variant']} | {r['sockets']} | {r['rate']} | {r['sent']} | {r['cpu']:.2f} "
            f"| {r['cpu_per_msg_ms']:.2f} | {above:.2f} | {r['frames_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 50])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    from tests.live import LiveServer, make_live_env

    env, close = make_live_env({
        "REDIS_URL": os.environ["REDIS_URL"], "SEND_RATE_PER_USER": "0",
        "WS_MAX_SOCKETS_PER_USER": "30", "LOG_LEVEL": "ERROR",
    })
    try:
        project_id = create_members(env, args.members)
        server = LiveServer(env).start()
        try:
            cookies = sign_in_all(server.url, args.members)
        finally:
            server.stop()
        results = []
        for rate in args.rates:
            for variant in args.variants:
                result = run_variant(env, project_id, cookies, variant, rate, args.duration)
                print(result, flush=True)
                results.append(result)
        text = report(results, args)
        print(text)
        RESULTS.write_text(text)
    finally:
        close()


if __name__ == "__main__":
    main()
