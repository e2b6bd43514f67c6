"""The bus, the cache and the sessions on a Redis Cluster, against a real 3-master
+ 3-replica cluster on loopback (tests/scaleout/redis_fixtures.py).

Two socket servers (uvicorn, one worker each: two hubs per project, each with
its own sharded subscription) run on the cluster; messages sent through both
reach a socket on each, in order. A master killed mid-stream and the project's
slot moved mid-stream lose, repeat and reorder nothing at the sockets: the
subscribers resubscribe on the channel's new owner and the hubs catch up from
PostgreSQL (chat/realtime/cluster_bus.py). One event loop's subscriber, driven
directly, shows which hubs catch up after each fault (only those concerned).
The cache and the sessions on the cluster: reads across every shard, a moved
slot, the hot path answering from a session kept in the cluster
(chatsite/scaleout/redis_client.py); and the settings each REDIS_URL makes.
Times are printed (pytest -s) and never asserted; counts are.
"""

import asyncio
import time
import uuid
from types import SimpleNamespace

import orjson
import pytest
from django.conf import settings
from django.core.cache import cache, caches
from django.core.handlers.wsgi import WSGIHandler
from django.test import override_settings
from websockets.asyncio.client import connect

from chatsite.scaleout.redis_client import parse_cluster_url
from chatsite.scaleout.redis_cluster import key_slot
from chatsite.tests.test_hotpath import call, environ, served
from chatsite.tests.test_settings import run as run_settings
from conftest import login_client
from tests.live import (
    LiveServer,
    cookie_header,
    create_users_and_project,
    login,
    make_live_env,
    post_message,
)
from tests.scaleout.redis_fixtures import cluster_caches, cluster_env, redis_cluster

__all__ = ["redis_cluster"]  # the fixture, imported for this module's tests

pytestmark = [pytest.mark.live]


@pytest.fixture(scope="module")
def servers(redis_cluster, pg_cluster):
    """Two app servers on the whole scale-out layout (make cluster's): the
    primary through PgBouncer (transaction mode), reads on the streaming
    replica behind the LSN fence (chatsite/dbrouter.py), cache, sessions and
    bus on the Redis Cluster."""
    env, close = make_live_env()
    env = cluster_env(redis_cluster, env, **{
        "DATABASE_URL": pg_cluster.bouncer_urls()[0],
        "DATABASE_REPLICA_URLS": pg_cluster.urls()[1],
        "DB_POOLER": "pgbouncer", "DB_PREPARED_STATEMENTS": "false"})
    started = []
    try:
        for _ in range(2):
            started.append(LiveServer(env, workers=1).start())
        yield SimpleNamespace(env=env, a=started[0], b=started[1], kit=redis_cluster)
    finally:
        for server in started:
            server.stop()
        close()


def new_project(servers, tag):
    """A project with two senders and a reader, each signed in (through A or B)."""
    names = [f"{tag}_s1", f"{tag}_s2", f"{tag}_r"]
    project_id = create_users_and_project(servers.env, names, project_name=f"Cluster {tag}")
    return SimpleNamespace(
        id=project_id,
        channel=f"{servers.env['BUS_PREFIX']}:project.{project_id}",
        senders=[login(servers.a.url, names[0]), login(servers.b.url, names[1])],
        reader=login(servers.a.url, names[2]),
    )


