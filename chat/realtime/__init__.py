"""Real time: how a committed change reaches every socket of its project, once
and in order, and how a revocation closes the sockets that lost access.

- ``notify``: publishing, what the actions call (after commit).
- ``bus``: between server processes (Redis pub/sub, or this process's hubs).
- ``hub``: one per project and event loop — order, gap fill, batching, fan-out.
- ``presence``: who is online, across processes.
- ``revocation``: hold, check again, release or close.
- ``frames``: what is written to a socket, and the close codes.

The only code that talks to the bus. docs/REALTIME.md is the design with its
measurements; docs/PROTOCOL.md the frames and close codes.
"""
