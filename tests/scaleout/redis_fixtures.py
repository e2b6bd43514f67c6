"""The Redis half of the scale-out layout for the tests: a 3-master + 3-replica
Redis Cluster on loopback (chatsite.scaleout.redis_cluster, ports 7101-7106),
one per test module, stopped at the end even when a test fails.

Import the fixtures into the test module that uses them (``from
tests.scaleout.redis_fixtures import redis_cluster``): they are not in a
conftest, so modules that do not need a cluster never start one.

Production shape only (DATABASE_URL=postgres://..., REDIS_URL): skipped with the
reason otherwise; with REQUIRE_SERVICES=1 a missing redis-server fails.
"""

import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from chatsite.scaleout.redis_cluster import DEFAULT_PORTS, RedisClusterKit, missing_binaries

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}
# A fixed directory: the pid files of a run that died are found (and those
# nodes stopped) by the next one.
BASE_DIR = Path(tempfile.gettempdir()) / "chat-test-redis-cluster"


def cluster_skip_reason():
    """Why the Redis Cluster tests cannot run here, or None."""
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return "Redis Cluster tests run in production shape: set DATABASE_URL=postgres://..."
    if not os.environ.get("REDIS_URL", "").startswith("redis://"):
        return "Redis Cluster tests run in production shape: set REDIS_URL=redis://..."
    return missing_binaries()


@pytest.fixture(scope="module")
def redis_cluster():
    """A running 3+3 Redis Cluster (a RedisClusterKit); stopped after the module."""
    reason = cluster_skip_reason()
    if reason:
        if REQUIRE_SERVICES and os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    kit = RedisClusterKit(BASE_DIR, DEFAULT_PORTS)
    try:
        kit.start()
        yield kit
    finally:
        kit.stop()


def cluster_env(kit, env, **extra):
    """An app server's environment (tests.live.make_live_env's) moved onto the
    cluster: cache, sessions and bus on it, the channel layer on the session's
    standalone Redis, keys and channels of its own."""
    tag = uuid.uuid4().hex[:10]
    plain = env.get("REDIS_URL") or os.environ["REDIS_URL"]
    env = dict(env)
    env.update({
        "REDIS_URL": kit.url,
        "CHANNEL_REDIS_URLS": urlunparse(urlparse(plain)._replace(path="/1")),
        "CACHE_KEY_PREFIX": f"rc{tag}",
        "BUS_PREFIX": f"chat:rc{tag}",
        "SEND_RATE_PER_USER": "0",
    })
    env.update(extra)
    return env


def cluster_caches(kit, prefix="rc-test"):
    """settings.CACHES of the production shape on the cluster (override_settings)."""
    client = {"CLIENT_CLASS": "chatsite.scaleout.redis_client.ClusterClient",
              "CONNECTION_FACTORY": "chatsite.scaleout.redis_client.ClusterConnectionFactory",
              "SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1}
    return {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": kit.url,
                    "TIMEOUT": 300, "KEY_PREFIX": prefix, "OPTIONS": dict(client)},
        "sessions": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": kit.url,
                     "KEY_PREFIX": prefix,
                     "OPTIONS": {**client, "IGNORE_EXCEPTIONS": True}},
    }
