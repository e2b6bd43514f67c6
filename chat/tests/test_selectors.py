"""The hot body builders (fixed SQL, rows serialized from the cursor) answer what
the ORM reads and serializers answer, on SQLite and on PostgreSQL."""

import uuid

import orjson
import pytest

from chat.actions import do_delete_message, do_edit_message, do_send_message
from chat.selectors import build_history_body, get_changes_after, get_recent_messages
from chat.serializers import serialize_message, serialize_messages


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


def warms(how):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("chat_history_warms_total", {"how": how}) or 0


def cached_first_page(project_id):
    from chat.history_cache import history_slot
    from chatsite.cache import get_version, safe_get
    from chatsite.pagination import DEFAULT_LIMIT

    entry = safe_get(history_slot(project_id, None, None, DEFAULT_LIMIT))
    assert entry is not None and entry[0] == get_version("project", project_id)
    return entry[1]


def test_changes_are_applied_to_the_cached_first_page(
    owner, member, project, send, django_capture_on_commit_callbacks
):
    def after_commit(fn, *args):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args)

    sent = send(owner, project, 1)  # the first page is read once...
    applied = warms("applied")
    sent += send(member, project, 54)  # ...then each send goes on top of it
    assert warms("applied") == applied + 54
    after_commit(do_edit_message, sent[-1], "edited, on the page")
    after_commit(do_delete_message, sent[-3])
    after_commit(do_edit_message, sent[0], "edited, older than the page")
    after_commit(do_delete_message, sent[1])
    assert warms("applied") == applied + 58
    page = orjson.loads(cached_first_page(project.pk))
    assert page == orjson.loads(build_history_body(project.pk))
    assert (len(page["items"]), page["has_more"], page["next_cursor"]) == (50, True, 6)
    assert page["items"][0]["content"] == "edited, on the page"
    assert page["items"][2]["deleted"] is True


def test_a_page_the_change_is_not_the_next_of_is_read_again(owner, project, send):
    from chatsite.cache import bump_version

    send(owner, project, 2)
    bump_version("project", project.pk)  # a change whose rebuild never ran
    read, applied = warms("read"), warms("applied")
    send(owner, project, 1, prefix="after the gap")
    assert (warms("read"), warms("applied")) == (read + 1, applied)
    page = orjson.loads(cached_first_page(project.pk))
    assert page == orjson.loads(build_history_body(project.pk))
    assert page["items"][0]["content"] == "after the gap 0"


def test_a_page_read_after_the_change_keeps_it_once(owner, project, send):
    from chat.history_cache import history_slot, warm_first_page
    from chatsite.cache import get_version, safe_set
    from chatsite.pagination import DEFAULT_LIMIT

    first = send(owner, project, 1)[0]
    version = get_version("project", project.pk)
    (message, _) = do_send_message(owner, project.pk, "committed, not yet warmed")
    # Another reader already rebuilt the page with this message under the old tag.
    safe_set(history_slot(project.pk, None, None, DEFAULT_LIMIT),
             (version, build_history_body(project.pk)))
    warm_first_page(project.pk, version + 1, serialize_message(message))
    page = orjson.loads(cached_first_page_at(project.pk, version + 1))
    assert [item["id"] for item in page["items"]] == [message.pk, first.pk]


def cached_first_page_at(project_id, version):
    from chat.history_cache import history_slot
    from chatsite.cache import safe_get
    from chatsite.pagination import DEFAULT_LIMIT

    entry = safe_get(history_slot(project_id, None, None, DEFAULT_LIMIT))
    assert entry[0] == version
    return entry[1]


def test_a_change_whose_rebuild_never_ran_is_not_skipped(owner, project, send):
    send(owner, project, 2)
    do_send_message(owner, project.pk, "its after-commit work never ran")  # number 3
    read, applied = warms("read"), warms("applied")
    send(owner, project, 1, prefix="next")  # number 4: a gap after the page's 2
    assert (warms("read"), warms("applied")) == (read + 1, applied)
    page = orjson.loads(cached_first_page(project.pk))
    assert [item["content"] for item in page["items"][:2]] == [
        "next 0", "its after-commit work never ran"]
