"""Values of raw cursor rows, made what the ORM would have made of them.

The hot body builders (chat.selectors.build_history_body,
projects.selectors.get_user_project_page) read with fixed SQL statements
instead of the ORM; PostgreSQL's driver already returns aware datetimes and
UUIDs, SQLite returns text (or naive datetimes), which these turn into the same.
"""

import datetime
import uuid

import orjson
from django.utils.dateparse import parse_datetime


def as_datetime(value):
    """An aware UTC datetime (as a DateTimeField gives with USE_TZ), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value


def as_uuid_text(value):
    """A UUIDField value in its canonical text form, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, uuid.UUID):
        value = uuid.UUID(str(value))
    return str(value)


def as_json(value):
    """A JSONField value: the driver's text (Django reads json as text) decoded."""
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value
