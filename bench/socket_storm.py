"""Reconnect storm and idle sockets: the two socket acceptance checks, measured.

    .venv/bin/python bench/socket_storm.py --mode storm    # 5,000 sockets, ~2 minutes
    .venv/bin/python bench/socket_storm.py --mode idle     # 10,000 sockets held 60 s, ~3 minutes
    .venv/bin/python bench/socket_storm.py --mode storm --sockets 300 --projects 5   # a small run

Production shape on loopback (DATABASE_URL, REDIS_URL; defaults below; Redis
database 7 whatever REDIS_URL names): a fresh database (tests/live.py make_live_env) with PROJECTS
projects, each of which all USERS users are members of; one uvicorn server with
`--workers WORKERS` (2: `make serve` runs one per core) and `make serve`'s
socket protocol (`--ws` for another). A `/healthz` calibration (wrk, 5 s) of
the same server comes first, before any socket opens.

Clients are CLIENTS processes, each an asyncio loop with the `websockets`
client as a browser tab connects: permessage-deflate offered, the site's
Origin, the session cookie of a signed-in user, no protocol pings. Socket i
watches project i mod PROJECTS as user (i div PROJECTS) mod USERS. Sockets open
at most 64 at a time per process (a handful per process first, as a warm-up
outside the measurement).

storm: a sender (threads in this process, one requests session per user,
tests/live.py post_message) posts RATE messages a second round-robin into the
projects for the whole run; a post that fails (the server is down) is retried
with its client_msg_id and only counts once the server answered it stored.
After STEADY seconds of traffic the server is stopped (SIGTERM) and a new one
starts on the same port. Every socket reconnects as chat.js does: after
BACKOFF_MIN_MS x a jitter of 0.7-1.3, doubling to 15 s while it fails, with
`?after=` the highest changed_seq it holds (hello's `seq` at its first
connect, then its message batches). A socket is back when it is open again
and holds every change its project had stored when the new server answered
`/healthz` (the replay is done); its reconnect time is counted from that
moment, and from the stop. Then AFTER seconds more of traffic, the sender
stops and DRAIN seconds pass. Each socket's received changed_seqs are checked
against the database: every change of its project after its first hello,
once each (lost, duplicated), strictly increasing (out of order).
resync_required frames (a refused replay) are counted.

idle: the sockets open and stay idle for HOLD seconds; then each sends
{"type": "ping"} and must get {"type": "pong"} within 30 s. Measured: sockets
held (answered) of opened, connects a second, the server's CPU per connect,
the resident memory (VmRSS summed over the server's process group: supervisor
and workers) before the sockets, after they opened and after the hold, and
KiB per socket.

Every wait is bounded: the whole run ends by DEADLINE seconds (default 300)
and servers, client processes and the database are removed in any case.
Writes a markdown report to stdout and to bench/results/socket_storm_<mode>.md.
"""

import argparse
import asyncio
import collections
import datetime
import os
import random
import resource
import shlex
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
REDIS_DB = 7  # this bench's own database: the live tests FLUSHDB theirs
RESULTS = ROOT / "bench" / "results"
USER_PREFIX = "storm_u"
# static/chat/chat.js: BACKOFF_MIN_MS, BACKOFF_MAX_MS and its ±30 % jitter.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 15.0
JITTER = (0.7, 1.3)
FINAL_CLOSE = {4401, 4403, 4404, 4429}  # chat.js does not reconnect after these
OPEN_GATE = 64  # handshakes in flight per client process while the sockets first open
WARM_SOCKETS = 4  # per client process, opened before the measured connects
OPEN_TIMEOUT = 30.0
PONG_TIMEOUT = 30.0
SEND_RETRY_S = 0.2
PING = '{"type":"ping"}'


# --- the client processes --------------------------------------------------------------


