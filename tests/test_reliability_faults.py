"""Faults under load against real server processes (production shape only).

A TCP proxy (tests/tcp_proxy.py) sits between the live servers and Redis or
PostgreSQL, so a dependency can be cut, slowed or partitioned without touching
the machine's shared services. Each test runs a light load (HTTP senders with a
client_msg_id each, an HTTP reader, socket clients that reconnect with
after=<last changed_seq>) and then asserts counts, never timings of the happy
path: every acknowledged message reaches every socket client once and in order,
and the answers during the fault are the documented ones (2xx while Redis is
down, 503 + Retry-After while PostgreSQL is down, never a 500).

Figures (lost, duplicates, 5xx, recovery seconds) are printed as one
`RELIABILITY {...}` line per test and, with RELIABILITY_RESULTS=<file>, appended
there as JSON lines; docs/RELIABILITY.md quotes the last run.
"""

import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import orjson
import pytest
import requests
import websockets
from websockets.asyncio.client import connect

from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    free_port,
    login,
    make_live_env,
)
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.live, pytest.mark.redis, pytest.mark.postgres]

# Issue #7: each outage lasts 10 s unless FAULT_OUTAGE_SECONDS says otherwise.
OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "10"))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def report(name, **figures):
    line = json.dumps(_plain({"test": name, **figures}), sort_keys=True)
    print(f"\nRELIABILITY {line}")
    path = os.environ.get("RELIABILITY_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_proxy():
    parts = urlparse(os.environ["REDIS_URL"])
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def pg_proxy():
    parts = urlparse(os.environ["DATABASE_URL"])
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def fault_env(redis_proxy):
    """One live database for the module; its servers reach Redis through the proxy."""
    env, close = make_live_env({"REDIS_URL": redis_proxy.url("redis", "/1")})
    yield env
    close()


@pytest.fixture(autouse=True)
def _proxies_pass(redis_proxy):
    yield
    redis_proxy.set_mode("pass")


def proxied_database_url(env, pg_proxy):
    """The live database's URL through the PostgreSQL proxy."""
    parts = urlparse(env["DATABASE_URL"])
    return urlunparse(parts._replace(netloc=f"{parts.username or 'root'}"
                                     f"{':' + parts.password if parts.password else ''}"
                                     f"@127.0.0.1:{pg_proxy.port}"))


# --- load: HTTP senders and readers -------------------------------------------------------


class Load:
    """HTTP senders (each message retried with its client_msg_id until acknowledged)
    and one HTTP reader, in threads, against whichever server `target` names."""

    def __init__(self, sessions, project_id, target, *, interval=0.2, reader=None):
        self.sessions, self.project_id = sessions, project_id
        self.target = target  # base URL; a test may switch it
        self.interval = interval
        self.reader = reader
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.statuses = collections.Counter()
        self.read_statuses = collections.Counter()
        self.acked = {}  # client_msg_id -> message id
        self.ack_answers = collections.defaultdict(set)  # client_msg_id -> ids answered
        self.latencies = []  # (started monotonic, seconds, status)
        self.retry_after_missing = 0
        self.threads = []

    def start(self):
        for k, session in enumerate(self.sessions):
            self.threads.append(threading.Thread(target=self._send_loop, args=(k, session),
                                                 daemon=True))
        if self.reader is not None:
            self.threads.append(threading.Thread(target=self._read_loop, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def _record(self, started, status, response=None):
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append((started, time.monotonic() - started, status))
            if status == 503 and response is not None and "Retry-After" not in response.headers:
                self.retry_after_missing += 1

    def _send_loop(self, k, session):
        i = 0
        while not self.stop_event.is_set():
            cid = str(uuid.uuid4())
            body = {"project_id": self.project_id, "content": f"load{k}-{i}",
                    "client_msg_id": cid}
            i += 1
            # Keep trying this message until it is acknowledged: a client that
            # got no answer (or a 503) sends it again with the same id.
            while True:
                started = time.monotonic()
                base = self.target
                try:
                    r = session.post(base + "/api/messages", json=body, timeout=15, headers={
                        "X-CSRFToken": session.csrf, "Referer": base + "/"})
                except requests.RequestException:
                    self._record(started, "conn_error")
                    time.sleep(0.2)
                    continue
                self._record(started, r.status_code, r)
                if r.status_code in (200, 201):
                    with self.lock:
                        self.acked[cid] = r.json()["id"]
                        self.ack_answers[cid].add(r.json()["id"])
                    break
                if self.stop_event.is_set() and r.status_code >= 500:
                    break
                time.sleep(0.3)
            time.sleep(self.interval)

    def _read_loop(self):
        session = self.reader
        paths = [f"/api/projects/{self.project_id}/messages?limit=20", "/api/projects",
                 f"/api/projects/{self.project_id}", "/api/auth/me"]
        n = 0
        while not self.stop_event.is_set():
            path = paths[n % len(paths)]
            n += 1
            try:
                r = session.get(self.target + path, timeout=15)
                status = r.status_code
            except requests.RequestException:
                status = "conn_error"
            with self.lock:
                self.read_statuses[status] += 1
            time.sleep(0.15)

    def five_xx(self):
        return sum(v for k, v in (self.statuses + self.read_statuses).items()
                   if isinstance(k, int) and k >= 500)


# --- socket clients that reconnect with after= --------------------------------------------


class ReconnectingClient:
    """Holds one socket open to `server`, reconnecting with after=<last changed_seq>."""

    def __init__(self, server, project_id, session):
        self.server, self.project_id, self.session = server, project_id, session
        self.seqs, self.ids = [], []
        self.last = 0
        self.reconnects = 0
        self.resyncs = 0
        self.hello_seqs = []  # the project's number in each hello

    async def run(self, stop):
        while not stop.is_set():
            url = f"{self.server.ws_url}/ws/projects/{self.project_id}/"
            if self.last:
                url += f"?after={self.last}"
            try:
                async with connect(url, origin=self.server.url, open_timeout=5,
                                   additional_headers={"Cookie": cookie_header(self.session)},
                                   max_size=2**24) as ws:
                    await self._read(ws, stop)
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            if not stop.is_set():
                self.reconnects += 1
                await asyncio.sleep(0.2)

    async def _read(self, ws, stop):
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            frame = orjson.loads(raw)
            if frame["type"] == "message_batch":
                for m in frame["messages"]:
                    self.seqs.append(m["changed_seq"])
                    self.ids.append(m["id"])
                    self.last = max(self.last, m["changed_seq"])
            elif frame["type"] == "resync_required":
                self.resyncs += 1
            elif frame["type"] == "hello":
                self.hello_seqs.append(frame["seq"])

    def check(self, final_seq):
        """(lost, duplicates, out_of_order) against 1..final_seq."""
        # Only valid for a client that was in before the first change (wait_ready).
        assert self.hello_seqs[:1] == [0], f"first connected at seq {self.hello_seqs[:1]}"
        seen = collections.Counter(self.seqs)
        lost = sum(1 for n in range(1, final_seq + 1) if n not in seen)
        duplicates = sum(c - 1 for c in seen.values() if c > 1)
        out_of_order = sum(1 for a, b in zip(self.seqs, self.seqs[1:]) if b <= a)
        return lost, duplicates, out_of_order


async def wait_ready(clients, timeout=30):
    """Wait until every client has had its first hello.

    A socket that first connects (without after=) when changes are already
    committed rightly never receives them: its hello says where it starts. The
    load may only begin once every client is in, else the check against
    1..final_seq counts that start as losses. (Under a slow Redis a socket's
    handshake takes seconds, so a fixed sleep was not enough.)
    """
    deadline = time.monotonic() + timeout
    while any(not c.hello_seqs for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert all(c.hello_seqs for c in clients), "a socket did not connect"
    await asyncio.sleep(0.2)


def project_seq(base_url, session, project_id):
    return session.get(f"{base_url}/api/projects/{project_id}", timeout=15).json()["seq"]


def all_messages(base_url, session, project_id):
    """Every message by seq, read through the cursor API."""
    rows, after = [], 0
    while True:
        r = session.get(f"{base_url}/api/projects/{project_id}/messages",
                        params={"after": after, "limit": 200}, timeout=15)
        r.raise_for_status()
        items = r.json()["items"]
        rows.extend(items)
        if not items or not r.json()["has_more"]:
            return rows
        after = items[-1]["changed_seq"]


async def wait_for_all(clients, final_seq, timeout):
    deadline = time.monotonic() + timeout
    while any(c.last < final_seq for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return time.monotonic()


def run_fault(clients, loads, begin, end, final_seq_of, *, lead=2.0, settle=2.0, until=None,
              timeout=30, during=None):
    """Socket clients and HTTP loads through one fault: begin() after `lead` s of
    load, end() OUTAGE_SECONDS later; then wait until `until(end_time)` holds (at
    most 20 s) and `settle` s more, stop the loads and wait until every client
    holds the project's final number. `during()` runs right after begin(); its
    answer is marks["during"]. Returns (final_seq, delivered_at, marks)."""
    marks = {}

    async def main():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        await wait_ready(clients)
        for load in loads:
            load.start()
        await asyncio.sleep(lead)
        marks["start"] = time.monotonic()
        await asyncio.to_thread(begin)
        if during is not None:
            marks["during"] = await asyncio.to_thread(during)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - marks["start"])))
        await asyncio.to_thread(end)
        marks["end"] = time.monotonic()
        if until is not None:
            deadline = marks["end"] + 20
            while time.monotonic() < deadline and not until(marks["end"]):
                await asyncio.sleep(0.2)
        await asyncio.sleep(settle)
        for load in loads:
            await asyncio.to_thread(load.stop)
        final_seq = await asyncio.to_thread(final_seq_of)
        done = await wait_for_all(clients, final_seq, timeout=timeout)
        stop.set()
        await asyncio.gather(*tasks)
        return final_seq, done

    final_seq, done = asyncio.run(main())
    return final_seq, done, marks


def assert_delivery(clients, final_seq, load):
    totals = {"lost": 0, "duplicates": 0, "out_of_order": 0}
    for i, c in enumerate(clients):
        lost, duplicates, out_of_order = c.check(final_seq)
        totals["lost"] += lost
        totals["duplicates"] += duplicates
        totals["out_of_order"] += out_of_order
        assert (lost, duplicates, out_of_order) == (0, 0, 0), (
            f"client {i}: lost {lost}, duplicates {duplicates}, out of order {out_of_order}; "
            f"last {c.last} of {final_seq}; received {c.seqs[:40]}")
        assert c.resyncs == 0
        # Every acknowledged message is among what the client holds.
        missing = set(load.acked.values()) - set(c.ids)
        assert not missing, f"client {i} lacks acknowledged ids {sorted(missing)[:10]}"
    return totals


def users_for(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


# --- (a) Redis cut for OUTAGE_SECONDS -----------------------------------------------------


def test_redis_cut_keeps_http_answering_and_sockets_catch_up(fault_env, redis_proxy):
    names = users_for("rc", 6)
    project_id = create_users_and_project(fault_env, names, "RedisCut")
    server = LiveServer(fault_env).start()
    try:
        sessions = [login(server.url, n) for n in names]
        listeners, senders, reader = sessions[:3], sessions[3:5], sessions[5]
        load = Load(senders, project_id, server.url, interval=0.2, reader=reader)
        clients = [ReconnectingClient(server, project_id, c) for c in listeners]
        # A sign-in during the outage: sessions and the login throttle live in
        # Redis; neither may turn a sign-in into a 5xx.
        final_seq, done, outage = run_fault(
            clients, [load], lambda: redis_proxy.set_mode("cut"),
            lambda: redis_proxy.set_mode("pass"),
            lambda: project_seq(server.url, reader, project_id),
            during=lambda: _login_status(server, names[0]))
        outage["login_status"] = outage["during"]
        in_outage = [s for started, s, status in load.latencies
                     if outage["start"] <= started <= outage["end"]]
        totals = assert_delivery(clients, final_seq, load)
        report(f"redis_cut_{OUTAGE_SECONDS:g}s", messages=final_seq, acked=len(load.acked),
               send_statuses=dict(load.statuses), read_statuses=dict(load.read_statuses),
               five_xx=load.five_xx(), login_during_outage=outage["login_status"],
               max_send_seconds_during_outage=round(max(in_outage, default=0), 2),
               sends_during_outage=len(in_outage),
               all_delivered_seconds_after_restore=round(done - outage["end"], 2),
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert load.five_xx() == 0, (load.statuses, load.read_statuses)
        assert set(load.statuses) <= {200, 201}, load.statuses
        assert set(load.read_statuses) <= {200}, load.read_statuses
        assert outage["login_status"] == 200
        assert len(in_outage) > 0, "no send happened during the outage"
        assert final_seq == len(load.acked)
    finally:
        server.stop()


def _login_status(server, username):
    try:
        login(server.url, username)
        return 200
    except requests.HTTPError as error:
        return error.response.status_code
    except requests.RequestException as error:
        return type(error).__name__


# --- (b) 200 ms each way on Redis ---------------------------------------------------------


def test_redis_delay_slows_delivery_but_keeps_it_complete_and_ordered(fault_env, redis_proxy):
    names = users_for("rd", 7)
    project_id = create_users_and_project(fault_env, names, "RedisDelay")
    server = LiveServer(fault_env).start()
    try:
        sessions = [login(server.url, n) for n in names]
        redis_proxy.set_mode("delay", 0.2)
        load = Load(sessions[3:7], project_id, server.url, interval=0.0)

        async def main():
            stop = asyncio.Event()
            clients = [ReconnectingClient(server, project_id, s) for s in sessions[:3]]
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await wait_ready(clients)
            load.start()
            await asyncio.sleep(8.0)
            await asyncio.to_thread(load.stop)
            stopped = time.monotonic()
            final_seq = await asyncio.to_thread(project_seq, server.url, sessions[0], project_id)
            done = await wait_for_all(clients, final_seq, timeout=30)
            stop.set()
            await asyncio.gather(*tasks)
            return clients, final_seq, done - stopped

        clients, final_seq, drain = asyncio.run(main())
        totals = assert_delivery(clients, final_seq, load)
        send_seconds = sorted(s for _, s, _ in load.latencies)
        report("redis_delay_200ms_each_way", messages=final_seq, acked=len(load.acked),
               five_xx=load.five_xx(), send_statuses=dict(load.statuses),
               send_p50_seconds=round(send_seconds[len(send_seconds) // 2], 3),
               send_max_seconds=round(send_seconds[-1], 3), sends=len(send_seconds),
               all_delivered_seconds_after_last_send=round(drain, 2),
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert load.five_xx() == 0
        assert final_seq == len(load.acked) >= 4
    finally:
        redis_proxy.set_mode("pass")
        server.stop()


# --- (c) a server process killed with SIGKILL mid-load ------------------------------------


def test_sigkilled_process_loses_nothing(fault_env):
    names = users_for("sk", 7)
    project_id = create_users_and_project(fault_env, names, "Sigkill")
    a = LiveServer(fault_env).start()
    b = LiveServer(fault_env).start()
    try:
        sessions = [login(a.url, n) for n in names]  # sessions are shared by both
        # Two senders on A with no pause, so requests are in flight when it dies.
        load_a = Load(sessions[4:6], project_id, a.url, interval=0.0)
        load_b = Load(sessions[6:7], project_id, b.url, interval=0.1)

        async def main():
            stop = asyncio.Event()
            clients = [ReconnectingClient(a, project_id, s) for s in sessions[:4]]
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await wait_ready(clients)
            load_a.start()
            load_b.start()
            await asyncio.sleep(2.0)
            a.kill()
            killed = time.monotonic()
            load_a.target = b.url  # its client fails over, resending unacknowledged ids
            for c in clients:
                c.server = b  # reconnect to B with after=
            await asyncio.sleep(2.0)
            await asyncio.to_thread(load_a.stop)
            await asyncio.to_thread(load_b.stop)
            final_seq = await asyncio.to_thread(project_seq, b.url, sessions[0], project_id)
            done = await wait_for_all(clients, final_seq, timeout=30)
            stop.set()
            await asyncio.gather(*tasks)
            return clients, final_seq, done - killed

        clients, final_seq, after_kill = asyncio.run(main())
        acked = {**load_a.acked, **load_b.acked}
        merged = Load([], project_id, b.url)
        merged.acked = acked
        totals = assert_delivery(clients, final_seq, merged)
        rows = all_messages(b.url, sessions[0], project_id)
        per_cid = collections.Counter(m["client_msg_id"] for m in rows)
        duplicate_rows = sum(c - 1 for c in per_cid.values() if c > 1)
        report("sigkill_one_of_two_processes", messages=final_seq, acked=len(acked),
               send_statuses_a=dict(load_a.statuses), send_statuses_b=dict(load_b.statuses),
               duplicate_rows=duplicate_rows,
               all_delivered_seconds_after_kill=round(after_kill, 2),
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert duplicate_rows == 0
        assert load_b.five_xx() == 0 and load_a.five_xx() == 0
        assert all(m["client_msg_id"] in per_cid for m in rows)
        assert set(acked) <= set(per_cid)
    finally:
        a.stop()
        b.stop()



# --- PostgreSQL away: the shared run and checks of the cut, blackhole and stop cases ---


def run_postgres_outage(server, project_id, sessions, begin, end):
    """Load (2 senders, 1 reader, 1 socket client) through an outage that begin()
    starts and end() ends OUTAGE_SECONDS later; run until a send succeeds again
    (at most 20 s) and 2 s more. Return the figures the tests report and check."""
    load = Load([sessions[1], sessions[3]], project_id, server.url, interval=0.2,
                reader=sessions[2])
    client = ReconnectingClient(server, project_id, sessions[0])

    def recovered(end):
        return any(st in (200, 201) and t + s > end for t, s, st in list(load.latencies))

    final_seq, _, marks = run_fault(
        [client], [load], begin, end,
        lambda: project_seq(server.url, sessions[2], project_id), until=recovered)
    during = [(t, s, st) for t, s, st in load.latencies if marks["start"] <= t <= marks["end"]]
    first_ok = min((t + s for t, s, st in load.latencies
                    if st in (200, 201) and t + s > marks["end"]), default=None)
    per_cid = collections.Counter(
        m["client_msg_id"] for m in all_messages(server.url, sessions[2], project_id))
    socket_lost, socket_duplicates, socket_out_of_order = client.check(final_seq)
    return load, {
        "messages": final_seq, "stored_messages": len(per_cid), "acked": len(load.acked),
        "send_statuses": dict(load.statuses), "read_statuses": dict(load.read_statuses),
        "five_xx_other_than_503": sum(
            v for k, v in (load.statuses + load.read_statuses).items()
            if isinstance(k, int) and k >= 500 and k != 503),
        "sends_during_outage": len(during),
        "max_send_seconds_during_outage": round(max((s for _, s, _ in during), default=0), 2),
        "retry_after_missing": load.retry_after_missing,
        "first_success_seconds_after_restore": (
            None if first_ok is None else round(first_ok - marks["end"], 2)),
        "lost": len(set(load.acked) - set(per_cid)),
        "duplicate_rows": sum(c - 1 for c in per_cid.values() if c > 1),
        "socket_lost": socket_lost, "socket_duplicates": socket_duplicates,
        "socket_out_of_order": socket_out_of_order,
    }


def assert_postgres_outage(load, figures, pool_timeout):
    """503 + Retry-After within the pool timeout, recovery by itself, nothing lost."""
    statuses = set(load.statuses) | set(load.read_statuses)
    assert statuses <= {200, 201, 503}, (load.statuses, load.read_statuses)
    assert load.statuses[503] > 0, "the outage was not seen by any send"
    assert figures["retry_after_missing"] == 0
    assert figures["max_send_seconds_during_outage"] < pool_timeout + 3.0, "a send hung"
    recovery = figures["first_success_seconds_after_restore"]
    assert recovery is not None and recovery < 15, f"no recovery: {recovery}"
    assert figures["lost"] == 0 and figures["duplicate_rows"] == 0
    assert figures["messages"] == figures["stored_messages"]
    assert (figures["socket_lost"], figures["socket_duplicates"],
            figures["socket_out_of_order"]) == (0, 0, 0)

# --- (d, g) PostgreSQL cut, or partitioned (blackhole), for OUTAGE_SECONDS -------------------


@pytest.mark.parametrize("mode", ["cut", "blackhole"])
def test_postgres_away_answers_503_in_bounded_time_and_recovers(fault_env, pg_proxy, mode):
    """cut: every connection is reset. blackhole: open connections are dropped and
    new ones are accepted but never answered, so only timeouts tell. Either way
    sends answer 503 + Retry-After within the pool timeout (none may hang),
    nothing acknowledged is lost, and the server recovers by itself (a connection
    attempt stuck in the partition must not keep the pool empty afterwards)."""
    names = users_for(f"p{mode[0]}", 4)
    project_id = create_users_and_project(fault_env, names, f"Pg {mode}")
    pool_timeout = 2.0
    server = LiveServer(fault_env, extra_env={
        "DATABASE_URL": proxied_database_url(fault_env, pg_proxy),
        "DB_POOL_TIMEOUT": str(pool_timeout)}).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load, figures = run_postgres_outage(server, project_id, sessions,
                                            lambda: pg_proxy.set_mode(mode),
                                            lambda: pg_proxy.set_mode("pass"))
        report(f"postgres_{mode}_{OUTAGE_SECONDS:g}s", **figures)
        assert_postgres_outage(load, figures, pool_timeout)
    finally:
        pg_proxy.set_mode("pass")
        server.stop()


# --- (e) Redis partitioned (blackhole) for OUTAGE_SECONDS ---------------------------------


def test_redis_blackhole_slows_but_fails_nothing(fault_env, redis_proxy):
    """Unlike a cut, a partition answers nothing: every Redis call waits for its
    socket timeout. HTTP must still answer without a 5xx, and sockets catch up."""
    names = users_for("rb", 4)
    project_id = create_users_and_project(fault_env, names, "RedisBlackhole")
    server = LiveServer(fault_env).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load = Load(sessions[2:3], project_id, server.url, interval=0.2, reader=sessions[3])
        clients = [ReconnectingClient(server, project_id, c) for c in sessions[:2]]
        final_seq, done, outage = run_fault(
            clients, [load], lambda: redis_proxy.set_mode("blackhole"),
            lambda: redis_proxy.set_mode("pass"),
            lambda: project_seq(server.url, sessions[3], project_id), lead=1.5, timeout=40)
        in_outage = [s for started, s, _ in load.latencies
                     if outage["start"] <= started <= outage["end"]]
        totals = assert_delivery(clients, final_seq, load)
        report(f"redis_blackhole_{OUTAGE_SECONDS:g}s", messages=final_seq, acked=len(load.acked),
               send_statuses=dict(load.statuses), read_statuses=dict(load.read_statuses),
               five_xx=load.five_xx(), sends_during_outage=len(in_outage),
               max_send_seconds_during_outage=round(max(in_outage, default=0), 2),
               all_delivered_seconds_after_restore=round(done - outage["end"], 2),
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert load.five_xx() == 0, (load.statuses, load.read_statuses)
        assert final_seq == len(load.acked)
    finally:
        redis_proxy.set_mode("pass")
        server.stop()


# --- (f) 200 ms each way on PostgreSQL ------------------------------------------------------


def test_postgres_delay_slows_sends_but_keeps_delivery_complete(fault_env, pg_proxy):
    """Every statement pays a 400 ms round trip: sends are slow but succeed, and
    delivery stays complete and ordered."""
    names = users_for("pd", 5)
    project_id = create_users_and_project(fault_env, names, "PgDelay")
    server = LiveServer(fault_env, extra_env={
        "DATABASE_URL": proxied_database_url(fault_env, pg_proxy)}).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load = Load(sessions[2:4], project_id, server.url, interval=0.2, reader=sessions[4])
        clients = [ReconnectingClient(server, project_id, c) for c in sessions[:2]]
        final_seq, done, marks = run_fault(
            clients, [load], lambda: pg_proxy.set_mode("delay", 0.2),
            lambda: pg_proxy.set_mode("pass"),
            lambda: project_seq(server.url, sessions[4], project_id), lead=1.5, settle=1.5)
        during = sorted(s for t, s, _ in load.latencies if marks["start"] <= t <= marks["end"])
        totals = assert_delivery(clients, final_seq, load)
        report(f"postgres_delay_200ms_each_way_{OUTAGE_SECONDS:g}s", messages=final_seq,
               acked=len(load.acked), send_statuses=dict(load.statuses),
               read_statuses=dict(load.read_statuses), five_xx=load.five_xx(),
               sends_during_delay=len(during),
               send_p50_seconds_during_delay=round(during[len(during) // 2], 2) if during else None,
               send_max_seconds_during_delay=round(during[-1], 2) if during else None,
               all_delivered_seconds_after_restore=round(done - marks["end"], 2),
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert load.five_xx() == 0, (load.statuses, load.read_statuses)
        assert set(load.statuses) <= {200, 201}, load.statuses
        assert set(load.read_statuses) <= {200}, load.read_statuses
        assert len(during) > 0, "no send happened during the delay"
        assert final_seq == len(load.acked)
    finally:
        pg_proxy.set_mode("pass")
        server.stop()


# --- (h) a real Redis server stopped and started again ------------------------------------


class RedisServer:
    """A throwaway redis-server of this test (never the machine's shared one):
    its own port and directory, no persistence, so a restart starts empty."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chat-redis-")
        self.proc = None

    def url(self, db=1):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout=10):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self):
        """SIGTERM: Redis closes every client connection and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer().start()
    yield server
    server.cleanup()


def test_real_redis_stop_and_restart_loses_nothing(fault_env, own_redis):
    """The servers' own redis-server is stopped for OUTAGE_SECONDS and started again
    (empty) on the same port: two server processes keep answering without a 5xx,
    and after the restart every socket, on either process, holds every
    acknowledged message once and in order (bus subscriptions come back)."""
    names = users_for("rr", 8)
    project_id = create_users_and_project(fault_env, names, "RedisRestart")
    extra = {"REDIS_URL": own_redis.url(1)}
    a = LiveServer(fault_env, extra_env=extra).start()
    b = LiveServer(fault_env, extra_env=extra).start()
    try:
        sessions = [login(a.url, n) for n in names]  # sessions work on both
        load_a = Load(sessions[4:5], project_id, a.url, interval=0.2, reader=sessions[6])
        load_b = Load(sessions[5:6], project_id, b.url, interval=0.2, reader=sessions[7])
        clients = [ReconnectingClient(server, project_id, c)
                   for server, c in zip((a, a, b, b), sessions[:4])]
        final_seq, done, outage = run_fault(
            clients, [load_a, load_b], own_redis.stop, own_redis.start,
            lambda: project_seq(a.url, sessions[6], project_id),
            during=lambda: _login_status(b, names[0]))
        outage["login_status"] = outage["during"]
        merged = Load([], project_id, a.url)
        merged.acked = {**load_a.acked, **load_b.acked}
        statuses = load_a.statuses + load_b.statuses
        read_statuses = load_a.read_statuses + load_b.read_statuses
        in_outage = [s for load in (load_a, load_b) for started, s, _ in load.latencies
                     if outage["start"] <= started <= outage["end"]]
        totals = assert_delivery(clients, final_seq, merged)
        rows = all_messages(a.url, sessions[6], project_id)
        per_cid = collections.Counter(m["client_msg_id"] for m in rows)
        duplicate_rows = sum(c - 1 for c in per_cid.values() if c > 1)
        report(f"redis_stop_restart_{OUTAGE_SECONDS:g}s", messages=final_seq,
               acked=len(merged.acked), send_statuses=dict(statuses),
               read_statuses=dict(read_statuses),
               five_xx=load_a.five_xx() + load_b.five_xx(),
               login_during_outage=outage["login_status"], sends_during_outage=len(in_outage),
               max_send_seconds_during_outage=round(max(in_outage, default=0), 2),
               all_delivered_seconds_after_restart=round(done - outage["end"], 2),
               duplicate_rows=duplicate_rows,
               reconnects=sum(c.reconnects for c in clients), **totals)
        assert load_a.five_xx() + load_b.five_xx() == 0, (statuses, read_statuses)
        assert set(statuses) <= {200, 201}, statuses
        assert set(read_statuses) <= {200}, read_statuses
        assert outage["login_status"] == 200
        assert len(in_outage) > 0, "no send happened during the outage"
        assert duplicate_rows == 0
        assert final_seq == len(merged.acked)
    finally:
        a.stop()
        b.stop()


# --- (i) a real PostgreSQL server stopped and started again -------------------------------


def _pg_bin():
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster of this test (never the machine's shared
    one): initdb in a temporary directory, its own port, run as user postgres."""

    def __init__(self, bin_dir):
        self.bin = bin_dir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="chat-pg-")
        self.data = os.path.join(self.dir, "data")
        shutil.chown(self.dir, "postgres", "postgres")

    def url(self, name="postgres"):
        return f"postgres://root@127.0.0.1:{self.port}/{name}"

    def _run(self, *args, timeout=60):
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, cwd=self.dir)

    def init(self):
        self._run("initdb", "-D", self.data, "-U", "root", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        return self

    def start(self):
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o",
                  options, "-w", "-t", "30", "start")
        return self

    def stop(self):
        """A fast shutdown: every session is terminated, as a restarted server's are."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop")

    def cleanup(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres(monkeypatch):
    bin_dir = _pg_bin()
    if bin_dir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL's server binaries and root (to run them as postgres)")
    started = time.monotonic()
    cluster = PostgresCluster(bin_dir).init().start()
    # make_live_env creates and migrates its database on the cluster DATABASE_URL names.
    monkeypatch.setenv("DATABASE_URL", cluster.url())
    env, close = make_live_env()
    cluster.setup_seconds = round(time.monotonic() - started, 1)
    yield cluster, env
    close()
    cluster.cleanup()


def test_real_postgres_stop_and_restart_answers_503_and_recovers(own_postgres):
    """The servers' own PostgreSQL is shut down (fast: sessions terminated) for
    OUTAGE_SECONDS and started again: sends answer 503 + Retry-After within the
    pool timeout, nothing acknowledged is lost or doubled, and the server works
    again by itself."""
    cluster, env = own_postgres
    names = users_for("pr", 4)
    project_id = create_users_and_project(env, names, "PgRestart")
    pool_timeout = 2.0
    server = LiveServer(env, extra_env={"DB_POOL_TIMEOUT": str(pool_timeout)}).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load, figures = run_postgres_outage(server, project_id, sessions,
                                            cluster.stop, cluster.start)
        report(f"postgres_stop_restart_{OUTAGE_SECONDS:g}s", **figures,
               cluster_setup_seconds=cluster.setup_seconds)
        assert_postgres_outage(load, figures, pool_timeout)
    finally:
        server.stop()
