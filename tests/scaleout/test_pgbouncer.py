"""The app behind PgBouncer in transaction mode (DB_POOLER=pgbouncer, prepared
statements and server-side cursors off): sign in, send, edit, history, search
and the project list through a real server on the throwaway layout
(tests/scaleout/conftest.py), primary and replica both through PgBouncer;
and the settings that refuse prepared statements behind it.
"""

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.live import ROOT, LiveServer, create_users_and_project, login, post_message
from tests.scaleout.conftest import app_env, read_metrics, replica_reads

SETTINGS_PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s;"
    "d = s.DATABASES['default'];"
    "print(json.dumps({'options': sorted(d['OPTIONS']),"
    " 'no_cursors': d.get('DISABLE_SERVER_SIDE_CURSORS', False),"
    " 'aliases': sorted(s.DATABASES), 'routers': s.DATABASE_ROUTERS}))"
)


def probe_settings(**env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST", "DB_", "DATABASE_"))}
    base.update({"DJANGO_SETTINGS_MODULE": "chatsite.settings",
                 "SECRET_KEY": "probe-secret-" + "k" * 40,
                 "DATABASE_URL": "postgres://chat@127.0.0.1:6432/chat"}, **env)
    return subprocess.run([sys.executable, "-c", SETTINGS_PROBE], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=60)


def test_prepared_statements_are_refused_behind_pgbouncer():
    result = probe_settings(DB_POOLER="pgbouncer", DB_PREPARED_STATEMENTS="true")
    assert result.returncode != 0
    assert "DB_PREPARED_STATEMENTS=true cannot work behind PgBouncer" in result.stderr


def test_pgbouncer_turns_prepared_statements_and_server_cursors_off():
    behind = probe_settings(DB_POOLER="pgbouncer")
    assert behind.returncode == 0, behind.stderr
    found = json.loads(behind.stdout.strip().splitlines()[-1])
    assert "prepare_threshold" not in found["options"]
    assert "server_side_binding" not in found["options"]
    assert found["no_cursors"] is True

    direct = probe_settings()
    found = json.loads(direct.stdout.strip().splitlines()[-1])
    assert "prepare_threshold" in found["options"]
    assert found["no_cursors"] is False
    # No replicas: no router, one alias, as before.
    assert found["aliases"] == ["default"] and found["routers"] == []


def test_replica_urls_add_aliases_and_the_router():
    result = probe_settings(DATABASE_REPLICA_URLS="postgres://chat@127.0.0.1:6433/chat,"
                                                  "postgres://chat@127.0.0.1:6434/chat")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["aliases"] == ["default", "replica1", "replica2"]
    assert found["routers"] == ["chatsite.dbrouter.ReplicaRouter"]


@pytest.fixture(scope="module")
def bounced_app(pg_cluster):
    env = app_env(pg_cluster, bouncer=True)
    project_id = create_users_and_project(env, ["pgb_alice", "pgb_bob"],
                                          project_name="Bounced")
    server = LiveServer(env, http="granian", threads=8).start()
    try:
        yield server, project_id
    finally:
        server.stop()


@pytest.mark.live
def test_the_api_works_through_pgbouncer_in_transaction_mode(bounced_app, pg_cluster):
    server, project_id = bounced_app
    alice = login(server.url, "pgb_alice")
    bob = login(server.url, "pgb_bob")
    token = f"bounce{uuid.uuid4().hex[:10]}"

    # Concurrent sends: PgBouncer hands its server connections from client to
    # client between transactions, where a prepared statement would collide.
    def send(i):
        return post_message(alice, project_id, f"{token} number {i}")

    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(send, range(40)))
    assert [r.status_code for r in sent] == [201] * 40
    ids = {r.json()["id"] for r in sent}

    first = sent[0].json()
    edited = alice.patch(server.url + f"/api/messages/{first['id']}",
                         json={"content": f"{token} edited"},
                         headers={"X-CSRFToken": alice.csrf, "Referer": server.url + "/"},
                         timeout=30)
    assert edited.status_code == 200, edited.text

    for reader in (alice, bob):
        history = reader.get(server.url + f"/api/projects/{project_id}/messages", timeout=30)
        assert history.status_code == 200
        assert ids <= {item["id"] for item in history.json()["items"]}
        caught_up = reader.get(server.url + f"/api/projects/{project_id}/messages",
                               params={"after": 0, "limit": 100}, timeout=30)
        assert caught_up.status_code == 200
        assert f"{token} edited" in {i["content"] for i in caught_up.json()["items"]}
        found = reader.get(server.url + "/api/search", params={"q": token}, timeout=30)
        assert found.status_code == 200
        assert len(found.json()["items"]) == 40
        projects = reader.get(server.url + "/api/projects", timeout=30)
        assert projects.status_code == 200
        assert project_id in {p["id"] for p in projects.json()["items"]}

    # Everything went through PgBouncer: its transactions on both databases.
    stats = {row["database"]: row for row in pg_cluster.bouncer.admin("SHOW STATS")}
    assert stats["chat"]["total_xact_count"] > 40
    metrics = read_metrics(server.url)
    if replica_reads(metrics, alias="replica1"):
        assert stats["chat_replica"]["total_xact_count"] > 0
    pools = {row["database"]: row for row in pg_cluster.bouncer.admin("SHOW POOLS")}
    assert pools["chat"]["pool_mode"] == "transaction"
