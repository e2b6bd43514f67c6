"""Cache entries that a revocation retires, refilled only by readers that cannot be stale.

A reader that misses reads the database, then writes the entry back. If a
revocation commits between its read and its write — and its after-commit delete
runs before the write — a plain delete would let the reader store what it read
before the revocation, and the entry would grant access until CACHE_TTL. So a
revocation does not delete: it writes a marker (RETIRED) for
REFILL_GUARD_SECONDS, and readers refill with ``add`` (only where nothing is
stored). A reader that missed before the revocation finds the marker and writes
nothing; a reader that finds the marker reads the database and writes nothing.
The guard only has to outlast one reader's read-then-write, which takes
milliseconds; until it expires those entries are read from the database.
"""

import logging

from django.conf import settings
from django.core.cache import cache

from chatsite.cache import CACHE_ERRORS

logger = logging.getLogger(__name__)

RETIRED = "!retired"


def retire(keys):
    """Mark entries retired (after a revocation commits, and before it)."""
    try:
        cache.set_many(dict.fromkeys(keys, RETIRED), settings.REFILL_GUARD_SECONDS)
    except Exception:  # noqa: BLE001 - an unreachable cache serves nothing stale either
        CACHE_ERRORS.labels("retire").inc()
        logger.warning("event=cache_error op=retire", exc_info=True)


def refill(key, value):
    """Store a freshly read entry unless a revocation marked it meanwhile."""
    try:
        cache.add(key, value, settings.CACHE_TTL)
    except Exception:  # noqa: BLE001
        CACHE_ERRORS.labels("add").inc()
        logger.warning("event=cache_error op=refill key=%s", key[:100], exc_info=True)