class Sock:
    """One tab's socket: where it points, how far it has read, what it received."""

    __slots__ = ("connects", "cookie", "cursor", "final", "first_seq", "got", "got_at",
                 "hello_at", "ping_at", "pong_at", "project", "replay_to", "replayed",
                 "resyncs", "ws")

    def __init__(self, project, cookie):
        self.project, self.cookie = project, cookie
        self.ws = self.first_seq = self.hello_at = self.final = None
        self.ping_at = self.pong_at = None
        self.cursor = self.replay_to = 0
        self.replayed = self.resyncs = self.connects = 0
        self.got, self.got_at = [], []

    def on_frame(self, frame, now):
        """Apply one server frame; True for a hello.

        The cursor starts at the first hello's `seq` and then follows the
        batches only: a later hello's `seq` is what the replay will bring, not
        what the socket holds.
        """
        kind = frame.get("type")
        if kind == "hello":
            self.hello_at, self.replay_to = now, frame["seq"]
            self.connects += 1
            if self.first_seq is None:
                self.first_seq = self.cursor = frame["seq"]
            return True
        if kind == "message_batch":
            for message in frame["messages"]:
                cs = message["changed_seq"]
                self.got.append(cs)
                self.got_at.append(now)
                self.replayed += cs <= self.replay_to
                self.cursor = max(self.cursor, cs)
        elif kind == "resync_required":
            # As chat.js: reload the page of history, go on from hello's seq.
            self.resyncs += 1
            self.cursor = max(self.cursor, self.replay_to)
        elif kind == "pong":
            self.pong_at = now
        return False

    def back_at(self, t_stop, target):
        """When this socket was open again after the stop and held `target`; None if not yet."""
        if self.ws is None or self.hello_at is None or self.hello_at < t_stop:
            return None
        if self.cursor < target:
            return None
        reached = next((t for cs, t in zip(self.got, self.got_at) if cs >= target), self.hello_at)
        return max(self.hello_at, reached)

    def summary(self):
        return {"project": self.project, "first_seq": self.first_seq, "got": self.got,
                "replayed": self.replayed, "resyncs": self.resyncs, "connects": self.connects,
                "final": self.final}


def failure_kind(error):
    from websockets.exceptions import InvalidStatus

    if isinstance(error, InvalidStatus):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


