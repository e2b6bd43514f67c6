"""A client that does not read is closed with 4008; the others are not slowed."""

import asyncio
import base64
import os
import socket
import threading
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    login,
    make_live_env,
    post_message,
)

pytestmark = [pytest.mark.live]


def rss_kib(pid):
    """Resident memory of a process and its children, in KiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def open_raw_socket(port, path, cookie, origin):
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock, timeout=60):
    """Read server frames until the close frame; return its code (None if reset)."""
    sock.settimeout(timeout)
    buf = sock.makefile("rb")

    def exact(n):
        data = buf.read(n)
        if len(data) < n:
            raise EOFError
        return data

    try:
        while True:
            b0, b1 = exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(exact(2), "big")
            elif length == 127:
                length = int.from_bytes(exact(8), "big")
            payload = exact(length)
            if b0 & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    except (EOFError, ConnectionError):
        return None
    finally:
        sock.close()


def test_reader_that_stalls_is_closed_4008_and_others_get_everything():
    # 1,000 sends from one user: far over the per-user send limit, not under test here.
    env, close = make_live_env({"WS_SEND_QUEUE_FRAMES": "16", "MESSAGE_MAX_LENGTH": "10000",
                                "SEND_RATE_PER_USER": "0"})
    project_id = create_users_and_project(env, ["slow", "fast", "talker"], "Slow")
    server = LiveServer(env).start()
    try:
        slow_s, fast_s, talker_s = (login(server.url, u) for u in ("slow", "fast", "talker"))
        count = 1000
        body = "x" * 8000

        async def main():
            url = f"{server.ws_url}/ws/projects/{project_id}/"
            slow = await asyncio.to_thread(
                open_raw_socket, server.port, f"/ws/projects/{project_id}/",
                cookie_header(slow_s), server.url,
            )
            fast = await connect(url, origin=server.url, max_size=2**24,
                                 additional_headers={"Cookie": cookie_header(fast_s)})
            before = rss_kib(server.proc.pid)
            got = []

            async def read_fast():
                async for raw in fast:
                    frame = orjson.loads(raw)
                    if frame["type"] == "message_batch":
                        got.extend(m["seq"] for m in frame["messages"])
                        if len(got) >= count:
                            return

            def flood():
                for i in range(count):
                    assert post_message(talker_s, project_id, f"{i} {body}").status_code == 201

            reader = asyncio.create_task(read_fast())
            sender = threading.Thread(target=flood)
            sender.start()
            await asyncio.wait_for(reader, 120)
            await asyncio.to_thread(sender.join)
            after = rss_kib(server.proc.pid)
            # Now the slow client reads what reached it, then the close.
            # Now the slow client reads what reached it, then the close.
            code = await asyncio.to_thread(read_close_code, slow)
            await fast.close()
            return got, code, before, after

        got, code, before, after = asyncio.run(main())
        assert got == list(range(1, count + 1))
        assert code == 4008
        growth_mib = (after - before) / 1024
        print(f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB "
              f"(+{growth_mib:.1f} MiB) for {count} messages of 8 KB")
        # The messages alone are 8 MB: an unbounded queue would hold them all.
        assert growth_mib < 64
    finally:
        server.stop()
        close()
