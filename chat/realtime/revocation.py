"""Revocation on every server process: hold the sockets concerned, check them
again against the database and the session store, release or close them.

What publishes the events: chat.realtime.notify.notify_access_ended, called
from the one place each way access ends (projects/signals.py,
accounts/signals.py). The design and the races it covers: docs/REALTIME.md,
"Revocation".
"""

import contextvars
import logging

import orjson

from chat import metrics
from chat.realtime.frames import (
    CLOSE_ACCESS_CHECK_FAILED,
    CLOSE_NOT_MEMBER,
    CLOSE_NOT_SIGNED_IN,
)
from chat.realtime.hub import db_task

logger = logging.getLogger(__name__)

def on_access_event(registry, data):
    """A revocation from any process: hold and check again the sockets concerned."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        logger.warning("event=bus_bad_access_payload")
        return
    registry.access_events += 1
    metrics.ACCESS_EVENTS.inc()
    project_id, user_id = event.get("project_id"), event.get("user_id")
    if project_id is not None:
        hub = registry.hubs.get(project_id)
        if hub is not None:
            user_ids = event.get("user_ids")
            wanted = None if user_ids is None else set(user_ids)
            concerned = [c for c in hub.consumers if wanted is None or c.user_id in wanted]
            recheck(registry, concerned, project_id=project_id)
    if user_id is not None:
        sockets = list(registry.sockets.get(user_id, ()))
        ended = event.get("session")
        if ended is None:
            recheck(registry, sockets, session=True)
        else:
            for consumer in sockets:
                if consumer.session_hash == ended:
                    metrics.SOCKETS_REVOKED.labels(str(CLOSE_NOT_SIGNED_IN)).inc()
                    consumer.revoke(CLOSE_NOT_SIGNED_IN)

def recheck_all(registry):
    """Check every socket of this loop again (revocations may have been missed)."""
    for hub in list(registry.hubs.values()):
        recheck(registry, list(hub.consumers), project_id=hub.project_id, session=True)

def recheck(registry, consumers, *, project_id=None, session=False):
    """Hold the sockets' frames, check their access again, then release or close.

    Whatever the hub had batched came before the revocation and goes first;
    anything after waits in the sockets' holds until the check ends, so
    nothing sent after a revocation reaches a socket it closes.
    """
    if not consumers:
        return
    for hub in {c.hub for c in consumers if c.hub is not None}:
        hub.flush()
    for consumer in consumers:
        consumer.hold()
    registry.loop.create_task(
        _recheck(consumers, project_id, session), context=contextvars.Context())


async def verdicts(consumers, project_id, session):
    """{socket: close code} for the sockets that lost access (the others are absent)."""
    found = {}
    try:
        if session:
            keys = {(c.user_id, c.session_key) for c in consumers}
            valid = await _sessions_still_valid(keys)
            for consumer in consumers:
                if (consumer.user_id, consumer.session_key) not in valid:
                    found[consumer] = CLOSE_NOT_SIGNED_IN
        if project_id is not None:
            allowed = await _members_with_access(project_id, {c.user_id for c in consumers})
            for consumer in consumers:
                if consumer.user_id not in allowed:
                    found.setdefault(consumer, CLOSE_NOT_MEMBER)
    except Exception:  # noqa: BLE001 - cannot confirm access: fail closed, retryable
        logger.warning("event=access_recheck_failed", exc_info=True)
        found = dict.fromkeys(consumers, CLOSE_ACCESS_CHECK_FAILED)
    return found


async def _recheck(consumers, project_id, session):
    found = await verdicts(consumers, project_id, session)
    for consumer in consumers:
        code = found.get(consumer)
        if code is None:
            consumer.release()
        else:
            metrics.SOCKETS_REVOKED.labels(str(code)).inc()
            consumer.revoke(code)


@db_task
def _sessions_still_valid(keys):
    from accounts.sessions import session_grants_user

    return {(user_id, key) for user_id, key in keys if session_grants_user(key, user_id)}


@db_task
def _members_with_access(project_id, user_ids):
    from projects.access import members_with_access

    return members_with_access(project_id, user_ids)
