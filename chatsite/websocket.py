"""The socket server's protocol: frames built once, written to every socket.

A broadcast hands the same text to hundreds of sockets (chat.realtime.hub).
Through ASGI each socket's `websocket.send` frames the text again, and with
permessage-deflate compresses it again; the socket keeps its compressor (and
decompressor) between frames. `SocketProtocol` (uvicorn's sans-I/O websockets
protocol, otherwise unchanged) adds the ASGI scope extension ``chat.frames``:

- ``write(text)`` writes one text frame to the transport at once and returns
  the bytes still waiting there (None once the socket is closing). The text
  a broadcast hands to every socket is framed, and compressed, once per wire
  format (`RecentTexts`), and the same bytes go to each.
- ``close(code)`` sends the close frame behind what is queued and closes the
  transport without waiting for the app: a client too slow to read is closed
  with 4008 even while its buffer is full (aborted if it never drains).

Compression can be shared because every socket agrees to permessage-deflate
without context takeover either way: each message is compressed on its own, so
its bytes do not depend on the socket. The window is 1 KiB (window bits 10)
and memLevel 4: a batch of 10 messages still compresses 4,080 → 542 bytes, and
a socket holds no compressor or decompressor between messages
(docs/PERFORMANCE.md, "Sockets"). `make serve` uses it (`WS_PROTOCOL`);
`WS_PROTOCOL=websockets` is uvicorn's own, without the extension (the app then
sends through ASGI as before).
"""

import asyncio
import collections

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

WINDOW_BITS = 10
MEM_LEVEL = 4
EXTENSION = "chat.frames"
# A close sent behind a full buffer: the transport is dropped if the client has
# not read up to it and answered this long after (at most WS_SEND_BUFFER_BYTES
# wait meanwhile).
CLOSE_TIMEOUT_SECONDS = 60.0


def deflate_factory():
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=WINDOW_BITS,
        client_max_window_bits=WINDOW_BITS,
        compress_settings={"memLevel": MEM_LEVEL},
    )


def frame_bytes(text, extensions):
    """One unmasked server text frame, through the socket's extensions."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=extensions)


class RecentTexts:
    """The wire bytes of the texts written last, per wire format.

    A broadcast writes one text object to each socket in turn (the hub's
    fan-out), and a replay shared by many sockets writes the same few objects
    (ProjectHub.replay), so remembering the last KEEP texts (by identity: each
    is held here, so its id cannot be reused meanwhile) frames and compresses
    each once per format. Without context takeover the bytes depend only on
    the window: the compression settings are this module's.
    """

    KEEP = 64

    def __init__(self):
        self.texts = {}  # id(text) -> (text, {window bits or 0: bytes}), oldest first

    def bytes_for(self, text, extensions):
        entry = self.texts.get(id(text))
        if entry is None or entry[0] is not text:
            if len(self.texts) >= self.KEEP:
                del self.texts[next(iter(self.texts))]
            entry = self.texts[id(text)] = (text, {})
        key = extensions[0].local_max_window_bits if extensions else 0
        data = entry[1].get(key)
        if data is None:
            data = entry[1][key] = frame_bytes(text, extensions)
        return data


recent_texts = RecentTexts()  # one event loop per uvicorn worker process


class Inbox:
    """What the protocol uses of asyncio.Queue (put_nowait, get, empty) for the
    events it hands the app: one reader, no bound, so neither three deques
    per socket (2.3 KiB) nor a putters' queue that is never used."""

    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items = collections.deque()
        self.waiter = None

    def put_nowait(self, item):
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self):
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()

    def empty(self):
        return not self.items


class Gate:
    """What the protocol uses of asyncio.Event (set, clear, wait) for "the
    transport takes writes": no deque of waiters per socket until one waits."""

    __slots__ = ("open", "waiters")

    def __init__(self):
        self.open, self.waiters = True, None

    def set(self):
        self.open = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self):
        self.open = False

    async def wait(self):
        while not self.open:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters = [*(self.waiters or ()), waiter]
            await waiter


class SocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Lean stand-ins for what uvicorn keeps per socket (docs/PERFORMANCE.md,
        # "Sockets").
        self.queue, self.writable = Inbox(), Gate()
        self.conn.available_extensions = (
            [deflate_factory()] if self.config.ws_per_message_deflate else [])

    def handle_connect(self, event):
        super().handle_connect(event)
        # The headers live on in the scope; websockets' parser keeps the
        # request itself for the connection's life.
        event.headers.clear()
        self.request = None
        if self.handshake_complete:
            return  # refused by the handshake: there is no app
        self.scope["extensions"][EXTENSION] = {"write": self.write_text, "close": self.close_now}

    async def send(self, message):
        await super().send(message)
        if message["type"] == "websocket.accept":
            self.response = None

    def write_text(self, text):
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return None
        extensions = self.conn.extensions
        if extensions and not extensions[0].local_no_context_takeover:
            data = frame_bytes(text, extensions)  # not from deflate_factory: not shareable
        else:
            data = recent_texts.bytes_for(text, extensions)
        self.transport.write(data)
        return self.transport.get_write_buffer_size()

    def close_now(self, code):
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": ""})
        self.conn.send_close(code)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT_SECONDS, self.transport.abort)
