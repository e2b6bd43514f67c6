"""Prometheus metrics of the real-time path."""

from prometheus_client import Counter, Gauge, Histogram

WEBSOCKET_CONNECTIONS_ACTIVE = Gauge(
    "websocket_connections_active",
    "Open WebSocket connections",
    multiprocess_mode="livesum",
)
WEBSOCKET_CLOSES = Counter("websocket_closes_total", "WebSocket closes by code", ["code"])
BATCHES_SENT = Counter("chat_batches_sent_total", "message_batch frames built (once per hub)")
MESSAGES_PER_BATCH = Histogram(
    "chat_messages_per_batch", "Messages in one message_batch", buckets=(1, 2, 3, 5, 8, 10, 20)
)
REPLAYS = Counter("chat_replays_total", "Replays of missed changes on connect", ["result"])
HUB_CATCH_UPS = Counter("chat_hub_catch_ups_total", "Gaps filled from the database")
BUS_PUBLISH_ERRORS = Counter("chat_bus_publish_errors_total", "Failed publishes to the bus")
BUS_RECEIVE_ERRORS = Counter("chat_bus_receive_errors_total", "Failed reads from the bus")
SLOW_CLIENTS_CLOSED = Counter("chat_slow_clients_closed_total", "Sockets closed with 4008")
ACCESS_EVENTS = Counter(
    "chat_access_events_total", "Revocations heard from the bus (per event loop)"
)
SOCKETS_REVOKED = Counter(
    "chat_sockets_revoked_total", "Sockets closed because access ended, by close code", ["code"]
)
