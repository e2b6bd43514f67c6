"""The hot body builders (fixed SQL, rows serialized from the cursor) answer what
the ORM reads and serializers answer, on SQLite and on PostgreSQL."""

import uuid

import orjson
import pytest

from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.selectors import build_history_body, get_changes_after, get_recent_messages
from chat.serializers import serialize_messages


def orm_body(project_id, *, before=None, after=None, limit=50):
    if after is not None:
        rows, has_more = get_changes_after(project_id, after=after, limit=limit)
        cursor = rows[-1].changed_seq if has_more and rows else None
    else:
        rows, has_more = get_recent_messages(project_id, before=before, limit=limit)
        cursor = rows[-1].seq if has_more and rows else None
    return orjson.loads(orjson.dumps(
        {"items": serialize_messages(rows), "has_more": has_more, "next_cursor": cursor}
    ))


@pytest.fixture
def history(owner, member, project):
    sent = []
    for i in range(12):
        author = owner if i % 3 else member
        client_msg_id = uuid.uuid4() if i % 2 else None
        sent.append(do_send_message(author, project.pk, f"m{i} é ✓", client_msg_id)[0])
    do_edit_message(sent[4], "edited four")
    do_delete_message(sent[7])
    do_edit_message(sent[10], "edited ten")
    return sent


@pytest.mark.parametrize("kwargs", [
    {}, {"limit": 5}, {"limit": 12}, {"limit": 13}, {"limit": 1},
    {"before": 9, "limit": 4}, {"before": 1}, {"before": 3, "limit": 2},
    {"after": 0, "limit": 5}, {"after": 6}, {"after": 12, "limit": 2}, {"after": 15},
])
def test_history_body_matches_the_orm(history, project, kwargs):
    built = orjson.loads(build_history_body(project.pk, **kwargs))
    assert built == orm_body(project.pk, **kwargs)
    assert built["items"] or kwargs.get("before") == 1 or kwargs.get("after") == 15


def test_history_body_shows_tombstones_edits_and_client_ids(history, project):
    items = {item["seq"]: item for item in orjson.loads(build_history_body(project.pk))["items"]}
    assert (items[8]["content"], items[8]["deleted"]) == ("", True)
    assert items[5]["content"] == "edited four" and items[5]["edited_at"] is not None
    assert items[2]["client_msg_id"] == str(history[1].client_msg_id)
    assert items[1]["client_msg_id"] is None
    assert items[1]["created_at"].endswith("+00:00")


def test_history_body_of_an_empty_project(project):
    assert orjson.loads(build_history_body(project.pk)) == {
        "items": [], "has_more": False, "next_cursor": None}
