"""The service's clients of a Redis Cluster (REDIS_URL=redis+cluster://host:port[,host:port…]).

- ``cluster_client``: redis-py's RedisCluster (sync or asyncio) on such a URL,
  failing fast while a shard fails over (the caller degrades to PostgreSQL).
- ``ClusterClient`` / ``ClusterConnectionFactory``: django-redis's own client
  on a RedisCluster, for the cache and the sessions. django-redis is kept as
  the backend (every part of the app that asks "is this Redis?" keeps its
  answer); what a cluster changes is that a read of several keys spans hash
  slots, so ``get_many`` reads per slot (``mget_nonatomic``: one MGET per
  slot, sent to every shard in one pipeline), and that the cluster's own
  errors (a slot not served during a failover) count as Redis being away.

Chosen over django-valkey's cluster backend: that one runs on valkey-py, a
second fork of the same client, beside the redis-py the bus needs for sharded
pub/sub; here one client library serves cache, sessions and bus
(docs/SCALING.md, "Redis Cluster").
"""

import threading
from urllib.parse import unquote

from django_redis.client.default import DefaultClient
from django_redis.exceptions import ConnectionInterrupted
from django_redis.pool import ConnectionFactory
from redis.exceptions import RedisClusterException, RedisError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# A command whose node is down is tried again on a fresh slot map this many
# times, 50-250 ms apart: about a second in all, not redis-py's default of ten
# tries with up to ten seconds between them (a request would wait that long
# before degrading to the database).
CLUSTER_RETRIES = 3


def is_cluster_url(url):
    """Whether a Redis URL names a Redis Cluster (redis+cluster://…)."""
    return bool(url) and url.startswith(CLUSTER_SCHEMES)


def parse_cluster_url(url):
    """([(host, port)] startup nodes, {username, password, ssl}) of a cluster URL.

    ``redis+cluster://[user:password@]host:port[,host:port…]``; a path (a
    database number) means nothing on a cluster and is ignored.
    """
    scheme, _, rest = url.partition("://")
    rest = rest.split("/", 1)[0].split("?", 1)[0]
    options = {}
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, _, password = auth.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if scheme.startswith("rediss"):
        options["ssl"] = True
    nodes = []
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "6379"
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError(f"no host:port in the Redis Cluster URL {url!r}")
    return nodes, options


def cluster_client(url, *, asyncio=False, **options):
    """A redis-py RedisCluster (``asyncio``: its asyncio twin) on a cluster URL."""
    from redis.backoff import ExponentialBackoff

    if asyncio:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
    else:
        from redis.cluster import ClusterNode, RedisCluster
        from redis.retry import Retry
    nodes, auth = parse_cluster_url(url)
    settings = {
        **auth,
        # Keep serving the other shards while one has no master (the servers
        # run with cluster-require-full-coverage no as well).
        "require_full_coverage": False,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.05), CLUSTER_RETRIES),
        **options,
    }
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **settings)


def multi_get(client, keys):
    """MGET on a Redis server; on a cluster one MGET per hash slot, written to
    every shard concerned before any answer is read (values in `keys` order).

    The hot path's read (session, user, a project's version and page, an access
    entry) spans three shards. redis-py's ``mget_nonatomic`` does the same
    through its cluster pipeline at 1.3-1.7 times the CPU of these few lines
    (bench/redis_cluster_bench.py); it remains the way out of anything unusual here (a
    moved slot, a node away), as it follows redirections and refreshes the
    slot map.
    """
    if not hasattr(client, "nodes_manager"):
        return client.mget(keys)
    groups = {}  # node name -> (node, {slot: [positions in keys]})
    try:
        for position, key in enumerate(keys):
            slot = client.keyslot(key)
            node = client.nodes_manager.get_node_from_slot(slot)
            groups.setdefault(node.name, (node, {}))[1].setdefault(slot, []).append(position)
    except Exception:  # noqa: BLE001 - a slot without a master: the library decides
        return client.mget_nonatomic(keys)
    values = [None] * len(keys)
    borrowed = []
    try:
        for node, slots in groups.values():
            pool = client.get_redis_connection(node).connection_pool
            connection = pool.get_connection()
            borrowed.append((pool, connection, slots))
            connection.send_packed_command(connection.pack_commands(
                [("MGET", *(keys[i] for i in positions)) for positions in slots.values()]))
        for _pool, connection, slots in borrowed:
            for positions in slots.values():
                for position, value in zip(positions, connection.read_response()):
                    values[position] = value
    except Exception:  # noqa: BLE001 - MOVED, ASK, a node away: the library's way
        for _pool, connection, _slots in borrowed:
            connection.disconnect()  # unread answers must not reach the next user
        for pool, connection, _slots in borrowed:
            pool.release(connection)
        return client.mget_nonatomic(keys)
    for pool, connection, _slots in borrowed:
        pool.release(connection)
    return values


class ClusterConnectionFactory(ConnectionFactory):
    """django-redis's connection factory returning one RedisCluster per URL and
    timeouts, shared by the process (the cache and the sessions alias, every
    thread): it holds the slot map and a connection pool per node."""

    _clusters = {}
    _clusters_lock = threading.Lock()

    def connect(self, url):
        params = self.make_connection_params(url)
        key = (url, params.get("socket_timeout"), params.get("socket_connect_timeout"))
        client = self._clusters.get(key)
        if client is None:
            with self._clusters_lock:
                client = self._clusters.get(key)
                if client is None:
                    client = self._clusters[key] = cluster_client(
                        url,
                        socket_timeout=params.get("socket_timeout"),
                        socket_connect_timeout=params.get("socket_connect_timeout"),
                    )
        return client

    def disconnect(self, connection):
        connection.disconnect_connection_pools()


def _interrupted(method):
    """Let a cluster error (no master for a slot yet, a slot map being rebuilt)
    reach the backend as django-redis's ConnectionInterrupted: the cache then
    treats it like Redis being away (IGNORE_EXCEPTIONS, the callers' fallbacks)."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ConnectionInterrupted:
            raise
        except (RedisClusterException, RedisError) as exc:
            raise ConnectionInterrupted(connection=None) from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class ClusterClient(DefaultClient):
    """django-redis's DefaultClient on a Redis Cluster (CLIENT_CLASS).

    LOCATION is one cluster URL: its commas separate startup nodes, not
    django-redis's primary and replicas (the cluster routes reads itself).
    """

    def __init__(self, server, params, backend):
        params = {**params, "OPTIONS": {
            "CONNECTION_FACTORY": f"{__name__}.ClusterConnectionFactory",
            **params.get("OPTIONS", {})}}
        super().__init__(server, params, backend)
        self._server = [server if isinstance(server, str) else ",".join(server)]
        self._clients = [None]

    def get_many(self, keys, version=None, client=None):
        """Read many keys: one MGET per hash slot (multi_get)."""
        if client is None:
            client = self.get_client(write=False)
        if not keys:
            return {}
        map_keys = {self.make_key(k, version=version): k for k in keys}
        values = multi_get(client, list(map_keys))
        return {map_keys[key]: self.decode(value)
                for key, value in zip(map_keys, values) if value is not None}


for _name in ("get", "get_many", "set", "set_many", "add", "delete", "delete_many",
              "incr", "decr", "touch", "ttl", "expire", "persist", "has_key", "clear",
              "incr_version", "keys", "iter_keys", "delete_pattern", "lock"):
    setattr(ClusterClient, _name, _interrupted(getattr(ClusterClient, _name)))
