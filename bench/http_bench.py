"""HTTP benchmarks, each comparing two ways side by side in one run (wrk on loopback).

Usage:
    .venv/bin/python bench/http_bench.py [--only NAME ...] [--duration 10]
        [--messages 1000000] [--out bench/results/http.md]

Needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL; defaults to the local
services) and wrk (apt-get install wrk). Every server is the production HTTP
server (granian's WSGI interface, one worker per core, as `make serve`) started
on its own database; the "server" section compares it with uvicorn + a2wsgi.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

from tests.live import LiveServer, cookie_header, login, make_live_env, run_manage  # noqa: E402

LOAD_PASSWORD = "bench-pass-123"


def wrk(url, cookie=None, *, duration, connections=64, threads=2, headers=()):
    # A 30 s timeout: a slow variant (a deep OFFSET page) is measured, not dropped.
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           "--timeout", "30s", "-s", str(ROOT / "bench/percentiles.lua")]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: f"{float(v):.2f}ms" for p, v in re.findall(r"^PCT (\d+) ([\d.]+)", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": lat.get("50"), "p90": lat.get("90"), "p95": lat.get("95"),
            "p99": lat.get("99"),
            "errors": int(non2xx.group(1)) if non2xx else 0, "raw": out}


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows = []
        self.env, self.close = make_live_env()

    def seed(self, messages):
        t0 = time.monotonic()
        run_manage(self.env, "seed_demo", "--users", "20", "--projects", "2",
                   "--messages", str(messages), "--password", LOAD_PASSWORD, timeout=1800)
        run_manage(self.env, "shell", "-c", "from django.db import connection;"
                   "connection.cursor().execute('ANALYZE')")
        return time.monotonic() - t0

    def server(self, extra=None, workers=None, http="granian"):
        """The production HTTP server (granian WSGI, as `make serve`), or uvicorn."""
        return LiveServer(self.env, workers=workers or os.cpu_count() or 2,
                          extra_env=extra, http=http, threads=self.args.threads).start()

    def measure(self, server, path, *, cookie=True, headers=(), label=""):
        session = login(server.url, "user1", LOAD_PASSWORD) if cookie else None
        url = server.url + path
        wrk(url, cookie_header(session) if session else None, duration=2, headers=headers)
        before = server.cpu_seconds()
        import threading

        sampled = []
        sampler = threading.Timer(self.args.duration / 2,
                                  lambda: sampled.append(self.open_connections()))
        sampler.start()
        result = wrk(url, cookie_header(session) if session else None,
                     duration=self.args.duration, headers=headers)
        sampler.join()
        result["connections"] = sampled[0] if sampled else None
        result["cpu_ms_per_req"] = (
            (server.cpu_seconds() - before) * 1000
            / max(1, result["rps"] * self.args.duration)
        )
        result["label"] = label or path
        return result

    def open_connections(self):
        """Connections the server holds to its database right now (pg_stat_activity)."""
        import psycopg

        url = self.env["DATABASE_URL"]
        if not url.startswith("postgres"):
            return None
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()", [name]).fetchone()[0]

    def project_id(self, server, name="General"):
        session = login(server.url, "user1", LOAD_PASSWORD)
        items = session.get(server.url + "/api/projects").json()["items"]
        return next(p["id"] for p in items if p["name"] == name)


RICH_TEXTS = [
    "**Release** is _tomorrow_: see https://example.com/notes and `make deploy` @user2",
    "> quoted from the spec\n\n- one\n- two with `code`\n- ~~three~~ done",
    "```\nSELECT id FROM chat_message WHERE project_id = 1 ORDER BY seq DESC LIMIT 50;\n```",
    "Thanks @user3, that fixed it. Plain words for the rest of the line, as most are.",
]
RICH_EMOJI = ["👍", "🎉", "❤️"]


def seed_rich_project(base_url, *, messages=60, reactors=3):
    """A project of formatted messages, each with RICH_EMOJI reactions by `reactors`
    users, created through the API (as a client would); returns its id."""
    owner = login(base_url, "user1", LOAD_PASSWORD)
    def post(session, path, body):
        r = session.post(base_url + path, json=body, timeout=30, headers={
            "X-CSRFToken": session.csrf, "Referer": base_url + "/"})
        r.raise_for_status()
        return r.json() if r.content else None
    pid = post(owner, "/api/projects", {"name": "Rich", "description": "formatted"})["id"]
    sessions = [owner]
    for n in range(2, 2 + reactors):
        member = login(base_url, f"user{n}", LOAD_PASSWORD)
        post(member, f"/api/projects/{pid}/join", {})
        sessions.append(member)
    for i in range(messages):
        message = post(owner, "/api/messages",
                       {"project_id": pid, "content": RICH_TEXTS[i % len(RICH_TEXTS)]})
        for member, emoji in zip(sessions[1:], RICH_EMOJI * reactors, strict=False):
            post(member, f"/api/messages/{message['id']}/reactions", {"emoji": emoji})
    return pid


def png_bytes(target=100_000):
    """A PNG of about `target` bytes (noise does not compress)."""
    import io

    from PIL import Image

    side = int((target / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def upload_rate(base_url, project_id, data, name, count):
    """Upload `data` `count` times through POST /api/uploads; return (MB/s, ms each, ids)."""
    session = login(base_url, "user1", LOAD_PASSWORD)
    headers = {"X-CSRFToken": session.csrf, "Referer": base_url + "/"}
    ids, started = [], time.monotonic()
    for _ in range(count):
        r = session.post(base_url + "/api/uploads", data={"project_id": project_id},
                         files={"file": (name, data)}, headers=headers, timeout=60)
        r.raise_for_status()
        ids.append(r.json()["id"])
    took = time.monotonic() - started
    return len(data) * count / took / 1e6, took / count * 1000, ids


def attach(base_url, project_id, upload_id):
    session = login(base_url, "user1", LOAD_PASSWORD)
    r = session.post(base_url + "/api/messages", json={
        "project_id": project_id, "content": "", "attachment_ids": [upload_id]},
        headers={"X-CSRFToken": session.csrf, "Referer": base_url + "/"}, timeout=30)
    r.raise_for_status()
    return r.json()["attachments"][0]["url"]


def body_size(base_url, path):
    return len(login(base_url, "user1", LOAD_PASSWORD).get(
        base_url + path, headers={"Accept-Encoding": "identity"}).content)


def table(title, rows, command):
    lines = [f"### {title}", "", f"Command: `{command}`", "",
             "| variant | req/s | p50 | p90 | p95 | p99 | non-2xx | server CPU ms/req "
             "| DB connections open (mid-run) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rps']:,.0f} | {r['p50']} | {r['p90']} | {r['p95']} "
                     f"| {r['p99']} "
                     f"| {r['errors']} | {r['cpu_ms_per_req']:.3f} | {r.get('connections')} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=8,
                        help="granian blocking threads per worker (make serve's HTTP_THREADS)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/http.md"))
    args = parser.parse_args()
    command = "python bench/http_bench.py " + " ".join(sys.argv[1:])
    bench = Bench(args)
    sections = []
    try:
        seed_seconds = bench.seed(args.messages)
        want = set(args.only or ["cache", "server", "metrics", "compression", "static", "pool",
                                 "depth"])
        if "cache" in want:
            on = bench.server()
            pid = bench.project_id(on)
            page = f"/api/projects/{pid}/messages"
            rows = [
                bench.measure(on, "/healthz", cookie=False,
                              label="framework ceiling: trivial view (/healthz) through Django"),
                bench.measure(on, page, label="first history page, cached, hot path"),
                bench.measure(on, "/api/projects", label="project list, cached, hot path"),
                bench.measure(on, f"/api/messages?project_id={pid}",
                              label="page-numbered first page, cached, hot path"),
            ]
            on.stop()
            django_path = bench.server({"HOT_PATH": "false"})
            rows.append(bench.measure(django_path, page,
                                      label="first history page, cached, through Django"))
            rows.append(bench.measure(django_path, f"/api/messages?project_id={pid}",
                                      label="page-numbered first page, cached, through Django"))
            django_path.stop()
            off = bench.server({"CACHE_HOT_READS": "false"})
            rows.append(bench.measure(off, page, label="first history page, uncached"))
            off.stop()
            sections.append(table("Cached vs uncached first history page (granian, 64 "
                                  "connections)", rows, command))
        if "rich" in want:
            # Today's plain first page next to a page of formatted messages with
            # reactions (docs/PERFORMANCE.md "Richer messages").
            srv = bench.server({"SEND_RATE_PER_USER": "0"})
            pid = bench.project_id(srv)
            rich = seed_rich_project(srv.url)
            plain_page = f"/api/projects/{pid}/messages"
            rich_page = f"/api/projects/{rich}/messages"
            rows = [
                bench.measure(srv, "/healthz", cookie=False, label="calibration: /healthz"),
                bench.measure(srv, plain_page, label="first history page, plain seed text, "
                              f"{body_size(srv.url, plain_page):,} B"),
                bench.measure(srv, rich_page, label="first history page, formatted + 3 "
                              f"reactions each, {body_size(srv.url, rich_page):,} B"),
            ]
            srv.stop()
            sections.append(table("Richer messages: cached first history page, hot path "
                                  "(granian, 64 connections)", rows, command))
        if "uploads" in want:
            # Attachments (docs/PERFORMANCE.md "Richer messages"): uploads through
            # the API, and a 100 KB image downloaded through the access check,
            # streamed by the app server or handed to nginx (X-Accel-Redirect:
            # the app's side only, nginx would send the bytes).
            image = png_bytes()
            rows, notes = [], []
            for label, extra in (("streamed by the app server", {}),
                                 ("UPLOAD_ACCEL_REDIRECT (headers only)",
                                  {"UPLOAD_ACCEL_REDIRECT": "/protected-uploads/"})):
                srv = bench.server(extra)
                pid = bench.project_id(srv)
                if not notes:
                    big = os.urandom(10 * 1024 * 1024)
                    mbps, each, _ = upload_rate(srv.url, pid, big, "big.bin", 5)
                    notes.append(f"10 MiB file: {mbps:.0f} MB/s ({each:.0f} ms each, 5 uploads)")
                    mbps, each, _ = upload_rate(srv.url, pid, image, "pic.png", 20)
                    notes.append(f"{len(image):,} B PNG (typed from its bytes, thumbnail made): "
                                 f"{each:.1f} ms each, 20 uploads")
                _mbps, _each, (upload_id,) = upload_rate(srv.url, pid, image, "pic.png", 1)
                url = attach(srv.url, pid, upload_id)
                rows.append(bench.measure(srv, "/healthz", cookie=False,
                                          label="calibration: /healthz"))
                rows.append(bench.measure(srv, url, label=f"{len(image):,} B image, {label}"))
                srv.stop()
            sections.append(table("Attachments: access-checked download of a 100 KB image "
                                  "(granian, 64 connections)", rows, command)
                            + "\nUploads (one client, sequential): " + "; ".join(notes) + "\n")
        if "server" in want:
            rows = []
            for http, name in (("granian", "granian WSGI"), ("uvicorn", "uvicorn + a2wsgi")):
                for extra, path_name in (({}, "hot path"), ({"HOT_PATH": "false"}, "Django")):
                    srv = bench.server(extra, http=http)
                    pid = bench.project_id(srv)
                    rows.append(bench.measure(srv, f"/api/projects/{pid}/messages",
                                              label=f"{name}, cached page, {path_name}"))
                    srv.stop()
            sections.append(table("HTTP server: granian WSGI vs uvicorn + a2wsgi (cached first "
                                  "history page)", rows, command))
        if "metrics" in want:
            rows = []
            for label, extra in (("metrics on", {}), ("metrics off", {"ENABLE_METRICS": "false"})):
                srv = bench.server(extra)
                pid = bench.project_id(srv)
                rows.append(bench.measure(srv, f"/api/projects/{pid}/messages",
                                          label=f"cached history page, {label}"))
                srv.stop()
            cost = (1 - rows[0]["rps"] / rows[1]["rps"]) * 100
            sections.append(table("Metric collection on vs off (cached history page)", rows,
                                  command) + f"\nThroughput cost of metrics: {cost:.1f} %\n")
        if "compression" in want:
            srv = bench.server()
            pid = bench.project_id(srv)
            rows = []
            for label, hdrs in (("identity", ()), ("gzip", ("Accept-Encoding: gzip",)),
                                ("brotli", ("Accept-Encoding: br",))):
                rows.append(bench.measure(srv, f"/api/projects/{pid}/messages",
                                          headers=hdrs, label=f"history page, {label}"))
            sess = login(srv.url, "user1", LOAD_PASSWORD)
            sizes = {}
            for enc in ("identity", "gzip", "br"):
                r = sess.get(srv.url + f"/api/projects/{pid}/messages",
                             headers={"Accept-Encoding": enc}, stream=True)
                sizes[enc] = len(r.raw.read())
            srv.stop()
            sections.append(table("Compressed vs uncompressed history page", rows, command)
                            + f"\nBytes on the wire: {json.dumps(sizes)}\n")
        if "static" in want:
            srv = bench.server()
            manifest = json.loads((ROOT / "staticfiles" / "staticfiles.json").read_text())
            hashed = "/static/" + manifest["paths"]["chat/chat.js"]
            rows = [bench.measure(srv, hashed, cookie=False, headers=hdrs,
                                  label=f"hashed chat.js, {label}")
                    for label, hdrs in (("identity", ()), ("brotli", ("Accept-Encoding: br",)))]
            srv.stop()
            sections.append(table("Static files from whitenoise (hashed, precompressed at "
                                  "collectstatic)", rows, command))
        if "pool" in want:
            rows = []
            for label, extra in (("psycopg pool", {}),
                                 ("no pool (connect per request)",
                                  {"DB_POOL_ENABLED": "false"})):
                srv = bench.server({**extra, "CACHE_HOT_READS": "false"})
                pid = bench.project_id(srv)
                rows.append(bench.measure(srv, f"/api/projects/{pid}", label=label))
                srv.stop()
            sections.append(table("Pool vs no pool: project detail (uncached, 2 queries)",
                                  rows, command))
        if "depth" in want:
            srv = bench.server({"CACHE_HOT_READS": "false"})
            pid = bench.project_id(srv)
            sess = login(srv.url, "user1", LOAD_PASSWORD)
            total = sess.get(srv.url + f"/api/messages?project_id={pid}&per_page=50").json()[
                "total"]
            deep_page = max(1, total // 50 - 1)
            deep_seq = total - (deep_page - 1) * 50 + 1
            rows = [
                bench.measure(srv, f"/api/messages?project_id={pid}&page=1",
                              label="page-numbered, page 1"),
                bench.measure(srv, f"/api/messages?project_id={pid}&page={deep_page}",
                              label=f"page-numbered, page {deep_page} (offset)"),
                bench.measure(srv, f"/api/projects/{pid}/messages?before={deep_seq}",
                              label=f"cursor, before={deep_seq} (same depth)"),
            ]
            srv.stop()
            sections.append(table(f"History depth on {total:,} messages in one project "
                                  "(uncached)", rows, command))
    finally:
        bench.close()
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    header = (f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
              f"{os.cpu_count()} cores ({cpu.group(1) if cpu else 'unknown CPU'}), wrk on the "
              f"same machine, {args.duration} s per row, seed of {args.messages:,} messages "
              f"took {seed_seconds:.0f} s.\n\n")
    text = header + "\n".join(sections)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
