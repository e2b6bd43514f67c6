"""A Redis Cluster on loopback, started and stopped by pid: `make cluster` and the tests.

Three masters and three replicas by default (ports 7101-7106), each a plain
``redis-server --cluster-enabled yes`` under its own directory of ``base_dir``
with its pid file, joined by ``redis-cli --cluster create --cluster-replicas 1``.
Nothing here touches a system service: ``stop`` ends only the pids it wrote.

Also here, for the fault tests and for operators trying them by hand: kill a
master (SIGKILL, by pid) and wait for its replica to take over, bring a killed
node back (it rejoins as a replica), and move the hash slot of a key (a bus
channel) to another master with the standard IMPORTING/MIGRATING/MIGRATE/NODE
steps.

    python -m chatsite.scaleout.redis_cluster up --dir .cluster/redis
    python -m chatsite.scaleout.redis_cluster down --dir .cluster/redis

``up`` prints the environment of `make serve` on this layout (REDIS_URL, and
CHANNEL_REDIS_URLS for the standalone Redis the channel layer needs:
channels-redis has no cluster client; docs/SCALING.md, "Redis Cluster").
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORTS = tuple(range(7101, 7107))
# The channel layer's standalone Redis of `up` (0: none).
DEFAULT_CHANNEL_LAYER_PORT = 7107
NODE_TIMEOUT_MS = 2000
SLOTS = 16384


def missing_binaries():
    """Why the kit cannot run here (a sentence), or None."""
    absent = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if absent:
        return f"needs {' and '.join(absent)} (apt-get install redis-server)"
    return None


def key_slot(key):
    """The hash slot of a key or shard channel (its {tag} if it has one)."""
    from redis.crc import key_slot as slot

    return slot(key.encode() if isinstance(key, str) else key)


class RedisClusterKit:
    """A 3-master + 3-replica (by default) Redis Cluster under ``base_dir``."""

    def __init__(self, base_dir, ports=DEFAULT_PORTS, *, host=HOST, replicas=1,
                 node_timeout_ms=NODE_TIMEOUT_MS, channel_layer_port=None):
        self.base_dir = Path(base_dir).resolve()
        self.ports = tuple(int(p) for p in ports)
        self.host = host
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.channel_layer_port = channel_layer_port or None

    # --- addresses -------------------------------------------------------------------

    @property
    def url(self):
        """REDIS_URL for this cluster: every node as a startup node."""
        return "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in self.ports)

    @property
    def channel_layer_url(self):
        if self.channel_layer_port is None:
            return None
        return f"redis://{self.host}:{self.channel_layer_port}/0"

    def env(self):
        """The variables `make serve` needs on this layout."""
        env = {"REDIS_URL": self.url}
        if self.channel_layer_url:
            env["CHANNEL_REDIS_URLS"] = self.channel_layer_url
        return env

    def node_dir(self, port):
        return self.base_dir / f"redis-{port}"

    def pid_file(self, port):
        return self.node_dir(port) / "redis.pid"

    def client(self, port, **kwargs):
        """A plain (non-cluster) client of one node, for admin commands."""
        import redis

        kwargs.setdefault("socket_timeout", 2)
        kwargs.setdefault("socket_connect_timeout", 1)
        return redis.Redis(host=self.host, port=port, decode_responses=True, **kwargs)

    # --- processes -------------------------------------------------------------------

    def pid(self, port):
        """The pid of a node this kit started and that still runs, else None."""
        try:
            pid = int(self.pid_file(port).read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"redis-server" not in cmdline or Path(f"/proc/{pid}/stat").read_text().split(
                ")")[-1].split()[0] == "Z":
            return None
        return pid

    def alive(self, port):
        if self.pid(port) is None:
            return False
        try:
            return bool(self.client(port).ping())
        except Exception:  # noqa: BLE001 - not answering is not alive
            return False

    def _start_node(self, port, *, cluster=True):
        directory = self.node_dir(port)
        directory.mkdir(parents=True, exist_ok=True)
        args = [
            shutil.which("redis-server"), "--port", str(port), "--bind", self.host,
            "--dir", str(directory), "--logfile", str(directory / "redis.log"),
            "--daemonize", "no", "--save", "", "--appendonly", "no",
        ]
        if cluster:
            args += [
                # A new replica syncs at once (the default waits 5 s for others
                # to share the transfer): one that has never synced cannot
                # take over from its master.
                "--repl-diskless-sync-delay", "0",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # The other shards keep serving while one fails over: a cache
                # and a bus with a database behind them prefer that to a whole
                # cluster refusing every key (docs/SCALING.md, "Redis Cluster").
                "--cluster-require-full-coverage", "no",
            ]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid_file(port).write_text(str(proc.pid))
        return proc.pid

    def _wait_ping(self, port, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive(port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start: "
                           f"{self._log_tail(port)}")

    def _log_tail(self, port):
        try:
            return (self.node_dir(port) / "redis.log").read_text()[-1000:]
        except OSError:
            return "(no log)"

    def _stop_pid(self, port, sig=signal.SIGTERM, timeout=5):
        pid = self.pid(port)
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.pid(port) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.pid(port) is not None:
                os.kill(pid, signal.SIGKILL)
                while self.pid(port) is not None:
                    time.sleep(0.02)
        try:
            self.pid_file(port).unlink()
        except FileNotFoundError:
            pass

    # --- the whole layout ------------------------------------------------------------

    def start(self, timeout=30):
        """Start the layout, or keep it when it already runs healthy; return self."""
        if missing_binaries():
            raise RuntimeError(missing_binaries())
        if all(self.alive(p) for p in self.ports) and self._cluster_ok():
            self._start_channel_layer()
            return self
        self.stop()
        for port in self.ports:
            shutil.rmtree(self.node_dir(port), ignore_errors=True)
            self._start_node(port)
        for port in self.ports:
            self._wait_ping(port)
        subprocess.run(
            [shutil.which("redis-cli"), "--cluster", "create",
             *(f"{self.host}:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, text=True, timeout=timeout)
        self.wait_ok(timeout=timeout)
        self._start_channel_layer()
        return self

    def _start_channel_layer(self):
        port = self.channel_layer_port
        if port is not None and not self.alive(port):
            self._stop_pid(port)
            self._start_node(port, cluster=False)
            self._wait_ping(port)

    def stop(self):
        """Stop every node this kit started (by its pid file). Idempotent."""
        for port in (*self.ports, *([self.channel_layer_port] if self.channel_layer_port
                                     else [])):
            self._stop_pid(port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- state -----------------------------------------------------------------------

    def nodes(self):
        """CLUSTER NODES as seen by a live node: [{id, port, role, master_id, slots,
        flags}] for nodes not marked failed."""
        for port in self.ports:
            if not self.alive(port):
                continue
            try:
                text = self.client(port).execute_command("CLUSTER", "NODES")
            except Exception:  # noqa: BLE001 - ask the next node
                continue
            if isinstance(text, dict):  # redis-py parsed it
                text = "\n".join(f"{v['node_id']} {k} {v['flags']} {v['master_id']}"
                                 for k, v in text.items())
            return _parse_nodes(text)
        raise RuntimeError("no node of the cluster answers")

    def masters(self):
        return [n for n in self.nodes() if n["role"] == "master" and "fail" not in n["flags"]]

    def master_of_slot(self, slot):
        """The port of the master that owns `slot` (as a live node sees it)."""
        for node in self.nodes():
            if node["role"] == "master" and "fail" not in node["flags"] and any(
                    lo <= slot <= hi for lo, hi in node["slots"]):
                return node["port"]
        return None

    def master_of_key(self, key):
        return self.master_of_slot(key_slot(key))

    def _cluster_ok(self):
        """Every live node says ok, with all slots served, and they agree on who
        serves which."""
        views = set()
        for port in self.ports:
            if not self.alive(port):
                continue
            try:
                info = self.client(port).execute_command("CLUSTER", "INFO")
                if isinstance(info, (bytes, str)):
                    info = dict(line.split(":", 1) for line in str(info).split()
                                if ":" in line)
                if info.get("cluster_state") != "ok" or int(
                        info.get("cluster_slots_ok", 0)) != SLOTS:
                    return False
                text = self.client(port).execute_command("CLUSTER", "NODES")
            except Exception:  # noqa: BLE001
                return False
            if not isinstance(text, str):
                return False
            nodes = _parse_nodes(text)
            if any(n["role"] == "master" and not n["slots"] and "fail" not in n["flags"]
                   for n in nodes):
                return False  # a replica still joining (a master without slots)
            views.add(tuple(sorted((n["port"], tuple(n["slots"])) for n in nodes
                                   if n["role"] == "master" and n["slots"]
                                   and "fail" not in n["flags"])))
        return len(views) == 1

    def _replicas_synced(self):
        """Every live replica has its master link up (it can take over)."""
        for node in self.nodes():
            if node["role"] != "replica" or "fail" in node["flags"] or not self.alive(
                    node["port"]):
                continue
            try:
                info = self.client(node["port"]).info("replication")
            except Exception:  # noqa: BLE001
                return False
            if info.get("master_link_status") != "up":
                return False
        return True

    def wait_ok(self, timeout=30):
        """Wait for cluster_state:ok, one slot map everywhere, replicas in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._cluster_ok() and self._replicas_synced():
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok with its replicas "
                           "in sync")

    # --- faults ----------------------------------------------------------------------

    def kill(self, port):
        """SIGKILL one node (by its pid); returns when it is gone."""
        self._stop_pid(port, signal.SIGKILL)

    def kill_master_of(self, key):
        """SIGKILL the master that owns `key`'s slot; return its port."""
        port = self.master_of_key(key)
        self.kill(port)
        return port

    def wait_failover(self, slot, old_port, timeout=30):
        """Wait until another master serves `slot` and the cluster is ok again;
        return (new master's port, seconds waited)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            try:
                port = self.master_of_slot(slot)
            except RuntimeError:
                port = None
            if port not in (None, old_port) and self._cluster_ok():
                return port, time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"no failover of slot {slot} within {timeout} s")

    def restart(self, port, timeout=30):
        """Start a killed node again on its own nodes.conf: it rejoins the cluster
        (as a replica of the master that replaced it)."""
        if not self.alive(port):
            self._start_node(port)
            self._wait_ping(port)
        self.wait_ok(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            me = next((n for n in self.nodes() if n["port"] == port), None)
            if me is not None and "fail" not in me["flags"] and "handshake" not in me["flags"]:
                self.wait_ok(timeout=timeout)  # and synced: it can take over again
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {port} did not rejoin the cluster")

    def migrate_slot(self, slot, to_port):
        """Move `slot` (and its keys) to the master on `to_port`; returns the old
        master's port. The usual resharding steps, as redis-cli --cluster
        reshard does them for one slot."""
        from_port = self.master_of_slot(slot)
        if from_port == to_port:
            return from_port
        by_port = {n["port"]: n for n in self.nodes()}
        source, target = self.client(from_port), self.client(to_port)
        source_id, target_id = by_port[from_port]["id"], by_port[to_port]["id"]
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            source.execute_command("MIGRATE", self.host, to_port, "", 0, 5000,
                                   "REPLACE", "KEYS", *keys)
        # The target first (it owns the slot from now on), then the source,
        # then every other master, so that no node keeps pointing at an old owner.
        target.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.masters():
            if node["port"] not in (from_port, to_port):
                self.client(node["port"]).execute_command(
                    "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_ok()
        return from_port


def _parse_nodes(text):
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@")[0]
        flags = set(parts[2].split(","))
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # a slot being imported or migrated
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes.append({
            "id": parts[0], "port": int(address.rsplit(":", 1)[1]),
            "role": "master" if "master" in flags else "replica",
            "master_id": None if parts[3] == "-" else parts[3],
            "flags": flags, "slots": slots,
        })
    return nodes


def _parse_ports(text):
    if "-" in text and "," not in text:
        lo, hi = (int(x) for x in text.split("-"))
        return tuple(range(lo, hi + 1))
    return tuple(int(x) for x in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m chatsite.scaleout.redis_cluster",
        description="A 3-master + 3-replica Redis Cluster on loopback, by pid.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", required=True, help="base directory (pid files, logs)")
    parser.add_argument("--ports", default=f"{DEFAULT_PORTS[0]}-{DEFAULT_PORTS[-1]}",
                        help="cluster node ports: LO-HI or a comma list (default %(default)s)")
    parser.add_argument("--channel-layer-port", type=int, default=DEFAULT_CHANNEL_LAYER_PORT,
                        help="standalone Redis for the channel layer (0: none; "
                             "default %(default)s)")
    args = parser.parse_args(argv)
    kit = RedisClusterKit(args.dir, _parse_ports(args.ports),
                          channel_layer_port=args.channel_layer_port)
    if args.action == "down":
        kit.stop()
        return 0
    if args.action == "status":
        up = [p for p in kit.ports if kit.alive(p)]
        print(f"nodes up: {len(up)}/{len(kit.ports)}; cluster ok: {bool(up) and kit._cluster_ok()}")
        return 0 if len(up) == len(kit.ports) else 1
    reason = missing_binaries()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    kit.start()
    for name, value in kit.env().items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
