"""The service's settings with the channel layer the naive baseline needs."""

from chatsite.settings import *
from chatsite.settings import REDIS_URL

if not REDIS_URL:
    raise RuntimeError("the broadcast baseline needs REDIS_URL (channels_redis core layer)")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            # Raised from the default 100 so the baseline queues instead of dropping.
            "capacity": 10000,
            "expiry": 60,
        },
    }
}