async def run_stream(servers, project, *, count, fault=None, pace=0.04, after_fault=10):
    """Send `count` messages alternately through servers A and B while a socket on
    each reads; after a third of them call `fault()` in a thread (it returns when
    the fault is done with: a failover over, a slot moved) and keep sending until
    `after_fault` more went out after that. Returns (sent, received, marks)."""
    sent = []  # (changed_seq, id, monotonic time the send began)
    received = {"A": [], "B": []}  # (changed_seq, id, monotonic time of arrival)
    marks = {}
    cookie = {"Cookie": cookie_header(project.reader)}
    async with connect(f"{servers.a.ws_url}/ws/projects/{project.id}/", origin=servers.a.url,
                       additional_headers=cookie) as ws_a, \
            connect(f"{servers.b.ws_url}/ws/projects/{project.id}/", origin=servers.b.url,
                    additional_headers=cookie) as ws_b:
        for ws in (ws_a, ws_b):
            assert orjson.loads(await ws.recv())["type"] == "hello"

        async def read(ws, into):
            while True:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "message_batch":
                    now = time.monotonic()
                    into.extend((m["changed_seq"], m["id"], now) for m in frame["messages"])

        readers = [asyncio.create_task(read(ws_a, received["A"])),
                   asyncio.create_task(read(ws_b, received["B"]))]
        fault_task = None
        i = sent_after = 0
        while i < count or (fault is not None and (fault_task is None or not fault_task.done()
                                                   or sent_after < after_fault)):
            if fault is not None and fault_task is None and i >= count // 3:
                marks["fault_at"] = time.monotonic()
                fault_task = asyncio.create_task(asyncio.to_thread(fault))
            if fault_task is not None and fault_task.done():
                marks.setdefault("fault_done", time.monotonic())
                sent_after += 1
            began = time.monotonic()
            response = await asyncio.to_thread(
                post_message, project.senders[i % 2], project.id, f"stream {i}")
            assert response.status_code == 201, response.text
            body = response.json()
            sent.append((body["changed_seq"], body["id"], began))
            i += 1
            await asyncio.sleep(pace)
        if fault_task is not None:
            marks["fault_result"] = await fault_task
        expected = {m_id for _, m_id, _ in sent}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                expected <= {m_id for _, m_id, _ in got} for got in received.values()):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything repeated late arrives too
        for task in readers:
            task.cancel()
    return sent, received, marks


def tally(sent, got):
    """(lost, duplicated, out of order) of one socket's deliveries."""
    ids = [m_id for _, m_id, _ in got]
    seqs = [seq for seq, _, _ in got]
    lost = len({m_id for _, m_id, _ in sent} - set(ids))
    duplicated = len(ids) - len(set(ids))
    out_of_order = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
    return lost, duplicated, out_of_order


def resumed_after(sent, got, since):
    """Seconds from `since` to the arrival of the first message sent after it."""
    after = {m_id for _, m_id, began in sent if began >= since}
    arrivals = [t for _, m_id, t in got if m_id in after]
    return min(arrivals) - since if arrivals else None


def largest_gap(got):
    times = sorted(t for _, _, t in got)
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def report(name, sent, received, marks):
    line = [f"[redis-cluster] {name}: sent {len(sent)}"]
    for label, got in received.items():
        lost, dup, ooo = tally(sent, got)
        line.append(f"socket {label}: got {len(got)} lost {lost} dup {dup} out-of-order {ooo}"
                    f" largest gap {largest_gap(got):.2f}s")
        if "fault_at" in marks:
            resumed = resumed_after(sent, got, marks["fault_at"])
            line.append(f"delivery resumed {resumed:.2f}s after the fault" if resumed
                        else "delivery never resumed")
    print("; ".join(line))


def test_messages_sent_through_both_servers_reach_both_sockets_in_order(servers):
    project = new_project(servers, "rcboth")
    sent, received, marks = asyncio.run(run_stream(servers, project, count=30))
    report("steady", sent, received, marks)
    assert len(sent) == 30
    for got in received.values():
        assert tally(sent, got) == (0, 0, 0)
        assert [m_id for _, m_id, _ in got] == [m_id for _, m_id, _ in sorted(sent)]


def test_a_user_reads_their_own_message_at_once_through_the_other_server(servers):
    """Read-your-writes on the whole layout: sent through A (PgBouncer to the
    primary), the history page read at once through B (the replica when it
    has replayed the write, else the primary) always holds it."""
    project = new_project(servers, "rcryw")
    sender = project.senders[0]
    reader_on_b = login(servers.b.url, "rcryw_s1")
    stale = 0
    for i in range(30):
        sent = post_message(sender, project.id, f"mine {i}").json()["id"]
        page = reader_on_b.get(f"{servers.b.url}/api/projects/{project.id}/messages?limit=5")
        assert page.status_code == 200, page.text
        stale += sent not in [m["id"] for m in page.json()["items"]]
    assert stale == 0


