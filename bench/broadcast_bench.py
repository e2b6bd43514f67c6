#!/usr/bin/env python
"""Broadcast benchmark: our batched hub against a naive per-message group_send.

    .venv/bin/python bench/broadcast_bench.py            # ~3 minutes
    .venv/bin/python bench/broadcast_bench.py --rates 100 --duration 5 --clients 50

Needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL; defaults below). Everything
runs on 127.0.0.1: a fresh database (tests/live.py make_live_env), Redis
database BENCH_REDIS_DB (default 5, so the live tests' FLUSHDB of db 1 cannot
touch it), one uvicorn worker per variant.

For each variant and rate, a fresh server is started, CLIENTS sockets (one
signed-in user) join one project, and a driver process injects messages at the
target rate for DURATION seconds. The driver is the same in both variants: it
stores each message through the real send path, chat.actions.do_send_message
(transaction, project number, on_commit), with the send time in the content.
Only the fan-out differs:

* batched  (chatsite.asgi): on commit the real broadcast_on_commit publishes to
  Redis pub/sub; each process's ProjectHub orders, batches (<= 10 messages,
  <= 100 ms), encodes once and queues the same text to every socket.
* baseline (bench.baseline.asgi): on commit the driver calls
  channels_redis.core.RedisChannelLayer.group_send once per message; every
  consumer encodes it and sends one frame per message.

Measured from the first send until the last receipt (drain: at most DRAIN
seconds after the last send): deliveries/s (bench messages received, summed
over clients), frames/s, send-to-receive latency percentiles (driver's clock
before the send transaction to the client's clock at receipt, same machine),
server CPU (utime+stime of the uvicorn process group from /proc), lost
(= clients x sent - received). Writes a markdown report to stdout and to
bench/results/broadcast.md.
"""

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
RESULTS = ROOT / "bench" / "results" / "broadcast.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READER, SENDER = "bench_reader", "bench_sender"

VARIANTS = {
    "batched": {
        "label": "batched hub (ours)",
        "app": "chatsite.asgi:application",
        "settings": "chatsite.settings",
    },
    "baseline": {
        "label": "per-message group_send (baseline)",
        "app": "bench.baseline.asgi:application",
        "settings": "bench.baseline.settings",
    },
}


# --- the driver: a separate process with Django set up on the live database ----------


def drive(args):
    """The injection driver (a process of its own); reports as one JSON line."""
    if args.inject == "publish":
        return drive_publish(args)
    return drive_send(args)


def drive_publish(args):
    """Inject at a fixed rate straight onto each variant's bus, without the database.

    batched: the event broadcast_on_commit would publish, through the real
    chat.realtime.notify.publish, with consecutive changed_seq after the project's
    number (so the hub never needs the database); afterwards the project's
    number is moved to the last one injected. baseline: one group_send per
    message, each a task of its own (issued in order, not awaited in turn).
    """
    import django

    django.setup()
    import orjson
    from django.utils import timezone

    from accounts.models import User
    from chat.realtime import notify
    from projects.models import Project

    user = User.objects.get(username=SENDER)
    base = Project.objects.get(pk=args.project).seq
    rate, count = args.rate, int(args.rate * args.duration)

    def message(i, content):
        cs = base + 1 + i
        return {
            "id": 10**9 + cs, "project_id": args.project, "seq": cs, "changed_seq": cs,
            "user": {"id": user.pk, "username": user.username}, "content": content,
            "created_at": timezone.now().isoformat(), "edited_at": None, "deleted": False,
            "client_msg_id": None,
        }

    async def run():
        loop = asyncio.get_running_loop()
        pending = set()
        if args.variant == "baseline":
            from channels.layers import get_channel_layer

            layer = get_channel_layer()
            group = f"project.{args.project}"

            def inject(m):
                task = loop.create_task(layer.group_send(group, {"type": "chat.message", "message": m}))
                pending.add(task)
                task.add_done_callback(pending.discard)
        else:
            def inject(m):
                notify.publish(args.project, orjson.dumps({"kind": "change", "message": m}))

        # Warm up the connections outside the measurement (not bench messages).
        if args.variant == "baseline":
            inject({"content": "warmup", "changed_seq": 0})
        else:
            notify.notify_typing(args.project, user)
        await asyncio.sleep(0.5)
        print("READY", flush=True)
        if not await loop.run_in_executor(None, sys.stdin.readline):
            return None  # the bench went away
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        start, t_first, lag = loop.time(), time.time(), 0.0
        for i in range(count):
            due = start + i / rate
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                lag = max(lag, now - due)
            inject(message(i, f"{args.tag} {i} {time.time():.6f}"))
        if pending:
            await asyncio.wait(pending)
        t_last = time.time()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "sent": count, "errors": 0, "t_first": t_first, "t_last": t_last,
            "mean_send_ms": float("nan"), "worst_lag_ms": 1000 * lag,
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        }

    result = asyncio.run(run())
    if result is None:
        return
    if args.variant == "batched":
        Project.objects.filter(pk=args.project).update(seq=base + count)
    print(json.dumps(result), flush=True)


