"""Replica reads through the API of a real server (granian) on a throwaway
primary + streaming replica (tests/scaleout/conftest.py): reads go to the
replica when it is fresh, a user always reads what was just sent, a replica
lagging past REPLICA_MAX_LAG_MS or stopped is skipped with no 5xx, and a
stopped one is used again once it is back (chatsite/dbrouter.py).
"""

import time
import uuid
from types import SimpleNamespace

import pytest

from tests.live import LiveServer, create_users_and_project, login, post_message
from tests.scaleout.conftest import app_env, read_metrics, replica_reads, statements_on

pytestmark = [pytest.mark.live]

REPLICA = "replica1"


@pytest.fixture(scope="module")
def app(pg_cluster):
    env = app_env(pg_cluster, bouncer="primary", REPLICA_MAX_LAG_MS="300",
                  REPLICA_RETRY_SECONDS="1")
    project_id = create_users_and_project(env, ["rep_alice", "rep_bob"],
                                          project_name="Replicas")
    server = LiveServer(env, http="granian").start()
    try:
        alice = login(server.url, "rep_alice")
        bob = login(server.url, "rep_bob")
        yield SimpleNamespace(url=server.url, project_id=project_id, alice=alice, bob=bob,
                              cluster=pg_cluster, server=server)
    finally:
        server.stop()
        if not pg_cluster.replica.running:  # a failed test must not leave it stopped
            pg_cluster.replica.start()


def send(app, content):
    response = post_message(app.alice, app.project_id, content)
    assert response.status_code == 201, response.text
    return response.json()


def get(session, path, **params):
    response = session.get(session.base_url + path, params=params, timeout=30)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response


def reads_after(session, app, message):
    """History changes after the one before `message` (an uncached read)."""
    items = get(session, f"/api/projects/{app.project_id}/messages",
                after=message["changed_seq"] - 1).json()["items"]
    return [item["id"] for item in items]


def searched(session, app, token):
    items = get(session, "/api/search", q=token, project_id=app.project_id).json()["items"]
    return [item["id"] for item in items]


def settle(app):
    """Wait until the replica has replayed every write so far."""
    app.cluster.replica.wait_caught_up(app.cluster.primary)


def test_reads_go_to_a_fresh_replica(app):
    token = f"fresh{uuid.uuid4().hex[:10]}"
    message = send(app, f"hello {token}")
    settle(app)
    before = read_metrics(app.url)
    for _ in range(5):
        assert message["id"] in searched(app.bob, app, token)
        get(app.bob, f"/api/projects/{app.project_id}/messages", before=message["seq"] + 1)
        # The list's page 6 is not a cached form: every read is one database read.
        get(app.bob, "/api/projects", page=6)
    after = read_metrics(app.url)
    # 15 reads, each decided once by the router, all on the replica.
    assert replica_reads(after, alias=REPLICA) - replica_reads(before, alias=REPLICA) == 15
    assert replica_reads(after, alias="default") == replica_reads(before, alias="default")
    assert statements_on(after, REPLICA) - statements_on(before, REPLICA) >= 15


def test_a_user_always_reads_what_was_just_sent(app):
    """Send, then read at once through the uncached reads (history catch-up and
    search) as the sender and as another member: never stale."""
    before = read_metrics(app.url)
    stale = 0
    tries = 40
    for i in range(tries):
        token = f"own{i}x{uuid.uuid4().hex[:10]}"
        message = send(app, f"mine {token}")
        stale += message["id"] not in reads_after(app.alice, app, message)
        stale += message["id"] not in searched(app.alice, app, token)
        stale += message["id"] not in reads_after(app.bob, app, message)
    after = read_metrics(app.url)
    assert stale == 0
    # Every read went through the router's fence (replica or primary).
    routed = replica_reads(after) - replica_reads(before)
    assert routed == 3 * tries
    print(f"\n{tries * 3} reads right after a send: "
          f"{replica_reads(after, alias=REPLICA) - replica_reads(before, alias=REPLICA):.0f}"
          " on the replica, the rest on the primary; 0 stale")


def test_a_replica_lagging_past_the_limit_is_skipped(app):
    settle(app)
    app.cluster.replica.pause_replay()
    try:
        token = f"lag{uuid.uuid4().hex[:10]}"
        message = send(app, f"while lagging {token}")
        before = read_metrics(app.url)
        # Behind the sender's write: the primary answers (the replica is not
        # lagging yet, only short of this one write).
        assert message["id"] in searched(app.bob, app, token)
        after = read_metrics(app.url)
        assert (replica_reads(after, alias="default", reason="behind")
                - replica_reads(before, alias="default", reason="behind")) == 1
        time.sleep(0.4)  # still short of it, past REPLICA_MAX_LAG_MS=300
        before = read_metrics(app.url)
        for _ in range(5):
            assert message["id"] in searched(app.bob, app, token)
        after = read_metrics(app.url)
        lagging = (replica_reads(after, alias="default", reason="lagging")
                   - replica_reads(before, alias="default", reason="lagging"))
        assert lagging == 5
        # Its health is kept: one look at the replica, not one per read (two
        # if the reads took longer than the recheck interval).
        assert statements_on(after, REPLICA) - statements_on(before, REPLICA) <= 2
    finally:
        app.cluster.replica.resume_replay()
    settle(app)
    time.sleep(1.1)  # the lagging replica's recheck interval
    before = read_metrics(app.url)
    assert message["id"] in searched(app.bob, app, token)
    after = read_metrics(app.url)
    assert replica_reads(after, alias=REPLICA) - replica_reads(before, alias=REPLICA) == 1


def test_a_stopped_replica_falls_back_to_the_primary_and_comes_back(app):
    token = f"down{uuid.uuid4().hex[:10]}"
    message = send(app, f"before the stop {token}")
    settle(app)
    app.cluster.replica.stop()
    before = read_metrics(app.url)
    started = time.perf_counter()
    assert message["id"] in searched(app.bob, app, token)
    first_read = time.perf_counter() - started
    reads = 1
    for _ in range(3):
        assert message["id"] in searched(app.bob, app, token)
        assert message["id"] in reads_after(app.alice, app, message)
        get(app.bob, "/api/projects", page=6)
        page = app.bob.get(app.url + "/", timeout=30)  # the home page's list and sidebar
        assert page.status_code == 200 and "Replicas" in page.text
        reads += 4
    after = read_metrics(app.url)
    fell_back = replica_reads(after, alias="default") - replica_reads(before, alias="default")
    assert fell_back >= reads  # the home page reads its list twice (page and sidebar)
    assert replica_reads(after, alias=REPLICA) == replica_reads(before, alias=REPLICA)
    print(f"\nfirst read after the replica stopped: {first_read * 1000:.0f} ms")

    app.cluster.replica.start()
    app.cluster.replica.wait_streaming(app.cluster.primary)
    settle(app)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        before = read_metrics(app.url)
        assert message["id"] in searched(app.bob, app, token)
        after = read_metrics(app.url)
        if replica_reads(after, alias=REPLICA) > replica_reads(before, alias=REPLICA):
            break
        time.sleep(0.5)
    else:
        pytest.fail("reads did not return to the replica after it came back")