def test_master_killed_mid_stream_loses_repeats_and_reorders_nothing(servers):
    kit = servers.kit
    project = new_project(servers, "rckill")
    slot = key_slot(project.channel)
    killed = {}

    def kill_and_wait():
        killed["port"] = kit.master_of_slot(slot)
        kit.kill(killed["port"])
        return kit.wait_failover(slot, killed["port"])

    try:
        sent, received, marks = asyncio.run(run_stream(
            servers, project, count=45, fault=kill_and_wait))
    finally:
        if "port" in killed:
            kit.restart(killed["port"])  # back as a replica: 3 + 3 for the next test
    new_master, failover_seconds = marks["fault_result"]
    print(f"[redis-cluster] master {killed['port']} killed: replica {new_master} serves "
          f"the slot after {failover_seconds:.2f}s")
    report("master killed", sent, received, marks)
    assert new_master != killed["port"]
    assert sum(1 for _, _, began in sent if began >= marks["fault_done"]) >= 10
    for got in received.values():
        assert tally(sent, got) == (0, 0, 0)
        assert [m_id for _, m_id, _ in got] == [m_id for _, m_id, _ in sorted(sent)]


def test_slot_moved_mid_stream_loses_repeats_and_reorders_nothing(servers):
    kit = servers.kit
    project = new_project(servers, "rcmove")
    slot = key_slot(project.channel)
    before = kit.master_of_slot(slot)
    target = next(m["port"] for m in kit.masters() if m["port"] != before)

    sent, received, marks = asyncio.run(run_stream(
        servers, project, count=30, fault=lambda: kit.migrate_slot(slot, target)))
    report("slot moved", sent, received, marks)
    assert marks["fault_result"] == before
    assert kit.master_of_slot(slot) == target
    for got in received.values():
        assert tally(sent, got) == (0, 0, 0)
        assert [m_id for _, m_id, _ in got] == [m_id for _, m_id, _ in sorted(sent)]


class RecordingHub:
    """What the subscriber feeds: a hub that records its changes and catch-ups."""

    def __init__(self, project_id):
        self.project_id = project_id
        self.loop = asyncio.get_running_loop()
        self.consumers = set()
        self.got = []
        self.catch_ups = 0

    def feed_raw(self, data):
        self.got.append(data)

    def request_catch_up(self):
        self.catch_ups += 1