def drive_send(args):
    """Inject messages through do_send_message at a fixed rate.

    SENDERS threads share one schedule (message i is due at i / rate), so a
    slow commit does not stall the rate; the project row lock still orders the
    commits. With --synchronous-commit off (the default) the driver's sessions
    do not wait for the WAL flush: the disk is not what this bench measures.
    """
    import threading

    import django

    django.setup()
    import orjson
    from django.db import connection, transaction
    from django.db.backends.signals import connection_created

    from accounts.models import User
    from chat import actions
    from chat.serializers import serialize_message

    def session_settings(sender, connection, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute(f"SET synchronous_commit TO {args.synchronous_commit}")

    if connection.vendor == "postgresql":
        connection_created.connect(session_settings)

    if args.variant == "baseline":
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        group = f"project.{args.project}"
        local = threading.local()

        def group_send_on_commit(message, item=None):
            # The message JSON the hub would send; msgpack needs plain types.
            event = {
                "type": "chat.message",
                "message": orjson.loads(orjson.dumps(serialize_message(message))),
            }
            if getattr(local, "loop", None) is None:
                local.loop = asyncio.new_event_loop()  # one per sender thread
            transaction.on_commit(
                lambda: local.loop.run_until_complete(layer.group_send(group, event))
            )

        actions.publish_change_on_commit = group_send_on_commit

    user = User.objects.get(username=SENDER)
    rate, count = args.rate, int(args.rate * args.duration)
    lock = threading.Lock()
    state = {"next": 0, "spent": 0.0, "lag": 0.0, "errors": 0}
    go = threading.Event()
    ready = threading.Barrier(args.senders + 1)

    def sender():
        # Warm up this thread's connections (database pool, Redis) first.
        actions.do_send_message(user, args.project, "warmup")
        ready.wait()
        go.wait()
        spent = lag = 0.0
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= count:
                break
            due = state["start"] + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                lag = max(lag, now - due)
            t0 = time.perf_counter()
            try:
                actions.do_send_message(user, args.project, f"{args.tag} {i} {time.time():.6f}")
            except Exception as error:  # noqa: BLE001 - counted and reported
                with lock:
                    state["errors"] += 1
                print(f"send failed: {error!r}", file=sys.stderr, flush=True)
            spent += time.perf_counter() - t0
        with lock:
            state["spent"] += spent
            state["lag"] = max(state["lag"], lag)
        connection.close()

    threads = [threading.Thread(target=sender) for _ in range(args.senders)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.5)
    print("READY", flush=True)
    if not sys.stdin.readline():
        os._exit(1)  # the bench went away: send nothing

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    state["start"] = time.perf_counter()
    t_first = time.time()
    go.set()
    for t in threads:
        t.join()
    t_last = time.time()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    sent = count - state["errors"]
    print(json.dumps({
        "sent": sent, "errors": state["errors"], "t_first": t_first, "t_last": t_last,
        "mean_send_ms": 1000 * state["spent"] / max(count, 1),
        "worst_lag_ms": 1000 * state["lag"], "cpu_s": cpu,
    }), flush=True)


# --- servers, CPU ----------------------------------------------------------------------


def AppServer(env, app):  # noqa: N802 - kept as the name the bench uses
    """One uvicorn worker on loopback: tests/live.py's LiveServer for any ASGI app."""
    from tests.live import LiveServer

    # BENCH_WS: uvicorn's --ws (default: make serve's, tests/live.py).
    if os.environ.get("BENCH_WS"):
        return LiveServer(env, app=app, ws=os.environ["BENCH_WS"])
    return LiveServer(env, app=app)


def redis_cpu_seconds(url):
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def machine_cpu():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def own_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- clients ---------------------------------------------------------------------------


class Client:
    __slots__ = ("close_code", "disorder", "frames", "last_cs", "last_recv", "lat", "msgs", "ws")

    def __init__(self):
        self.msgs = self.frames = self.disorder = 0
        self.last_cs = 0
        self.lat = []
        self.last_recv = 0.0
        self.close_code = None
        self.ws = None


async def open_client(client, server, project_id, cookie):
    import orjson
    from websockets.asyncio.client import connect

    client.ws = await connect(
        f"{server.ws_url}/ws/projects/{project_id}/", origin=server.url,
        additional_headers={"Cookie": cookie}, max_size=2**24, max_queue=4096,
        ping_interval=None, open_timeout=60,
    )
    hello = orjson.loads(await client.ws.recv())
    assert hello["type"] == "hello", hello


async def read_client(client, tag):
    import orjson
    import websockets

    prefix = tag + " "
    try:
        async for raw in client.ws:
            if not raw.startswith('{"type":"message_batch"'):
                continue
            now = time.time()
            counted = 0
            for m in orjson.loads(raw)["messages"]:
                content = m["content"]
                if not content.startswith(prefix):
                    continue
                counted += 1
                client.lat.append(now - float(content.rsplit(" ", 1)[1]))
                cs = m["changed_seq"]
                if cs <= client.last_cs:
                    client.disorder += 1
                client.last_cs = cs
            if counted:
                client.msgs += counted
                client.frames += 1
                client.last_recv = now
    except websockets.ConnectionClosed as closed:
        client.close_code = closed.rcvd.code if closed.rcvd else None
    except asyncio.CancelledError:
        pass


async def watch_loop_lag(samples, period=0.01):
    """Record how late the client's event loop wakes up (its own backlog)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period
        await asyncio.sleep(period)
        samples.append(loop.time() - due)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def run_config(variant, server, env, project_id, cookie, rate, args):
    tag = "b" + uuid.uuid4().hex[:8]
    clients = [Client() for _ in range(args.clients)]
    gate = asyncio.Semaphore(20)

    async def opened(c):
        async with gate:
            await open_client(c, server, project_id, cookie)

    await asyncio.gather(*(opened(c) for c in clients))
    readers = [asyncio.create_task(read_client(c, tag)) for c in clients]
    await asyncio.sleep(1.0)  # presence frames and the like settle

    driver_env = dict(env, DJANGO_SETTINGS_MODULE=VARIANTS[variant]["settings"])
    driver_log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - the driver's stderr
        prefix="bench-driver-", suffix=".log", delete=False)
    driver = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--drive", "--variant", variant,
        "--project", str(project_id), "--rate", str(rate), "--duration", str(args.duration),
        "--tag", tag, "--senders", str(args.senders), "--inject", args.inject,
        "--synchronous-commit", args.synchronous_commit, cwd=ROOT, env=driver_env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=driver_log,
    )
    line = await asyncio.wait_for(driver.stdout.readline(), 60)
    if line.strip() != b"READY":
        raise RuntimeError(f"driver: {line!r} {Path(driver_log.name).read_text()[-2000:]}")
    await asyncio.sleep(0.5)  # warm-up frames delivered
    cpu0, redis0, own0 = server.cpu_seconds(), redis_cpu_seconds(env["REDIS_URL"]), own_cpu_seconds()
    machine0 = machine_cpu()
    lag_samples = []
    lag_watch = asyncio.create_task(watch_loop_lag(lag_samples))
    t_go = time.time()
    driver.stdin.write(b"go\n")
    await driver.stdin.drain()
    line = await asyncio.wait_for(driver.stdout.readline(), args.duration * 4 + 60)
    if not line:
        raise RuntimeError(f"driver died: {Path(driver_log.name).read_text()[-2000:]}")
    sent = json.loads(line)
    await driver.wait()

    expected = sent["sent"] * len(clients)
    deadline = sent["t_last"] + args.drain
    last_total, last_change = -1, time.time()
    while time.time() < deadline:
        total = sum(c.msgs for c in clients)
        if total >= expected:
            break
        if total != last_total:
            last_total, last_change = total, time.time()
        elif time.time() - last_change > 2.0 and time.time() > sent["t_last"] + 2.0:
            break  # nothing more is coming
        await asyncio.sleep(0.05)
    cpu1, redis1, own1 = server.cpu_seconds(), redis_cpu_seconds(env["REDIS_URL"]), own_cpu_seconds()
    machine1 = machine_cpu()
    lag_watch.cancel()
    lag_samples.sort()
    t_stop = time.time()
    drained = sum(c.msgs for c in clients) >= expected

    log_errors = server_errors(server.output())
    await asyncio.to_thread(server.stop)
    for r in readers:
        r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)

    delivered = sum(c.msgs for c in clients)
    frames = sum(c.frames for c in clients)
    last_recv = max((c.last_recv for c in clients), default=0.0)
    # Active window: first send to the last receipt (or the last send).
    window = max(last_recv, sent["t_last"]) - sent["t_first"]
    lat = sorted(v for c in clients for v in c.lat)
    closes = {}
    for c in clients:
        if c.close_code is not None and c.close_code not in (1000, 1001, 1012):
            closes[c.close_code] = closes.get(c.close_code, 0) + 1
    server_cpu = cpu1 - cpu0
    return {
        "variant": variant, "rate": rate, "clients": len(clients),
        "sent": sent["sent"], "sent_per_s": sent["sent"] / max(sent["t_last"] - sent["t_first"], 1e-9),
        "expected": expected, "delivered": delivered, "lost": expected - delivered,
        "drained": drained, "frames": frames, "window_s": window,
        "deliveries_per_s": delivered / window, "frames_per_s": frames / window,
        "msgs_per_frame": delivered / frames if frames else 0.0,
        "p50": 1000 * percentile(lat, 50), "p95": 1000 * percentile(lat, 95),
        "p99": 1000 * percentile(lat, 99), "max": 1000 * (lat[-1] if lat else float("nan")),
        "server_cpu_s": server_cpu, "server_cpu_pct": 100 * server_cpu / window,
        "cpu_ms_per_1000": 1000 * server_cpu / delivered * 1000 if delivered else float("nan"),
        "redis_cpu_pct": 100 * (redis1 - redis0) / (t_stop - t_go),
        "client_cpu_pct": 100 * (own1 - own0) / (t_stop - t_go),
        "driver_cpu_pct": 100 * sent["cpu_s"] / max(sent["t_last"] - sent["t_first"], 1e-9),
        "driver_mean_send_ms": sent["mean_send_ms"], "driver_worst_lag_ms": sent["worst_lag_ms"],
        "disorder": sum(c.disorder for c in clients), "closes": closes,
        "machine_busy_pct": 100 * (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1),
        # CPU of every other process (PostgreSQL, other work) in % of one core.
        "others_cpu_pct": (
            (os.cpu_count() or 1) * 100 * (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1)
            - 100 * (cpu1 - cpu0 + (redis1 - redis0) + (own1 - own0)) / (t_stop - t_go)
            - 100 * sent["cpu_s"] / (t_stop - t_go)
        ),
        "client_lag_p99": 1000 * percentile(lag_samples, 99),
        "server_log_errors": len(log_errors), "server_log_sample": log_errors[:3],
    }


def server_errors(log):
    """Error lines the server logged (before it was asked to stop)."""
    return [ln for ln in log.splitlines() if ln.startswith(("ERROR", "Traceback")) or "Error:" in ln]


# --- orchestration and report ------------------------------------------------------------


def machine():
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs (nproc), {model}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def fmt(v, digits=0):
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:,.{digits}f}"


def report(results, args, started, load_before, load_after):
    command = ".venv/bin/python bench/broadcast_bench.py" + (
        " " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "")
    lines = [
        "### Broadcast: batched hub vs per-message group_send",
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        f"- load average before / after: {load_before} / {load_after}",
        (f"- {args.clients} sockets in one project, one uvicorn worker, {args.duration:g} s per rate, "
         "PostgreSQL + Redis on the same machine; the load client (all sockets, one asyncio "
         "process) and the injection driver share the CPUs with the server."),
        (f"- injection (`--inject send`): {args.senders} driver threads calling "
         "chat.actions.do_send_message (the real send path: transaction, project number, on_commit) "
         f"on one schedule, synchronous_commit={args.synchronous_commit} for their sessions; the "
         "same driver for both variants, only the fan-out after commit differs."
         if args.inject == "send" else
         "- injection (`--inject publish`): no database; the driver puts each message straight on "
         "the variant's bus (batched: chat.realtime.notify.publish of the change event, consecutive "
         "changed_seq; baseline: one group_send per message)."),
        "",
        ("| variant | msg/s target (sent) | deliveries/s | frames/s | msgs/frame "
         "| p50 ms | p95 ms | p99 ms | server CPU % | CPU ms / 1000 deliveries | lost |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lost = f"{r['lost']:,} of {r['expected']:,}" if r["lost"] else "0"
        lines.append(
            f"| {VARIANTS[r['variant']]['label']} | {r['rate']:g} ({r['sent_per_s']:.0f}) "
            f"| {fmt(r['deliveries_per_s'])} | {fmt(r['frames_per_s'])} | {fmt(r['msgs_per_frame'], 1)} "
            f"| {fmt(r['p50'], 1)} | {fmt(r['p95'], 1)} | {fmt(r['p99'], 1)} "
            f"| {fmt(r['server_cpu_pct'])} | {fmt(r['cpu_ms_per_1000'], 1)} | {lost} |"
        )
    lines += [
        "",
        ("Context (same runs): window = first send to last receipt; client/driver/Redis CPU in % "
         "of one core; machine busy = all CPUs, every process (100 = every core busy); other "
         "processes = the machine's busy time minus server, client, driver and Redis (PostgreSQL "
         "and whatever else ran), in % of one core. Out of order = deliveries whose changed_seq "
         "was not above the previous one on that socket."),
        "",
        ("| variant | msg/s | window s | max latency ms | client CPU % | client loop lag p99 ms "
         "| driver CPU % "
         "| driver send ms (mean) | driver worst lag ms | Redis CPU % | machine busy % "
         "| other processes CPU % "
         "| out of order | unexpected closes | server errors |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        closes = ", ".join(f"{k}: {v}" for k, v in sorted(r["closes"].items())) or "0"
        lines.append(
            f"| {r['variant']} | {r['rate']:g} | {r['window_s']:.1f} | {fmt(r['max'])} "
            f"| {fmt(r['client_cpu_pct'])} | {fmt(r['client_lag_p99'], 1)} | {fmt(r['driver_cpu_pct'])} "
            f"| {fmt(r['driver_mean_send_ms'], 2)} | {fmt(r['driver_worst_lag_ms'])} | {fmt(r['redis_cpu_pct'])} "
            f"| {fmt(r['machine_busy_pct'])} | {fmt(r['others_cpu_pct'])} | {r['disorder']} | {closes} | {r['server_log_errors']} |"
        )
    by = {(r["variant"], r["rate"]): r for r in results}
    ratios = []
    for rate in args.rates:
        a, b = by.get(("batched", rate)), by.get(("baseline", rate))
        if a and b and a["frames_per_s"] and not math.isnan(a["cpu_ms_per_1000"]):
            ratios.append(
                f"- {rate:g} msg/s: batched delivers {a['deliveries_per_s'] / b['deliveries_per_s']:.2f}x "
                f"the baseline's deliveries/s in {a['frames_per_s'] / b['frames_per_s']:.2f}x its frames/s, "
                f"at {a['cpu_ms_per_1000'] / b['cpu_ms_per_1000']:.2f}x its server CPU per delivery "
                f"({a['server_cpu_pct']:.0f}% vs {b['server_cpu_pct']:.0f}% of a core)."
            )
    if ratios:
        lines += ["", *ratios]
    lines += [
        "",
        ("Latency is from the driver's clock just before the send transaction (so it includes the "
         "database write, in both variants)"
         if args.inject == "send" else "Latency is from the driver's clock at injection")
        + (" to the client's clock when the frame is read; only "
         f"delivered messages count. Lost = expected ({args.clients} x sent) - received by "
         f"{args.drain:g} s after the last send."),
    ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 500])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of injection per rate")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait after the last send")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["batched", "baseline"])
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--inject", choices=["send", "publish"], default="send",
                        help="send: the real send path, do_send_message (default); "
                        "publish: straight onto the bus, no database")
    parser.add_argument("--senders", type=int, default=16, help="driver threads sending concurrently")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off",
                        help="the driver's PostgreSQL synchronous_commit (default off)")
    # internal: the injection driver
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        return drive(args)

    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    from urllib.parse import urlparse, urlunparse

    from bench.socket_memory import calibrate
    from tests.live import (
        cookie_header,
        create_users_and_project,
        login,
        make_live_env,
        run_manage,
    )

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None

    started = datetime.datetime.now(datetime.UTC)
    load_before = loadavg()
    t0 = time.monotonic()
    # Every socket is one user's (one session): the per-user socket limit
    # (WS_MAX_SOCKETS_PER_USER, 30) is for people, not for this client; the
    # counts of a stopped server linger until their TTL, so no limit at all.
    env, close = make_live_env({"WS_MAX_SOCKETS_PER_USER": "1000000"})
    results = []
    try:
        # A Redis database of our own (make_live_env's db 1 is FLUSHDB'd by live tests).
        redis_db = os.environ.get("BENCH_REDIS_DB", "5")
        env["REDIS_URL"] = urlunparse(urlparse(env["REDIS_URL"])._replace(path=f"/{redis_db}"))
        # Pub/sub channels are global across Redis databases: a project id far
        # from the small ids of concurrently running live tests keeps buses apart.
        first_id = 1_000_000 + int.from_bytes(os.urandom(3), "big")
        run_manage(env, "shell", "-c", (
            "from django.db import connection\n"
            "with connection.cursor() as c:\n"
            "    c.execute(\"SELECT setval(pg_get_serial_sequence('projects_project', 'id'), %s)\", "
            f"[{first_id}])\n"
        ))
        project_id = create_users_and_project(env, [SENDER, READER], "Broadcast bench")
        cookie = calibration = None
        for rate in args.rates:
            for variant in args.variants:
                server = AppServer(env, VARIANTS[variant]["app"]).start()
                try:
                    if cookie is None:
                        cookie = cookie_header(login(server.url, READER))
                    if calibration is None:
                        calibration = calibrate(server.url)
                    print(f"# {variant} at {rate:g} msg/s ...", file=sys.stderr, flush=True)
                    with asyncio.Runner(loop_factory=loop_factory) as runner:
                        r = runner.run(
                            run_config(variant, server, env, project_id, cookie, rate, args))
                    results.append(r)
                    print(f"#   {json.dumps(r)}", file=sys.stderr, flush=True)
                finally:
                    server.stop()
                if r["server_log_errors"]:
                    print(f"#   server log during the run: {r['server_log_errors']} error lines, "
                          f"e.g. {r['server_log_sample']} (full log: {server.log.name})",
                          file=sys.stderr, flush=True)
    finally:
        close()
    text = report(results, args, started, load_before, loadavg())
    if calibration:
        text += (f"\nCalibration: `/healthz` of the first server, {calibration:,.0f} req/s "
                 "(wrk, 64 connections, 5 s, before any socket).\n")
    text += f"\nWhole run: {time.monotonic() - t0:.0f} s.\n"
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"(written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