def say(text):
    print(f"# {text}", file=sys.stderr, flush=True)


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """One client process's sockets, and the commands the bench sends it."""

    def __init__(self, spec):
        self.spec = spec
        self.socks = [Sock(project, cookie) for project, cookie in spec["sockets"]]
        self.untried = list(self.socks)
        self.gate = asyncio.Semaphore(OPEN_GATE)
        self.tasks = set()
        self.closes = collections.Counter()
        self.failures = []  # (kind, monotonic time) of each failed connect
        self.stopping = False

    async def connect(self, sock):
        """One connect attempt as a browser tab makes it; None when it failed."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        url = f"{self.spec['ws_url']}/ws/projects/{sock.project}/"
        if sock.first_seq is not None:
            url += f"?after={sock.cursor}"
        try:
            return await connect(url, origin=self.spec["origin"], compression="deflate",
                                 additional_headers={"Cookie": sock.cookie}, ping_interval=None,
                                 open_timeout=OPEN_TIMEOUT, close_timeout=2)
        except (OSError, TimeoutError, WebSocketException) as error:
            self.failures.append((failure_kind(error), time.monotonic()))
            return None

    async def open_first(self, sock):
        """Open a socket and read its hello, a limited number at a time; True if it opened."""
        import orjson

        async with self.gate:
            ws = await self.connect(sock)
            if ws is None:
                return False
            try:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
            except Exception as error:  # noqa: BLE001 - counted as a failed open
                self.failures.append((f"no hello: {type(error).__name__}", time.monotonic()))
                await ws.close()
                return False
        sock.on_frame(frame, time.monotonic())
        task = asyncio.create_task(self.live(sock, ws))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def live(self, sock, ws):
        """Read the socket; in storm mode reconnect after every close, as chat.js does."""
        backoff = BACKOFF_MIN_S
        while True:
            if ws is not None and await self.read(sock, ws):
                backoff = BACKOFF_MIN_S  # chat.js resets it on hello
            if not self.spec["reconnect"] or self.stopping or sock.final:
                return
            await asyncio.sleep(backoff * random.uniform(*JITTER))
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if self.stopping:
                return
            ws = await self.connect(sock)

    async def read(self, sock, ws):
        """Apply frames until the socket closes; True if a hello came on it."""
        import orjson
        from websockets.exceptions import ConnectionClosed

        sock.ws, helloed = ws, False
        try:
            async for raw in ws:
                helloed |= sock.on_frame(orjson.loads(raw), time.monotonic())
        except ConnectionClosed:
            pass
        sock.ws = None
        if not self.stopping:
            self.closes[ws.close_code] += 1
            if ws.close_code in FINAL_CLOSE:
                sock.final = ws.close_code
        return helloed

    # Commands: each answers one message to the bench.

    async def cmd_open(self, count):
        batch = self.untried[:count] if count else self.untried
        self.untried = self.untried[len(batch):]
        results = await asyncio.gather(*(self.open_first(s) for s in batch))
        return ("opened", {"ok": sum(results), "t_end": time.monotonic(), "cpu": own_cpu()})

    async def cmd_mark(self):
        return ("mark", {"cpu": own_cpu()})

    async def cmd_back(self, t_stop, targets, until):
        """Wait until every opened socket is back with its target (or `until`)."""
        opened = [s for s in self.socks if s.first_seq is not None]
        back = {}
        while len(back) < len(opened) and time.monotonic() < until:
            for k, sock in enumerate(opened):
                if k not in back:
                    at = sock.back_at(t_stop, targets[sock.project])
                    if at is not None:
                        back[k] = at
            await asyncio.sleep(0.02)
        return ("back", {"times": [back.get(k) for k in range(len(opened))], "cpu": own_cpu()})

    async def cmd_ping(self):
        """Every open socket sends a ping; wait for the pongs (at most PONG_TIMEOUT)."""
        open_socks = [s for s in self.socks if s.ws is not None]

        async def ping(sock):
            sock.ping_at = time.monotonic()
            await sock.ws.send(PING)

        await asyncio.gather(*(ping(s) for s in open_socks), return_exceptions=True)
        until = time.monotonic() + PONG_TIMEOUT
        while time.monotonic() < until and any(s.pong_at is None for s in open_socks):
            await asyncio.sleep(0.05)
        latencies = [s.pong_at - s.ping_at for s in open_socks if s.pong_at is not None]
        return ("pongs", {"open": len(open_socks), "answered": len(latencies),
                          "latencies": latencies, "cpu": own_cpu()})

    async def cmd_finish(self):
        """Close every socket (not counted as a close) and report what each received."""
        self.stopping = True
        await asyncio.gather(*(s.ws.close() for s in self.socks if s.ws is not None),
                             return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return ("report", {"socks": [s.summary() for s in self.socks if s.first_seq is not None],
                           "closes": dict(self.closes), "failures": self.failures,
                           "cpu": own_cpu()})


async def serve_commands(conn, spec):
    """Answer the bench's commands until `finish` (or the parent is gone)."""
    loop = asyncio.get_running_loop()
    inbox = asyncio.Queue()

    def pump():
        # A daemon thread: a blocked recv must not keep the process alive.
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("finish",)
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, message)
            except RuntimeError:
                return  # the loop is closed: the process is ending
            if message[0] == "finish":
                return

    threading.Thread(target=pump, daemon=True).start()
    client = Client(spec)
    conn.send(("ready", {}))
    while True:
        name, *params = await inbox.get()
        answer = await getattr(client, f"cmd_{name}")(*params)
        try:
            conn.send(answer)
        except OSError:
            return  # the bench is gone (its `finish` was the pipe closing)
        if name == "finish":
            return