async def until(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run_subscriber(kit, fault, projects=12):
    """One event loop's sharded subscriber on `projects` channels (every shard
    owns some): each hears a change, `fault(owners)` breaks something and returns
    the projects it concerns, then each hears a second change. Returns (hubs,
    affected projects, recoveries, seconds the resubscription took)."""
    from chat.realtime.bus import bus_channel
    from chat.realtime.cluster_bus import ClusterBus
    from chat.realtime.hub import get_registry

    bus = ClusterBus(kit.url)

    async def scenario():
        registry = get_registry()
        hubs = {pid: RecordingHub(pid) for pid in range(1, projects + 1)}
        registry.hubs.update(hubs)
        for hub in hubs.values():
            await bus.subscribe(hub)
        subscriber = bus._subscriber(asyncio.get_running_loop())
        owners = {pid: kit.master_of_key(bus_channel(pid)) for pid in hubs}
        assert len(set(owners.values())) == 3
        for pid in hubs:
            bus.publish(pid, b"before")
        await until(lambda: all(len(h.got) == 1 for h in hubs.values()))
        affected = await asyncio.to_thread(fault, owners)
        await until(lambda: subscriber.recoveries >= 1)
        for pid in hubs:
            bus.publish(pid, b"after")
        await until(lambda: all(len(h.got) >= 2 for h in hubs.values()))
        await asyncio.sleep(0.2)  # a repeat would arrive by now
        await subscriber.close()
        return hubs, affected, subscriber.recoveries, subscriber.last_recovery_seconds

    try:
        return asyncio.run(scenario())
    finally:
        bus._sync.close()


def test_a_killed_master_is_resubscribed_and_only_its_hubs_catch_up(redis_cluster):
    killed = {}

    def kill(owners):
        killed["port"] = owners[1]
        redis_cluster.kill(killed["port"])
        return {pid for pid, port in owners.items() if port == killed["port"]}

    try:
        hubs, affected, recoveries, seconds = run_subscriber(redis_cluster, kill)
    finally:
        if "port" in killed:
            redis_cluster.restart(killed["port"])
    print(f"[redis-cluster] subscriber resubscribed {seconds:.2f}s after master "
          f"{killed['port']} was killed")
    assert recoveries == 1
    # The failed shard's hubs read PostgreSQL while it fails over (every half
    # second) and once more when heard again; the others never.
    assert {pid for pid, h in hubs.items() if h.catch_ups} == affected
    assert all(h.got == [b"before", b"after"] for h in hubs.values())


def test_a_moved_slot_is_followed_and_only_its_hub_catches_up(redis_cluster):
    from chat.realtime.bus import bus_channel

    def move(owners):
        slot = key_slot(bus_channel(1))
        target = next(port for port in set(owners.values()) if port != owners[1])
        redis_cluster.migrate_slot(slot, target)
        return {pid for pid in owners if key_slot(bus_channel(pid)) == slot}

    hubs, affected, recoveries, seconds = run_subscriber(redis_cluster, move)
    print(f"[redis-cluster] subscriber followed a moved slot in {seconds * 1000:.0f} ms")
    assert affected == {1}
    assert recoveries == 1
    assert {pid: h.catch_ups for pid, h in hubs.items()} == {
        pid: int(pid == 1) for pid in hubs}
    assert all(h.got == [b"before", b"after"] for h in hubs.values())


def test_a_subscription_made_on_an_old_slot_map_is_redirected(redis_cluster):
    """A channel subscribed on the master its (stale) slot map names answers
    MOVED: the subscriber tries again on a fresh map, and the connection to
    that master, with the channels it carries, is left alone."""
    from chat.realtime.bus import bus_channel
    from chat.realtime.cluster_bus import ClusterBus
    from chat.realtime.hub import get_registry

    bus = ClusterBus(redis_cluster.url)
    late = 50
    slot = key_slot(bus_channel(late))

    async def scenario():
        registry = get_registry()
        hubs = {pid: RecordingHub(pid) for pid in (1, 2, 3, 4, 5, 6, late)}
        for pid, hub in hubs.items():
            if pid != late:
                registry.hubs[pid] = hub
                await bus.subscribe(hub)
        subscriber = bus._subscriber(asyncio.get_running_loop())
        old = redis_cluster.master_of_slot(slot)
        target = next(m["port"] for m in redis_cluster.masters() if m["port"] != old)
        await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
        assert subscriber.client.get_node_from_key(bus_channel(late)).port == old  # stale
        registry.hubs[late] = hubs[late]
        await bus.subscribe(hubs[late])
        await until(lambda: subscriber.recoveries >= 1)
        for pid in hubs:
            bus.publish(pid, b"after")
        await until(lambda: all(h.got == [b"after"] for h in hubs.values()))
        placed = subscriber.placed[bus_channel(late)]
        await subscriber.close()
        return hubs, placed, target

    try:
        hubs, placed, target = asyncio.run(scenario())
    finally:
        bus._sync.close()
    assert placed == f"127.0.0.1:{target}"
    assert {pid: h.catch_ups for pid, h in hubs.items()} == {
        pid: int(pid == late) for pid in hubs}


@pytest.fixture
def on_cluster(redis_cluster):
    """This process's cache and sessions on the cluster (keys of their own)."""
    with override_settings(CACHES=cluster_caches(redis_cluster, f"rc{uuid.uuid4().hex[:8]}")):
        yield redis_cluster


def test_reads_of_keys_on_every_shard_come_back_in_one_call(on_cluster):
    from django_redis import get_redis_connection
    from redis.cluster import RedisCluster

    keys = [f"spread:{i}" for i in range(30)]
    cache.set_many({k: {"n": i} for i, k in enumerate(keys)})
    masters = {on_cluster.master_of_key(cache.make_key(k)) for k in keys}
    assert len(masters) == 3  # the read below crosses every shard
    assert isinstance(get_redis_connection("default"), RedisCluster)
    assert cache.get_many([*keys, "spread:missing"]) == {k: {"n": i} for i, k in enumerate(keys)}
    cache.delete_many(keys)
    assert cache.get_many(keys) == {}


def test_multi_key_reads_follow_a_moved_slot(on_cluster):
    from django_redis import get_redis_connection

    from chatsite.scaleout.redis_client import multi_get

    client = get_redis_connection("default")
    keys = [cache.make_key(f"moving:{i}") for i in range(12)]
    for i, key in enumerate(keys):
        client.set(key, str(i))
    slot = key_slot(keys[0])
    before = on_cluster.master_of_slot(slot)
    target = next(m["port"] for m in on_cluster.masters() if m["port"] != before)
    assert multi_get(client, keys) == [str(i).encode() for i in range(12)]
    on_cluster.migrate_slot(slot, target)  # the client's slot map is now wrong
    assert multi_get(client, keys) == [str(i).encode() for i in range(12)]
    assert client.nodes_manager.get_node_from_slot(slot).port == target
    assert multi_get(client, keys + ["moving:absent"]) == [
        *(str(i).encode() for i in range(12)), None]


def test_hot_path_answers_with_a_session_from_the_cluster(on_cluster, project, member, send):
    from django_redis import get_redis_connection

    from chatsite.hotpath import HotReads, session_cache_prefix

    send(member, project, 3)
    client = login_client(member)
    path = f"/api/projects/{project.pk}/messages"
    assert client.get(path).status_code == 200  # fills the cache, as a first read does
    session_key = caches["sessions"].make_key(
        session_cache_prefix() + client.cookies[settings.SESSION_COOKIE_NAME].value)
    assert get_redis_connection("sessions").exists(session_key) == 1
    hot = HotReads(WSGIHandler())
    before = served()
    status, _headers, body = call(hot, environ(path, client))
    assert status == 200 and served() == before + 1
    assert [m["content"] for m in orjson.loads(body)["items"]] == [
        "hello 2", "hello 1", "hello 0"]
    before = served()
    status, _headers, body = call(hot, environ("/api/projects", client))
    assert status == 200 and served() == before + 1
    assert [p["id"] for p in orjson.loads(body)["items"]] == [project.pk]


# --- settings (no cluster needed: a fresh interpreter reads them) ------------------

CLUSTER_URL = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"
SHOW_REDIS = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.REDIS_CLUSTER, settings.CACHES['default']['OPTIONS']['CLIENT_CLASS'], "
    "settings.CACHES['sessions']['OPTIONS']['CLIENT_CLASS'], "
    "[h['address'] for h in settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']])"
)


