"""The PostgreSQL half of the scale-out layout for the tests: one throwaway
primary + streaming replica + PgBouncer per test session
(chatsite.scaleout.postgres, on free ports under /tmp), stopped at the end
even when a test fails, and app servers run against it.

Production shape only (DATABASE_URL=postgres://..., REDIS_URL): skipped with
the reason otherwise; with REQUIRE_SERVICES=1 missing binaries fail.
"""

import os
import shutil
import tempfile
import urllib.request
import uuid
from urllib.parse import urlparse, urlunparse

import pytest

from chatsite.scaleout.postgres import PostgresCluster, missing_binaries
from tests.live import live_base_env

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def _skip_reason():
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return "scale-out tests run in production shape: set DATABASE_URL=postgres://..."
    if not os.environ.get("REDIS_URL"):
        return "scale-out tests run in production shape: set REDIS_URL=redis://..."
    missing = missing_binaries()
    if missing:
        return f"needs {', '.join(missing)} (Debian: apt-get install postgresql pgbouncer)"
    return None


@pytest.fixture(scope="session")
def pg_cluster():
    """A primary, a streaming replica and PgBouncer (transaction mode), database
    `chat` migrated; every server stopped and its directory removed at the end."""
    reason = _skip_reason()
    if reason:
        in_production_shape = os.environ.get("DATABASE_URL", "").startswith("postgres")
        if REQUIRE_SERVICES and in_production_shape:
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from tests.live import run_manage

    base = tempfile.mkdtemp(prefix="chat-pg-")
    cluster = PostgresCluster(base, primary_port=0, replica_port=0, bouncer_port=0)
    try:
        cluster.up()
        env = app_env(cluster)
        run_manage(env, "migrate", "--noinput", "-v0")
        cluster.replica.wait_caught_up(cluster.primary)
        yield cluster
    finally:
        cluster.down(purge=True)
        shutil.rmtree(base, ignore_errors=True)


def app_env(cluster, *, bouncer=False, **extra):
    """Environment of an app server on the cluster: the primary and the replica
    direct, both through PgBouncer (bouncer=True) or make cluster's layout
    (bouncer="primary": the primary through PgBouncer, the replica direct);
    Redis as the session has it with keys and bus channels of its own."""
    env = live_base_env()
    for name in ("PROMETHEUS_MULTIPROC_DIR", "DB_POOLER", "DB_PREPARED_STATEMENTS",
                 "DATABASE_REPLICA_URLS"):
        env.pop(name, None)
    if bouncer == "primary":  # make cluster's layout: PgBouncer to the primary, replica direct
        primary, replica = cluster.bouncer_urls()[0], cluster.urls()[1]
    else:
        primary, replica = cluster.bouncer_urls() if bouncer else cluster.urls()
    tag = uuid.uuid4().hex[:10]
    env.update({
        "DATABASE_URL": primary,
        "DATABASE_REPLICA_URLS": replica,
        "CACHE_KEY_PREFIX": f"pg{tag}",
        "BUS_PREFIX": f"chat:pg{tag}",
        # Removed with the cluster's directory at the end of the session.
        "MEDIA_ROOT": tempfile.mkdtemp(prefix="media-", dir=cluster.base_dir),
        "SEND_RATE_PER_USER": "0",
    })
    redis_url = os.environ["REDIS_URL"]
    if redis_url.startswith("redis://"):
        env["REDIS_URL"] = urlunparse(urlparse(redis_url)._replace(path="/12"))
    if bouncer:
        env.update({"DB_POOLER": "pgbouncer", "DB_PREPARED_STATEMENTS": "false"})
    env.update(extra)
    return env


def read_metrics(base_url):
    """{(sample name, frozenset(labels)): value} of an app server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def replica_reads(metrics, *, alias=None, reason=None):
    """Sum of chat_replica_reads_total over the labels given."""
    total = 0.0
    for (name, labels), value in metrics.items():
        if name != "chat_replica_reads_total":
            continue
        labels = dict(labels)
        if alias is not None and labels.get("alias") != alias:
            continue
        if reason is not None and labels.get("reason") != reason:
            continue
        total += value
    return total


def statements_on(metrics, alias):
    """Statements an app server ran on one database alias (django_db_execute_total)."""
    return sum(value for (name, labels), value in metrics.items()
               if name == "django_db_execute_total" and dict(labels).get("alias") == alias)