def client_main(conn, spec):
    """A client process: as many file descriptors as allowed, an event loop, the commands."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None

    async def bounded():
        async with asyncio.timeout(max(spec["deadline"] - time.monotonic(), 1)):
            await serve_commands(conn, spec)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(bounded())


class Clients:
    """The client processes (spawned: the parent runs threads) and a pipe to each."""

    def __init__(self, shares, spec):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.procs, self.conns = [], []
        for share in shares:
            mine, theirs = context.Pipe()
            proc = context.Process(target=client_main, args=(theirs, dict(spec, sockets=share)),
                                   daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)

    def ask(self, message, kind, until):
        for conn in self.conns:
            conn.send(message)
        return self.collect(kind, until)

    def collect(self, kind, until):
        """One `kind` answer of every process by `until` (monotonic), else an error."""
        answers = []
        for k, conn in enumerate(self.conns):
            if not conn.poll(max(until - time.monotonic(), 0)):
                raise TimeoutError(f"client process {k} did not answer {kind!r} in time")
            try:
                got, body = conn.recv()
            except EOFError:
                raise RuntimeError(f"client process {k} died (exit {self.procs[k].exitcode})")
            if got != kind:
                raise RuntimeError(f"client process {k} answered {got!r}, not {kind!r}")
            answers.append(body)
        return answers

    def stop(self):
        """Close the pipes (each process then closes its sockets and exits); end stragglers."""
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- the sender ------------------------------------------------------------------------


class Sender:
    """RATE messages a second round-robin into the projects, through the restart.

    Thread t sends messages t, t + T, t + 2T, ... (message i is due at i / RATE)
    with the sessions of its own users (a requests session is not shared
    between threads). A post that fails is retried with the same
    client_msg_id until the server answers it stored: a message counts once
    stored, and a retry of one that was stored after all creates nothing new.
    While the server is down the threads fall behind and then catch up.
    """

    def __init__(self, sessions, project_ids, rate, threads, deadline):
        self.project_ids, self.rate, self.deadline = project_ids, rate, deadline
        count = max(1, min(threads, len(sessions)))
        self.groups = [sessions[t::count] for t in range(count)]
        self.stored = collections.defaultdict(list)  # project -> changed_seqs
        self.retries = collections.Counter()
        self.refused = collections.Counter()
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.threads = []

    def start(self):
        self.t0 = time.monotonic()
        for t, group in enumerate(self.groups):
            thread = threading.Thread(target=self.run, args=(t, group), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def run(self, index, sessions):
        i, k = index, 0
        while not self.halt.wait(max(self.t0 + i / self.rate - time.monotonic(), 0)):
            self.post(sessions[k % len(sessions)], self.project_ids[i % len(self.project_ids)], i)
            i, k = i + len(self.groups), k + 1

    def post(self, session, project, i):
        import requests

        from tests.live import post_message

        msg_id = str(uuid.uuid4())
        while time.monotonic() < self.deadline:
            try:
                r = post_message(session, project, f"storm {i}", msg_id)
            except requests.RequestException as error:
                self.count(self.retries, type(error).__name__)
            else:
                if r.status_code in (200, 201):
                    with self.lock:
                        self.stored[project].append(r.json()["changed_seq"])
                    return
                if r.status_code < 500 and r.status_code != 429:
                    self.count(self.refused, r.status_code)
                    return
                self.count(self.retries, f"HTTP {r.status_code}")
            time.sleep(SEND_RETRY_S)

    def count(self, counter, key):
        with self.lock:
            counter[key] += 1

    def stop(self):
        self.halt.set()
        for thread in self.threads:
            thread.join(max(self.deadline - time.monotonic(), 1))

    def sent(self):
        return sum(len(v) for v in self.stored.values())


# --- the server side ---------------------------------------------------------------------


def group_rss_kib(server):
    """VmRSS summed over the server's process group (the supervisor and its workers)."""
    from bench.socket_memory import rss_kib

    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text[text.rindex(")") + 2:].split()[2]) == server.proc.pid:
                total += rss_kib(stat.parent.name)
        except (OSError, AttributeError):
            continue  # gone meanwhile
    return total


def create_population(env, users, projects):
    """USERS users, PROJECTS projects each of which every user is a member of; the ids.

    One shell, memberships in bulk: no server runs yet, so no cache holds
    anything the membership signals would have to retire.
    """
    from tests.live import PASSWORD, run_manage

    code = (
        "from accounts.models import User\n"
        "from projects.actions import do_create_project\n"
        "from projects.models import Membership\n"
        f"names = [f'{USER_PREFIX}{{n}}' for n in range({users})]\n"
        f"users = [User.objects.create_user(n, n + '@example.com', {PASSWORD!r}) for n in names]\n"
        "ids = []\n"
        f"for k in range({projects}):\n"
        "    p = do_create_project(users[0], name=f'Storm {k}')\n"
        "    Membership.objects.bulk_create([Membership(user=u, project=p) for u in users[1:]])\n"
        "    ids.append(p.pk)\n"
        "print(' '.join(map(str, ids)))\n"
    )
    out = run_manage(env, "shell", "-c", code)
    return [int(v) for v in out.stdout.strip().splitlines()[-1].split()]


def project_seqs(env, project_ids):
    """Each project's change number now: what a socket back from the storm must hold."""
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT id, seq FROM projects_project WHERE id = ANY(%s)",
                            [project_ids]).fetchall()
    return dict(rows)


def stored_changes(env, project_ids):
    """Every stored change of each project (the truth the sockets are checked against)."""
    import psycopg

    changes = collections.defaultdict(set)
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        for project, cs in conn.execute(
                "SELECT project_id, changed_seq FROM chat_message WHERE project_id = ANY(%s)",
                [project_ids]):
            changes[project].add(cs)
    return changes


