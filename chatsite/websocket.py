"""uvicorn's websockets protocol with a permessage-deflate sized for chat.

Browsers offer permessage-deflate on every socket. uvicorn's `websockets`
protocol agrees with zlib's defaults (32 KiB windows, memLevel 8) and keeps
each socket's compressor between frames: 155 KiB of server memory per idle
browser socket against 62 KiB without the extension, and a broadcast of one
frame to 500 sockets walks 500 compressors of ~256 KiB each. This protocol
(the same uvicorn class otherwise) agrees to 1 KiB windows each way
(server_max_window_bits and client_max_window_bits = 10) with memLevel 4 and
without server context takeover, so each frame gets a fresh, small, cache-hot
compressor: a batch of 10 messages still compresses 4,080 → 542 bytes (523
with the defaults), an idle browser socket holds 69 KiB, and a delivery costs
a quarter less CPU (docs/PERFORMANCE.md, "Idle sockets"). `make serve` uses it
(`WS_PROTOCOL`); `WS_PROTOCOL=websockets` is uvicorn's own.
"""

from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

WINDOW_BITS = 10
MEM_LEVEL = 4


class CompactDeflateProtocol(WebSocketProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.available_extensions = [ServerPerMessageDeflateFactory(
                server_no_context_takeover=True,
                server_max_window_bits=WINDOW_BITS,
                client_max_window_bits=WINDOW_BITS,
                compress_settings={"memLevel": MEM_LEVEL},
            )]
