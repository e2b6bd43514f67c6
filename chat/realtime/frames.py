"""What the server writes to a socket: frames encoded once, and the close codes.

Every frame is one JSON object with a ``type`` (docs/PROTOCOL.md lists them
with their fields):

| type | when |
|---|---|
| ``hello`` | first, with the project's current number |
| ``message_batch`` | changes in ``changed_seq`` order (live, or replayed after ``after``) |
| ``resync_required`` | more changes were missed than a replay sends |
| ``typing`` | someone else is typing |
| ``presence`` | who is online in the project |
| ``ack`` | a send over this socket was stored |
| ``error`` | a frame was refused; the socket stays open |
| ``pong`` | the answer to ``ping`` |

A frame that goes to many sockets is encoded once (``encode_frame``) and the
same text goes to each; where the socket server writes frames itself
(chatsite.websocket), it is also framed and compressed once.
"""

import orjson

# Close codes (docs/PROTOCOL.md, "Close codes"; static/chat/chat.js FINAL_CLOSE).
CLOSE_NOT_SIGNED_IN = 4401
CLOSE_NOT_MEMBER = 4403
CLOSE_NO_PROJECT = 4404
CLOSE_TOO_MANY_SOCKETS = 4429
CLOSE_TOO_SLOW = 4008
CLOSE_TOO_BIG = 1009
# Access could not be checked again after a revocation (database away): the
# socket closes as "try again later", and the client reconnects with `after`.
CLOSE_ACCESS_CHECK_FAILED = 1013
PONG = '{"type":"pong"}'
RESYNC_REQUIRED = '{"type":"resync_required"}'


def encode_frame(payload):
    """Encode one server-to-client frame once, as text."""
    return orjson.dumps(payload).decode()


def message_batch(messages):
    """The frame of a batch of message JSON, encoded."""
    return encode_frame({"type": "message_batch", "messages": messages})
