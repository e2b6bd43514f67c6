"""uvicorn's sans-I/O websockets protocol with a small permessage-deflate.

Browsers offer permessage-deflate on every socket. With uvicorn's `websockets`
protocol the server agrees with zlib's defaults (32 KiB window, memLevel 8):
155 KiB of server memory per idle browser socket against 62 KiB without the
extension (docs/PERFORMANCE.md, "Idle sockets"). This protocol agrees to a
512-byte window each way (server_max_window_bits and client_max_window_bits
= 9, the smallest zlib takes) with memLevel 1, and without server context
takeover (a fresh compressor for every frame): chat frames are small JSON
whose repetition is within the frame (field names of a batch), so a large
window buys little. Opt-in: `make serve WS_PROTOCOL=chatsite.websocket:CompactDeflateProtocol`
(it falls behind the default above ~50 msg/s into one room of 500: docs/PERFORMANCE.md).
"""

import logging

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol

WINDOW_BITS = 9
MEM_LEVEL = 1


class CompactDeflateProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate:
            self.conn = ServerProtocol(
                extensions=[ServerPerMessageDeflateFactory(
                    server_no_context_takeover=True,
                    server_max_window_bits=WINDOW_BITS,
                    client_max_window_bits=WINDOW_BITS,
                    compress_settings={"memLevel": MEM_LEVEL},
                )],
                max_size=self.config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )
