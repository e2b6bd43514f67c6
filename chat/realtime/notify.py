"""Publishing to every server process's hubs: what the actions call.

Publishing is a plain synchronous call from the thread that committed (a pooled
Redis connection; no connection per send, no ``async_to_sync``), and never
raises: the database is the source of truth, the bus is a hint
(chat.realtime.hub catches up from the database).
"""

import hashlib
import logging

import orjson
from django.db import transaction

from chat import metrics
from chat.realtime.bus import PROCESS_ID, get_bus
from chat.serializers import serialize_message

logger = logging.getLogger(__name__)


def publish_change_on_commit(message, item=None):
    """Publish a message's change to every process after the surrounding transaction commits.

    `item` is the message's JSON when the caller has it already.
    """
    event = {"kind": "change", "message": item or serialize_message(message)}
    # Encoding now makes a value that cannot be encoded fail where it was made.
    data = orjson.dumps(event)
    project_id = message.project_id
    transaction.on_commit(lambda: publish(project_id, data))


def notify_typing(project_id, user):
    publish(project_id, orjson.dumps({"kind": "typing", "user": _user(user)}))


def notify_presence(project_id, users, *, query=False):
    event = {"kind": "presence", "process": PROCESS_ID, "users": users, "query": query}
    publish(project_id, orjson.dumps(event))


def _user(user):
    return {"id": user.pk, "username": user.username}


def notify_access_ended(*, project_id=None, user_ids=None, user_id=None, session_key=None):
    """After commit, tell every process that access may have ended.

    ``project_id`` (with ``user_ids``, or None for all of the project's
    sockets): memberships or the project changed. ``user_id``: the user changed
    (deactivated, new password, deleted). These sockets are checked again
    against the database, so a spurious or repeated event closes nothing that
    still has access. ``user_id`` with ``session_key``: that session signed
    out; its sockets close without a check (the session is being flushed).
    """
    event = {"kind": "revoke", "project_id": project_id, "user_id": user_id,
             "user_ids": sorted(set(user_ids)) if user_ids is not None else None,
             "session": session_fingerprint(session_key) if session_key else None}
    data = orjson.dumps(event)
    transaction.on_commit(lambda: publish_access(data))


def session_fingerprint(session_key):
    """What the bus carries of a session key: a hash, never the key."""
    return hashlib.blake2b(session_key.encode(), digest_size=16).hexdigest()


def publish_access(data):
    """Hand an encoded revocation to every process. Never raises."""
    try:
        get_bus().publish_access(data)
    except Exception:
        metrics.BUS_PUBLISH_ERRORS.inc()
        logger.warning("event=publish_access_failed", exc_info=True)


def publish(project_id, data):
    """Hand encoded bytes to every process's hub of the project. Never raises."""
    try:
        get_bus().publish(project_id, data)
    except Exception:
        metrics.BUS_PUBLISH_ERRORS.inc()
        logger.warning("event=publish_failed project=%s", project_id, exc_info=True)
