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
import threading
import time
import uuid
from urllib.parse import urlparse, urlunparse

import orjson
import pytest
import requests
import websockets
from websockets.asyncio.client import connect

from tests.live import LiveServer, cookie_header, create_users_and_project, login, make_live_env
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.live, pytest.mark.redis, pytest.mark.postgres]

OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "5"))


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


# --- fixtures ---------------------------------------------------------------------------


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

    def check(self, final_seq):
        """(lost, duplicates, out_of_order) against 1..final_seq."""
        seen = collections.Counter(self.seqs)
        lost = sum(1 for n in range(1, final_seq + 1) if n not in seen)
        duplicates = sum(c - 1 for c in seen.values() if c > 1)
        out_of_order = sum(1 for a, b in zip(self.seqs, self.seqs[1:]) if b <= a)
        return lost, duplicates, out_of_order


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


# --- (a) Redis cut for ~5 s ---------------------------------------------------------------


def test_redis_cut_keeps_http_answering_and_sockets_catch_up(fault_env, redis_proxy):
    names = users_for("rc", 6)
    project_id = create_users_and_project(fault_env, names, "RedisCut")
    server = LiveServer(fault_env).start()
    try:
        sessions = [login(server.url, n) for n in names]
        listeners, senders, reader = sessions[:3], sessions[3:5], sessions[5]
        load = Load(senders, project_id, server.url, interval=0.2, reader=reader)
        outage = {}

        async def main():
            stop = asyncio.Event()
            clients = [ReconnectingClient(server, project_id, s) for s in listeners]
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await asyncio.sleep(1.0)
            load.start()
            await asyncio.sleep(2.0)
            redis_proxy.set_mode("cut")
            outage["start"] = time.monotonic()
            # A sign-in during the outage: sessions and the login throttle live
            # in Redis; neither may turn a sign-in into a 5xx.
            outage["login_status"] = await asyncio.to_thread(_login_status, server, names[0])
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage["start"])))
            redis_proxy.set_mode("pass")
            outage["end"] = time.monotonic()
            await asyncio.sleep(2.0)
            await asyncio.to_thread(load.stop)
            final_seq = await asyncio.to_thread(project_seq, server.url, reader, project_id)
            done = await wait_for_all(clients, final_seq, timeout=30)
            stop.set()
            await asyncio.gather(*tasks)
            return clients, final_seq, done

        clients, final_seq, done = asyncio.run(main())
        in_outage = [s for started, s, status in load.latencies
                     if outage["start"] <= started <= outage["end"]]
        totals = assert_delivery(clients, final_seq, load)
        report("redis_cut_5s", messages=final_seq, acked=len(load.acked),
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
            await asyncio.sleep(1.0)
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
            await asyncio.sleep(1.0)
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


# --- (d) PostgreSQL cut for ~5 s ------------------------------------------------------------


def test_postgres_cut_answers_503_and_recovers_by_itself(fault_env, pg_proxy):
    names = users_for("pc", 4)
    project_id = create_users_and_project(fault_env, names, "PgCut")
    parts = urlparse(fault_env["DATABASE_URL"])
    proxied = urlunparse(parts._replace(netloc=f"{parts.username or 'root'}"
                                        f"{':' + parts.password if parts.password else ''}"
                                        f"@127.0.0.1:{pg_proxy.port}"))
    pool_timeout = 2.0
    server = LiveServer(fault_env, extra_env={
        "DATABASE_URL": proxied, "DB_POOL_TIMEOUT": str(pool_timeout)}).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load = Load([sessions[1], sessions[3]], project_id, server.url, interval=0.2,
                    reader=sessions[2])
        marks = {}

        async def main():
            stop = asyncio.Event()
            client = ReconnectingClient(server, project_id, sessions[0])
            task = asyncio.create_task(client.run(stop))
            await asyncio.sleep(1.0)
            load.start()
            await asyncio.sleep(2.0)
            pg_proxy.set_mode("cut")
            marks["start"] = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            pg_proxy.set_mode("pass")
            marks["end"] = time.monotonic()
            await asyncio.sleep(4.0)
            await asyncio.to_thread(load.stop)
            final_seq = await asyncio.to_thread(project_seq, server.url, sessions[2], project_id)
            await wait_for_all([client], final_seq, timeout=30)
            stop.set()
            await task
            return client, final_seq

        client, final_seq = asyncio.run(main())
        sends = load.latencies
        during = [(t, s, st) for t, s, st in sends if marks["start"] <= t <= marks["end"]]
        first_ok = min((t + s for t, s, st in sends
                        if st in (200, 201) and t + s > marks["end"]), default=None)
        recovery = None if first_ok is None else round(first_ok - marks["end"], 2)
        rows = all_messages(server.url, sessions[2], project_id)
        per_cid = collections.Counter(m["client_msg_id"] for m in rows)
        lost = len(set(load.acked) - set(per_cid))
        duplicate_rows = sum(c - 1 for c in per_cid.values() if c > 1)
        lost_socket, duplicates_socket, out_of_order = client.check(final_seq)
        report("postgres_cut_5s", messages=final_seq, acked=len(load.acked),
               send_statuses=dict(load.statuses), read_statuses=dict(load.read_statuses),
               five_xx_other_than_503=sum(v for k, v in (load.statuses + load.read_statuses)
                                          .items() if isinstance(k, int) and k >= 500
                                          and k != 503),
               sends_during_outage=len(during),
               max_send_seconds_during_outage=round(max((s for _, s, _ in during), default=0), 2),
               retry_after_missing=load.retry_after_missing,
               first_success_seconds_after_restore=recovery, lost=lost,
               duplicate_rows=duplicate_rows, socket_lost=lost_socket,
               socket_duplicates=duplicates_socket, socket_out_of_order=out_of_order)
        statuses = set(load.statuses) | set(load.read_statuses)
        assert statuses <= {200, 201, 503}, (load.statuses, load.read_statuses)
        assert load.statuses[503] > 0, "the outage was not seen by any send"
        assert load.retry_after_missing == 0
        assert max(s for _, s, _ in during) < pool_timeout + 3.0
        assert recovery is not None and recovery < 15
        assert lost == 0 and duplicate_rows == 0
        assert (lost_socket, duplicates_socket, out_of_order) == (0, 0, 0)
    finally:
        pg_proxy.set_mode("pass")
        server.stop()


# --- (e) Redis partitioned (blackhole) for ~5 s ----------------------------------------------


def test_redis_blackhole_slows_but_fails_nothing(fault_env, redis_proxy):
    """Unlike a cut, a partition answers nothing: every Redis call waits for its
    socket timeout. HTTP must still answer without a 5xx, and sockets catch up."""
    names = users_for("rb", 4)
    project_id = create_users_and_project(fault_env, names, "RedisBlackhole")
    server = LiveServer(fault_env).start()
    try:
        sessions = [login(server.url, n) for n in names]
        load = Load(sessions[2:3], project_id, server.url, interval=0.2, reader=sessions[3])
        outage = {}

        async def main():
            stop = asyncio.Event()
            clients = [ReconnectingClient(server, project_id, s) for s in sessions[:2]]
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await asyncio.sleep(1.0)
            load.start()
            await asyncio.sleep(1.5)
            redis_proxy.set_mode("blackhole")
            outage["start"] = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            redis_proxy.set_mode("pass")
            outage["end"] = time.monotonic()
            await asyncio.sleep(2.0)
            await asyncio.to_thread(load.stop)
            final_seq = await asyncio.to_thread(project_seq, server.url, sessions[3], project_id)
            done = await wait_for_all(clients, final_seq, timeout=40)
            stop.set()
            await asyncio.gather(*tasks)
            return clients, final_seq, done

        clients, final_seq, done = asyncio.run(main())
        in_outage = [s for started, s, _ in load.latencies
                     if outage["start"] <= started <= outage["end"]]
        totals = assert_delivery(clients, final_seq, load)
        report("redis_blackhole_5s", messages=final_seq, acked=len(load.acked),
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