def test_a_cluster_without_channel_layer_servers_refuses_to_start():
    result = run_settings(["-c", "import django; django.setup()"], REDIS_URL=CLUSTER_URL,
                          CHANNEL_REDIS_URLS="", SECRET_KEY="k" * 50)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "CHANNEL_REDIS_URLS" in result.stderr


def test_a_cluster_url_puts_cache_and_sessions_on_the_cluster_client():
    result = run_settings(["-c", SHOW_REDIS], REDIS_URL=CLUSTER_URL, SECRET_KEY="k" * 50,
                          CHANNEL_REDIS_URLS="redis://10.0.0.9:6379/0,redis://10.0.0.10:6379/0")
    assert result.returncode == 0, result.stderr
    client = "chatsite.scaleout.redis_client.ClusterClient"
    assert result.stdout.split("\n")[0] == (
        f"True {client} {client} ['redis://10.0.0.9:6379/0', 'redis://10.0.0.10:6379/0']")


def test_a_plain_redis_url_keeps_the_single_redis_layout():
    result = run_settings(["-c", SHOW_REDIS], REDIS_URL="redis://127.0.0.1:6379/0",
                          CHANNEL_REDIS_URLS="", SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    client = "django_redis.client.DefaultClient"
    assert result.stdout.split("\n")[0] == (
        f"False {client} {client} ['redis://127.0.0.1:6379/0']")


def test_cluster_urls_name_their_startup_nodes_and_credentials():
    assert parse_cluster_url(CLUSTER_URL) == ([("10.0.0.1", 7000), ("10.0.0.2", 7001)], {})
    assert parse_cluster_url("rediss+cluster://app:s%40cret@[::1]:7000,h2/0") == (
        [("::1", 7000), ("h2", 6379)], {"username": "app", "password": "s@cret", "ssl": True})
