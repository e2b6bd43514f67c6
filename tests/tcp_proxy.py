"""A small TCP proxy for fault tests: put it between a server and Redis or PostgreSQL.

Modes (switch at any time with set_mode):

* ``pass``      forward both ways;
* ``cut``       reset every open connection and every new one at once (the
                service is down: clients see ECONNRESET / EOF immediately);
* ``delay``     forward, each chunk held ``delay`` seconds per direction (pure
                latency: chunks keep their order and throughput is not capped);
* ``blackhole`` accept and read, never answer, forward nothing (a partition:
                clients only notice by their own timeouts). Connections open
                when the mode is set are closed (FIN), as a real partition's
                would be once keepalive / tcp_user_timeout gives up: on
                loopback the proxy's kernel acknowledges every byte, so a
                connection kept open here could never time out at the TCP
                level. New ones hang from the handshake on (connect_timeout).

The proxy runs its own asyncio loop in a daemon thread, so tests stay sync.
"""

import asyncio
import socket
import struct
import threading
import time

MODES = ("pass", "cut", "delay", "blackhole")


class TcpProxy:
    def __init__(self, target_host, target_port, *, listen_port=0):
        self.target = (target_host, int(target_port))
        self.listen_port = listen_port
        self.mode = "pass"
        self.delay = 0.0
        self.connections = set()
        self.accepted = 0
        self.chunks_up = 0  # client-to-server chunks: about one per request round trip
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="tcp-proxy")
        self.server = None

    # -- control (from the test's thread) --
    def start(self):
        self.thread.start()
        self.server = self._call(asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True))
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def stop(self):
        if self.server is not None:
            self.set_mode("cut")
            self.server.close()
            self._call(self._cancel_tasks())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.server = None

    def set_mode(self, mode, delay=0.0):
        assert mode in MODES, mode
        self.mode, self.delay = mode, float(delay)
        if mode in ("cut", "blackhole"):
            self._call(self._drop_all(reset=(mode == "cut")))

    def url(self, scheme, path="", userinfo=""):
        """An address through the proxy, e.g. url("redis", "/1")."""
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    def _call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- the proxy (on its loop) --
    async def _cancel_tasks(self):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drop_all(self, reset):
        for writer in list(self.connections):
            _abort(writer, reset)
        self.connections.clear()

    async def _accept(self, client_reader, client_writer):
        self.accepted += 1
        if self.mode == "cut":
            _abort(client_writer, reset=True)
            return
        if self.mode == "blackhole":
            self.connections.add(client_writer)
            await _swallow(client_reader)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), 5)
        except OSError:
            _abort(client_writer, reset=True)
            return
        self.connections.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer, client_writer, upstream=True),
            self._pipe(upstream_reader, client_writer, upstream_writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader, writer, other, upstream=False):
        """Copy one direction, honouring the mode chunk by chunk."""
        queue = asyncio.Queue()

        async def deliver():
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.mode == "blackhole":
                    continue
                writer.write(data)
                await writer.drain()

        sender = asyncio.get_running_loop().create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue
                if upstream:
                    self.chunks_up += 1
                delay = self.delay if self.mode == "delay" else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
            queue.put_nowait((0, None))
            await sender
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sender.cancel()
            for w in (writer, other):
                self.connections.discard(w)
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - already gone
                    pass


async def _swallow(reader):
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass


def _abort(writer, reset):
    """Close a connection; with reset, send RST (SO_LINGER 0) rather than FIN."""
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    try:
        writer.transport.abort() if reset else writer.close()
    except Exception:  # noqa: BLE001 - already gone
        pass