def log_summary(text):
    """The server's log: its JSON lines counted by level and event, and any other error lines.

    Under a storm the log is where Redis timeouts, slow queries and refused
    database connections show; uvicorn's own deprecation notices are not errors.
    """
    import orjson

    kinds, others = collections.Counter(), []
    for line in text.splitlines():
        try:
            entry = orjson.loads(line) if line.startswith("{") else None
        except orjson.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            what = entry.get("event") or str(entry.get("message", ""))[:100]
            kinds[f"{entry.get('level')} {what}"] += 1
        elif any(w in line for w in ("Traceback", "ERROR", "Error", "Exception")) and (
                "DeprecationWarning" not in line):
            others.append(line)
    return kinds, others


# --- a run -----------------------------------------------------------------------------


class Run:
    """One mode's run: its servers, client processes and sender, all stopped in `close`."""

    def __init__(self, args, env, project_ids, deadline):
        self.args, self.env, self.project_ids, self.deadline = args, env, project_ids, deadline
        self.servers, self.clients, self.sender = [], None, None
        self.facts = {"logs": []}

    def until(self, seconds):
        return min(time.monotonic() + seconds, self.deadline)

    def sleep(self, seconds):
        time.sleep(max(min(seconds, self.deadline - time.monotonic()), 0))

    def start_server(self, port=None):
        from tests.live import LiveServer

        options = {"ws": self.args.ws} if self.args.ws else {}
        server = LiveServer(self.env, port=port, workers=self.args.workers, **options)
        self.servers.append(server)
        self.facts["ws"] = server.ws
        return server.start(timeout=60)

    def note_log(self, server, label):
        self.facts["logs"].append((label, server.log.name, *log_summary(server.output())))

    def sign_in(self, server):
        from tests.live import login

        return [login(server.url, f"{USER_PREFIX}{n}") for n in range(self.args.users)]

    def open_sockets(self, server, cookies):
        """Start the client processes and open every socket; the cost of the connects."""
        a = self.args
        shares = [[] for _ in range(min(a.clients, a.sockets))]
        for i in range(a.sockets):
            project = self.project_ids[i % len(self.project_ids)]
            shares[i % len(shares)].append((project, cookies[(i // a.projects) % a.users]))
        spec = {"ws_url": server.ws_url, "origin": server.url, "deadline": self.deadline,
                "reconnect": a.mode == "storm"}
        self.clients = Clients(shares, spec)
        self.clients.collect("ready", self.until(60))
        warm = self.clients.ask(("open", WARM_SOCKETS), "opened", self.until(60))
        self.sleep(1)
        rss0, cpu0, t0 = group_rss_kib(server), server.cpu_seconds(), time.monotonic()
        opened = self.clients.ask(("open", None), "opened", self.until(a.deadline))
        cpu1, t1 = server.cpu_seconds(), max(o["t_end"] for o in opened)
        self.sleep(2)
        measured = sum(o["ok"] for o in opened)
        say(f"{measured + sum(w['ok'] for w in warm):,} sockets open in {t1 - t0:.1f} s")
        self.facts.update(
            opened=measured + sum(w["ok"] for w in warm),
            connects_per_s=measured / max(t1 - t0, 1e-9),
            connect_cpu_ms=1000 * (cpu1 - cpu0) / max(measured, 1),
            rss_before=rss0, rss_opened=group_rss_kib(server), measured_connects=measured)

    def close(self):
        if self.sender:
            self.sender.stop()
        if self.clients:
            self.clients.stop()
        for server in self.servers:
            server.stop()


def run_storm(run):
    from bench.socket_memory import calibrate
    from tests.live import cookie_header

    a = run.args
    server = run.start_server()
    run.facts["calibration"] = calibrate(server.url)
    sessions = run.sign_in(server)
    run.open_sockets(server, [cookie_header(s) for s in sessions])
    run.sender = Sender(sessions, run.project_ids, a.rate, a.senders, run.deadline).start()
    run.sleep(a.steady)
    storm(run, server)
    run.sleep(a.after)
    run.sender.stop()
    run.sleep(a.drain)
    truth = stored_changes(run.env, run.project_ids)
    reports = run.clients.ask(("finish",), "report", run.until(120))
    run.note_log(run.servers[-1], "second server")
    run.facts.update(check_deliveries(reports, truth), sent=run.sender.sent(),
                     db_stored=sum(len(v) for v in truth.values()),
                     not_in_db=sum(len(set(v) - truth[p]) for p, v in run.sender.stored.items()),
                     retries=dict(run.sender.retries), refused=dict(run.sender.refused))


def restart(run, server):
    """Stop the server (SIGTERM) and start a new one on its port.

    Returns the new server and the moments of the stop, of the old server's
    exit and of the new one's first healthy answer.
    """
    say("stopping the server")
    t_stop = time.monotonic()
    server.stop()
    t_exited = time.monotonic()
    run.note_log(server, "first server (to its exit)")
    new = run.start_server(port=server.port)
    t_healthy = time.monotonic()
    say(f"new server healthy {t_healthy - t_stop:.2f} s after the stop")
    return new, t_stop, t_exited, t_healthy


def storm(run, server):
    """The restart, and how long until every socket is back and replayed."""
    from bench.broadcast_bench import machine_cpu

    marks = run.clients.ask(("mark",), "mark", run.until(30))
    busy0 = machine_cpu()
    new, t_stop, t_exited, t_healthy = restart(run, server)
    cpu_start = new.cpu_seconds()
    targets = project_seqs(run.env, run.project_ids)
    until = run.until(run.args.storm_wait) - 15
    backs = run.clients.ask(("back", t_stop, targets, until), "back", until + 15)
    cpu_back, busy1 = new.cpu_seconds(), machine_cpu()
    times = [t for b in backs for t in b["times"]]
    back = [t for t in times if t is not None]
    say(f"{len(back):,} of {len(times):,} sockets back")
    t_all = max(back) if back and len(back) == len(times) else None
    run.facts.update(
        marks=(t_stop, t_exited, t_healthy), t_exit=t_exited - t_stop, down=t_healthy - t_stop,
        back=len(back), tried=len(times), from_healthy=sorted(t - t_healthy for t in back),
        all_back_healthy=t_all - t_healthy if t_all else None,
        all_back_stop=t_all - t_stop if t_all else None,
        cpu_startup=cpu_start, cpu_to_back=cpu_back - cpu_start,
        client_cpu=sum(b["cpu"] - m["cpu"] for b, m in zip(backs, marks)),
        machine_busy=100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1))


def check_deliveries(reports, truth):
    """Each socket's received changes against its project's stored ones after its first hello."""
    totals = collections.Counter(dict.fromkeys(
        ("duplicated", "out_of_order", "lost", "unexpected", "delivered", "replayed", "resyncs",
         "final"), 0))
    closes, failures = collections.Counter(), []
    for report in reports:
        closes.update(report["closes"])
        failures += report["failures"]
        totals["client_cpu_total"] += report["cpu"]
        for sock in report["socks"]:
            expected = {cs for cs in truth[sock["project"]] if cs > sock["first_seq"]}
            seen, last = set(), 0
            for cs in sock["got"]:
                if cs in seen:
                    totals["duplicated"] += 1
                elif cs < last:
                    totals["out_of_order"] += 1
                seen.add(cs)
                last = max(last, cs)
            totals["lost"] += len(expected - seen)
            totals["unexpected"] += len(seen - expected)
            totals["delivered"] += len(sock["got"])
            totals["replayed"] += sock["replayed"]
            totals["resyncs"] += sock["resyncs"]
            totals["final"] += sock["final"] is not None
    return dict(totals, closes=dict(closes), failures=failures)


def run_idle(run):
    from bench.socket_memory import calibrate
    from tests.live import cookie_header

    server = run.start_server()
    run.facts["calibration"] = calibrate(server.url)
    run.open_sockets(server, [cookie_header(s) for s in run.sign_in(server)])
    run.sleep(run.args.hold)
    run.facts["rss_held"] = group_rss_kib(server)
    pongs = run.clients.ask(("ping",), "pongs", run.until(PONG_TIMEOUT + 30))
    reports = run.clients.ask(("finish",), "report", run.until(120))
    run.note_log(server, "server")
    closes, failures = collections.Counter(), collections.Counter()
    for report in reports:
        closes.update(report["closes"])
        failures.update(kind for kind, _at in report["failures"])
    run.facts.update(
        open_at_ping=sum(p["open"] for p in pongs), held=sum(p["answered"] for p in pongs),
        pong=sorted(t for p in pongs for t in p["latencies"]), closes=dict(closes),
        failures=dict(failures), client_cpu_total=sum(r["cpu"] for r in reports))


# --- the report --------------------------------------------------------------------------


def header(args, facts, started, load_before, load_after):
    from bench.broadcast_bench import machine

    command = ".venv/bin/python bench/socket_storm.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    title = ("Reconnect storm: every socket back with `after`" if args.mode == "storm"
             else "Idle sockets held on one machine")
    return [
        f"### {title}", "",
        f"- command: `{command.strip()}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        f"- load average before / after: {load_before} / {load_after}",
        (f"- one uvicorn server, {args.workers} workers, `--ws {facts['ws']}`; "
         f"{args.sockets:,} sockets over {args.projects} projects as {args.users} users from "
         f"{args.clients} client processes (websockets, deflate offered); PostgreSQL, Redis, "
         "the clients and the server share the machine"),
        "",
    ]


def fmt(value, digits=1):
    return "—" if value is None else f"{value:,.{digits}f}"


def calibration_text(facts):
    value = facts.get("calibration")
    return f"{value:,.0f}" if value else "— (no wrk)"


def spread(values, digits=2):
    from bench.broadcast_bench import percentile

    if not values:
        return "—"
    return " / ".join(fmt(percentile(values, q), digits) for q in (50, 95, 100))


def counts(mapping):
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(mapping.items(), key=str)) or "none"


def storm_tables(f, args):
    ok = (f["back"] == f["tried"] == args.sockets and f["lost"] == 0
          and f["all_back_healthy"] is not None and f["all_back_healthy"] <= 10)
    return [
        "| sockets open / asked | back | all back from healthy s | all back from stop s "
        "| per socket from healthy p50 / p95 / max s | replayed | lost | duplicated "
        "| out of order | resync_required |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {f['opened']:,} / {args.sockets:,} | {f['back']:,} | {fmt(f['all_back_healthy'], 2)} "
        f"| {fmt(f['all_back_stop'], 2)} | {spread(f['from_healthy'])} | {f['replayed']:,} "
        f"| {f['lost']:,} | {f['duplicated']:,} | {f['out_of_order']:,} | {f['resyncs']:,} |",
        "",
        "| server exit s | down s (stop → healthy) | server CPU s: start → healthy / → all back "
        "| client CPU s (storm) | machine busy % (storm) | stored (sender / database) "
        "| connects/s, CPU ms per connect (first open) | `/healthz` req/s |",
        "|---:|---:|---|---:|---:|---|---|---:|",
        f"| {fmt(f['t_exit'], 2)} | {fmt(f['down'], 2)} | {fmt(f['cpu_startup'], 2)} / "
        f"{fmt(f['cpu_to_back'], 2)} | {fmt(f['client_cpu'], 2)} | {fmt(f['machine_busy'], 0)} "
        f"| {f['sent']:,} / {f['db_stored']:,} | {fmt(f['connects_per_s'], 0)}, "
        f"{fmt(f['connect_cpu_ms'], 2)} | {calibration_text(f)} |",
        "",
        f"- acceptance (a), all {args.sockets:,} back and replayed within 10 s of the new server's "
        f"health, nothing lost: **{'yes' if ok else 'no'}**",
        f"- messages: {args.rate:g}/s asked, {f['sent']:,} stored per the sender, "
        f"{f['not_in_db']} of them missing from the database; sender retries: "
        f"{counts(f['retries'])}; refused: {counts(f['refused'])}",
        f"- deliveries checked: {f['delivered']:,}; unexpected changes (not stored, or before the "
        f"first hello): {f['unexpected']}; sockets closed for good: {f['final']}",
        f"- closes the clients saw: {counts(f['closes'])}; failed connect attempts by phase: "
        f"{failures_by_phase(f['failures'], f['marks'])}; client CPU over the whole run: "
        f"{f['client_cpu_total']:.1f} s",
    ]


def failures_by_phase(failures, marks):
    """Failed connects counted by when they happened.

    A failure once the new server is healthy is a socket a running server
    refused; before, it is the restart itself.
    """
    t_stop, t_exited, t_healthy = marks
    phases = {name: collections.Counter() for name in
              ("first open", "old server exiting", "server down", "new server healthy")}
    for kind, at in failures:
        phase = ("first open" if at < t_stop else "old server exiting" if at < t_exited
                 else "server down" if at < t_healthy else "new server healthy")
        phases[phase][kind] += 1
    return "; ".join(f"{name}: {counts(c)}" for name, c in phases.items())


def idle_tables(f, args):
    per_socket = [(f[key] - f["rss_before"]) / max(f["measured_connects"], 1)
                  for key in ("rss_opened", "rss_held")]
    return [
        "| sockets asked | opened | held (pong) | connects/s | server CPU ms per connect "
        "| server RSS MiB: before / opened / after hold | KiB per socket: opened / held "
        "| pong p50 / p95 / max ms | `/healthz` req/s |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
        f"| {args.sockets:,} | {f['opened']:,} | {f['held']:,} | {fmt(f['connects_per_s'], 0)} "
        f"| {fmt(f['connect_cpu_ms'], 2)} | {f['rss_before'] / 1024:,.0f} / "
        f"{f['rss_opened'] / 1024:,.0f} / {f['rss_held'] / 1024:,.0f} "
        f"| {per_socket[0]:.1f} / {per_socket[1]:.1f} "
        f"| {spread([1000 * t for t in f['pong']], 1)} | {calibration_text(f)} |",
        "",
        f"- acceptance (b), {args.sockets:,} idle sockets held: "
        f"**{'yes' if f['held'] == args.sockets else 'no'}** "
        f"(held {args.hold:g} s, then a ping each)",
        f"- open at the ping: {f['open_at_ping']:,}; "
        f"closes during the hold: {counts(f['closes'])}; "
        f"failed connects: {counts(f['failures'])}; client CPU over the whole run: "
        f"{f['client_cpu_total']:.1f} s",
        "- KiB per socket: the process group's RSS growth over the measured connects "
        f"({f['measured_connects']:,}; {WARM_SOCKETS} per client process opened before "
        "as a warm-up)",
    ]


def log_lines(facts):
    lines = []
    for label, path, kinds, others in facts["logs"]:
        lines.append(f"- {label} log ({path}): {counts(kinds)}; other error lines: {len(others)}")
        lines += [f"    - `{line[:200]}`" for line in others[:5]]
    return lines


def report(args, facts, started, load_before, load_after, seconds):
    tables = storm_tables if args.mode == "storm" else idle_tables
    lines = (header(args, facts, started, load_before, load_after) + tables(facts, args)
             + log_lines(facts))
    lines.append(f"- whole run: {seconds:.0f} s")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["storm", "idle"], default="storm")
    parser.add_argument("--sockets", type=int, help="default 5000 (storm), 10000 (idle)")
    parser.add_argument("--projects", type=int, default=25)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--ws", help="uvicorn --ws (default: make serve's protocol)")
    parser.add_argument("--rate", type=float, default=20.0, help="storm: messages per second")
    parser.add_argument("--senders", type=int, default=8, help="storm: sender threads")
    parser.add_argument("--steady", type=float, default=5.0, help="storm: traffic before the stop")
    parser.add_argument("--after", type=float, default=5.0,
                        help="storm: traffic after all are back")
    parser.add_argument("--drain", type=float, default=5.0, help="storm: wait after the last send")
    parser.add_argument("--storm-wait", type=float, default=60.0,
                        help="storm: longest wait for every socket to be back")
    parser.add_argument("--hold", type=float, default=60.0, help="idle: seconds held idle")
    parser.add_argument("--deadline", type=float, default=300.0, help="the whole run, seconds")
    parser.add_argument("--output", help="default bench/results/socket_storm_<mode>.md")
    args = parser.parse_args()
    args.sockets = args.sockets or (5000 if args.mode == "storm" else 10000)
    return args


def main():
    from bench.broadcast_bench import loadavg
    from tests.live import make_live_env

    args = parse_args()
    deadline = time.monotonic() + args.deadline
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    redis_url = urlunparse(urlparse(os.environ["REDIS_URL"])._replace(path=f"/{REDIS_DB}"))
    started, load_before, t0 = datetime.datetime.now(datetime.UTC), loadavg(), time.monotonic()
    # Every user holds up to sockets / users sockets: no per-user cap for this client.
    env, close = make_live_env({"WS_MAX_SOCKETS_PER_USER": "1000000",
                                "REDIS_URL": redis_url})
    try:
        run = Run(args, env, create_population(env, args.users, args.projects), deadline)
        try:
            (run_storm if args.mode == "storm" else run_idle)(run)
        finally:
            run.close()
    finally:
        close()
    text = report(args, run.facts, started, load_before, loadavg(), time.monotonic() - t0)
    print(text)
    out = Path(args.output or RESULTS / f"socket_storm_{args.mode}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"(written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
