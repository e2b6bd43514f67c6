"""What an idle socket costs the server: memory and connect CPU per socket.

    .venv/bin/python bench/socket_memory.py                 # ~1 minute
    .venv/bin/python bench/socket_memory.py --sockets 2000 --ws websockets chatsite.websocket:SocketProtocol

Production shape on loopback (DATABASE_URL, REDIS_URL; defaults below): a
fresh database (tests/live.py make_live_env), one uvicorn worker serving
chatsite.asgi with `make serve`'s flags. For each socket implementation
(`--ws`) and each client kind a fresh server starts, one socket warms it up,
then SOCKETS sockets of one member open on one project (in batches of 100),
each reads its `hello`, and all stay open and idle. Measured: the server's
resident memory (VmRSS) before and 2 s after the last connect, divided by the
sockets (KiB per idle socket), and the server's CPU over the connects (ms per
connect). Client kinds: `deflate` offers permessage-deflate with
client_max_window_bits, as browsers do; `plain` offers no extension.
A `/healthz` calibration (wrk, 5 s) of the same server comes with each row.
Writes a markdown report to stdout and to bench/results/socket_memory.md.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://root@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
RESULTS = ROOT / "bench" / "results" / "socket_memory.md"
BATCH = 100
USERNAME = "socket_mem"


def rss_kib(pid):
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


def calibrate(url, seconds=5):
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", f"{url}/healthz"],
                         text=True, capture_output=True, timeout=seconds + 30).stdout
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    return float(match.group(1)) if match else None


async def open_sockets(server, project_id, cookie, count, compression):
    from websockets.asyncio.client import connect

    url = f"{server.ws_url}/ws/projects/{project_id}/"
    sockets = []

    async def one():
        ws = await connect(url, origin=server.url, additional_headers={"Cookie": cookie},
                           compression=compression, open_timeout=60, ping_interval=None)
        frame = await ws.recv()
        assert '"hello"' in frame, frame[:200]
        sockets.append(ws)

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one() for _ in range(min(BATCH, count - start))))
    return sockets


def measure(env, project_id, cookie, ws_impl, client, count):
    from tests.live import LiveServer

    server = LiveServer(env, workers=1, ws=ws_impl).start()
    try:
        calibration = calibrate(server.url)

        async def run():
            warm = await open_sockets(server, project_id, cookie, 1, _compression(client))
            await asyncio.sleep(1)
            before, cpu_before = rss_kib(server.proc.pid), server.cpu_seconds()
            started = time.monotonic()
            sockets = await open_sockets(server, project_id, cookie, count, _compression(client))
            connect_seconds = time.monotonic() - started
            cpu = server.cpu_seconds() - cpu_before
            await asyncio.sleep(2)
            after = rss_kib(server.proc.pid)
            extensions = sockets[0].response.headers.get("Sec-WebSocket-Extensions", "")
            for ws in sockets + warm:
                await ws.close()
            return {"ws": ws_impl, "client": client, "sockets": len(sockets),
                    "kib_per_socket": (after - before) / len(sockets),
                    "connect_ms_cpu": cpu / len(sockets) * 1000,
                    "connects_per_s": len(sockets) / connect_seconds,
                    "rss_mib": after / 1024, "extensions": extensions or "none",
                    "calibration": calibration}

        return asyncio.run(run())
    finally:
        server.stop()


def _compression(client):
    return "deflate" if client == "deflate" else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--ws", nargs="+", default=["websockets", "chatsite.websocket:SocketProtocol"],
                        help="uvicorn --ws values (a name or module:Class)")
    parser.add_argument("--clients", nargs="+", default=["deflate", "plain"],
                        choices=["deflate", "plain"])
    args = parser.parse_args()
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    from tests.live import cookie_header, create_users_and_project, login, make_live_env

    env, close = make_live_env({"WS_MAX_SOCKETS_PER_USER": "1000000"})
    rows = []
    try:
        project_id = create_users_and_project(env, [USERNAME], project_name="Sockets")
        from tests.live import LiveServer

        probe = LiveServer(env, workers=1).start()
        try:
            cookie = cookie_header(login(probe.url, USERNAME))
        finally:
            probe.stop()
        for ws_impl in args.ws:
            for client in args.clients:
                row = measure(env, project_id, cookie, ws_impl, client, args.sockets)
                print(row, flush=True)
                rows.append(row)
    finally:
        close()
    lines = [
        "# Idle sockets: memory and connect cost per socket", "",
        f"`bench/socket_memory.py --sockets {args.sockets} --ws {' '.join(args.ws)}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, one uvicorn worker, "
        f"PostgreSQL + Redis on loopback, {os.cpu_count()} CPUs.", "",
        "| server `--ws` | client | extension agreed | sockets | KiB per idle socket "
        "| server CPU ms per connect | connects/s | worker RSS MiB | `/healthz` req/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        calibration = f"{r['calibration']:,.0f}" if r["calibration"] else "—"
        lines.append(
            f"| `{r['ws']}` | {r['client']} | {r['extensions']} | {r['sockets']} "
            f"| {r['kib_per_socket']:.1f} | {r['connect_ms_cpu']:.2f} | {r['connects_per_s']:.0f} "
            f"| {r['rss_mib']:.0f} | {calibration} |")
    report = "\n".join(lines) + "\n"
    RESULTS.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
