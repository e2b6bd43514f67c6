"""A PostgreSQL primary, a streaming replica and PgBouncer on loopback, started
and stopped by pid: `make cluster` and the scale-out tests (tests/scaleout/).

- **Primary**: `initdb` (trust on loopback) into `<dir>/primary`, its own port,
  `wal_level=replica`; a database (`chat` by default) is created in it.
- **Replica**: `pg_basebackup -R -X stream -C -S replica1` of the primary into
  `<dir>/replica`, started on its own port as a hot standby streaming from the
  primary through the slot `replica1`.
- **PgBouncer** in transaction mode on its own port, in front of both: the
  database `chat` goes to the primary, `chat_replica` to the replica.

Every server's pid is read from the pid file it writes under `<dir>` and only
those pids are signalled; `down` is idempotent (a server already gone is
skipped) and leaves the files for a look at the logs (`--purge` removes them).
Running as root, the servers run as the `postgres` user (PostgreSQL and
PgBouncer refuse root) and `<dir>` is handed to it.

    python -m chatsite.scaleout.postgres up --dir .cluster/postgres
    python -m chatsite.scaleout.postgres down --dir .cluster/postgres

`up` prints the environment of `make serve` on this layout: DATABASE_URL (the
primary through PgBouncer), DATABASE_REPLICA_URLS (the replica, direct), DB_POOLER and
DB_PREPARED_STATEMENTS (docs/SCALING.md, "PostgreSQL replicas and PgBouncer").
"""

import argparse
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PORTS = {"primary": 7201, "replica": 7202, "bouncer": 7203}
SLOT = "replica1"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    """A server of the kit did not start (its log's tail is in the message)."""


# --- binaries and the user servers run as -------------------------------------------


def pg_bindir():
    """Directory of PostgreSQL's server binaries: PG_BINDIR, the newest
    /usr/lib/postgresql/*/bin, or where `initdb` is on PATH; None if none."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                         reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for candidate in candidates:
        if candidate and os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return candidate
    return None


def pgbouncer_binary():
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)


def missing_binaries(*, bouncer=True):
    """Names of the binaries this kit needs and cannot find (empty: all there)."""
    missing = []
    bindir = pg_bindir()
    for name in ("initdb", "pg_ctl", "postgres", "pg_basebackup"):
        if bindir is None or not os.access(os.path.join(bindir, name), os.X_OK):
            missing.append(name)
    if bouncer and pgbouncer_binary() is None:
        missing.append("pgbouncer")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            missing.append(f"a '{SUPERUSER}' user to run the servers as (running as root)")
    return missing


def _as_server_user(cmd):
    """The command as the `postgres` user when running as root (servers refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *cmd]
    return cmd


def _give_to_server_user(path):
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SUPERUSER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(cmd, *, what, timeout=120):
    result = subprocess.run(_as_server_user(cmd), capture_output=True, text=True,
                            timeout=timeout, cwd="/")
    if result.returncode != 0:
        raise ClusterError(f"{what} failed ({result.returncode}): "
                           f"{(result.stdout + result.stderr)[-2000:]}")
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_pid(pid_file):
    """The pid on a pid file's first line when that process runs, else None."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not reaped yet) is gone for our purpose.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _stop_pid(pid, sig, *, timeout=20.0):
    """Signal one pid and wait for it to exit (SIGKILL after `timeout`)."""
    if pid is None or not _pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)


def _wait_port(port, *, timeout=30.0, pid_of=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = Path(log).read_text()[-2000:] if log and Path(log).exists() else ""
    raise ClusterError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s. {tail}")


# --- servers ---------------------------------------------------------------------------


class PostgresServer:
    """One PostgreSQL server (a data directory and a port) run with pg_ctl."""

    def __init__(self, data_dir, port):
        self.data_dir = Path(data_dir)
        self.port = port
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database="postgres"):
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self):
        """The postmaster's pid from its pid file, or None when it is not running."""
        return _live_pid(self.data_dir / "postmaster.pid")

    @property
    def running(self):
        return self.pid is not None

    def start(self, timeout=30):
        """Start the server (nothing if it runs already); return self."""
        if self.running:
            return self
        bindir = pg_bindir()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1"
                   f" -c unix_socket_directories={self.data_dir.parent}")
        _run([f"{bindir}/pg_ctl", "-D", str(self.data_dir), "-l", str(self.log),
              "-w", "-t", str(timeout), "-o", options, "start"],
             what=f"starting PostgreSQL on {self.port}", timeout=timeout + 10)
        _wait_port(self.port, timeout=timeout, log=self.log)
        return self

    def stop(self, *, mode="fast"):
        """Stop this server by its pid: SIGINT is PostgreSQL's fast shutdown,
        SIGQUIT its immediate one (a crash, as a machine failure would be)."""
        sig = signal.SIGQUIT if mode == "immediate" else signal.SIGINT
        _stop_pid(self.pid, sig)

    def execute(self, sql, *, database="postgres", fetch=False):
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if fetch else None


class Primary(PostgresServer):
    def init(self):
        """initdb (trust on loopback) and the settings a streaming replica needs."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _give_to_server_user(self.data_dir)
        _run([f"{pg_bindir()}/initdb", "-D", str(self.data_dir), "-U", SUPERUSER,
              "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
             what="initdb")
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 10\n"
                       "max_replication_slots = 10\nhot_standby = on\n"
                       "shared_buffers = 64MB\nmax_connections = 200\n"
                       "timezone = 'UTC'\n")

    def create_database(self, name):
        """Create a database unless it exists (the replica gets it through the WAL)."""
        found = self.execute(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", fetch=True)
        if not found:
            self.execute(f'CREATE DATABASE "{name}"')

    def current_lsn(self):
        return self.execute("SELECT pg_current_wal_lsn() - '0/0'", fetch=True)[0][0]


class Replica(PostgresServer):
    def init(self, primary):
        """pg_basebackup of the primary: recovery settings written (-R), WAL
        streamed during the copy (-X stream), slot `replica1` created (-C -S)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # A slot left by an earlier replica of this primary would make -C fail.
        primary.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        f" WHERE slot_name = '{SLOT}' AND NOT active")
        _run([f"{pg_bindir()}/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
              "-U", SUPERUSER, "-D", str(self.data_dir), "-R", "-X", "stream", "-C",
              "-S", SLOT, "--no-sync", "--checkpoint=fast"], what="pg_basebackup")

    def wait_streaming(self, primary, timeout=30):
        """Wait until the primary sees this replica streaming."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = primary.execute("SELECT state FROM pg_stat_replication", fetch=True)
            if any(state == "streaming" for (state,) in rows):
                return
            time.sleep(0.05)
        raise ClusterError("the replica did not start streaming")

    def replay_lsn(self):
        return self.execute("SELECT pg_last_wal_replay_lsn() - '0/0'", fetch=True)[0][0]

    def wait_caught_up(self, primary, timeout=30):
        """Wait until the replica has replayed everything the primary wrote so far."""
        target = primary.current_lsn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lsn = self.replay_lsn()
            if lsn is not None and lsn >= target:
                return
            time.sleep(0.01)
        raise ClusterError("the replica did not catch up")

    def pause_replay(self):
        """Stop applying WAL (it is still received): the replica falls behind."""
        self.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self):
        self.execute("SELECT pg_wal_replay_resume()")


class Bouncer:
    """PgBouncer in transaction mode in front of the primary (and the replica)."""

    def __init__(self, base_dir, port):
        self.dir = Path(base_dir) / "pgbouncer"
        self.port = port
        self.ini = self.dir / "pgbouncer.ini"
        self.pidfile = self.dir / "pgbouncer.pid"
        self.log = self.dir / "pgbouncer.log"

    def url(self, database):
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self):
        return _live_pid(self.pidfile)

    @property
    def running(self):
        return self.pid is not None

    def configure(self, databases, *, pool_size=20, max_client_conn=500):
        """databases: {name: (port, dbname)} of servers on 127.0.0.1."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _give_to_server_user(self.dir)
        lines = ["[databases]"]
        lines += [f"{name} = host=127.0.0.1 port={port} dbname={dbname}"
                  for name, (port, dbname) in databases.items()]
        lines += [
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.dir}",
            "auth_type = trust",
            f"auth_file = {self.dir / 'userlist.txt'}",
            f"admin_users = {SUPERUSER}",
            f"stats_users = {SUPERUSER}",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            f"max_client_conn = {max_client_conn}",
            # psycopg sends none of these, but a driver that sets them at
            # connect must not be refused.
            "ignore_startup_parameters = extra_float_digits, options",
            f"pidfile = {self.pidfile}",
            f"logfile = {self.log}",
            "log_connections = 0",
            "log_disconnections = 0",
        ]
        self.ini.write_text("\n".join(lines) + "\n")
        (self.dir / "userlist.txt").write_text(f'"{SUPERUSER}" ""\n')
        for path in (self.ini, self.dir / "userlist.txt"):
            _give_to_server_user(path)

    def start(self, timeout=15):
        if self.running:
            return self
        _run([pgbouncer_binary(), "-d", str(self.ini)], what="starting PgBouncer")
        _wait_port(self.port, timeout=timeout, log=self.log)
        return self

    def stop(self):
        _stop_pid(self.pid, signal.SIGINT)

    def admin(self, command):
        """Rows of an admin console command (SHOW POOLS, SHOW STATS, ...)."""
        import psycopg

        with psycopg.connect(self.url("pgbouncer"), autocommit=True, connect_timeout=5,
                             prepare_threshold=None) as conn:
            cursor = conn.cursor()
            cursor.execute(command, prepare=False)
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row)) for row in cursor.fetchall()]


# --- the layout --------------------------------------------------------------------


class PostgresCluster:
    """A primary, one streaming replica and PgBouncer under `base_dir`.

    Ports default to 7201 (primary), 7202 (replica), 7203 (PgBouncer); pass 0
    for a free one each (the tests do). `up()` is idempotent: servers already
    running are kept.
    """

    def __init__(self, base_dir, *, primary_port=None, replica_port=None,
                 bouncer_port=None, database="chat", bouncer=True):
        self.base_dir = Path(base_dir).resolve()
        self.database = database
        self.with_bouncer = bouncer
        ports = self._ports(primary_port, replica_port, bouncer_port)
        self.primary = Primary(self.base_dir / "primary", ports["primary"])
        self.replica = Replica(self.base_dir / "replica", ports["replica"])
        # Always known, so that `down` stops one an earlier `up` started.
        self.bouncer = Bouncer(self.base_dir, ports["bouncer"])

    def _ports(self, primary, replica, bouncer):
        """Ports as asked; 0 picks a free one. A directory brought up before
        keeps its ports (remembered in ports.txt), so `down` finds the same."""
        saved = self.base_dir / "ports.txt"
        if saved.exists():
            found = dict(line.split("=", 1) for line in saved.read_text().split())
            return {name: int(port) for name, port in found.items()}
        asked = {"primary": primary, "replica": replica, "bouncer": bouncer}
        return {name: (DEFAULT_PORTS[name] if port is None else port) or free_port()
                for name, port in asked.items()}

    def _save_ports(self):
        self.base_dir.mkdir(parents=True, exist_ok=True)
        _give_to_server_user(self.base_dir)
        ports = {"primary": self.primary.port, "replica": self.replica.port,
                 "bouncer": self.bouncer.port}
        (self.base_dir / "ports.txt").write_text(
            "\n".join(f"{name}={port}" for name, port in ports.items()) + "\n")

    def up(self):
        """Bring every server up (those running are kept); return self.env()."""
        try:
            self._save_ports()
            self.primary.init()
            self.primary.start()
            self.primary.create_database(self.database)
            self.replica.init(self.primary)
            self.replica.start()
            self.replica.wait_streaming(self.primary)
            if self.with_bouncer:
                self.bouncer.configure({
                    self.database: (self.primary.port, self.database),
                    f"{self.database}_replica": (self.replica.port, self.database),
                })
                self.bouncer.start()
        except BaseException:
            self.down()
            raise
        return self.env()

    def down(self, *, purge=False):
        """Stop every server this directory started (by pid); idempotent."""
        self.bouncer.stop()
        self.replica.stop()
        self.primary.stop()
        if purge:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def urls(self, database=None):
        """Direct URLs of the primary and the replica for one database."""
        database = database or self.database
        return self.primary.url(database), self.replica.url(database)

    def bouncer_urls(self, database=None):
        """PgBouncer's URLs of the primary and the replica (database `chat` /
        `chat_replica` as configured; other databases go direct)."""
        return (self.bouncer.url(self.database),
                self.bouncer.url(f"{self.database}_replica"))

    def env(self):
        """The environment of `make serve` on this layout: the primary through
        PgBouncer, the replica direct. PgBouncer 1.18 keeps the first client of
        a server that went down waiting until query_wait_timeout (120 s) instead
        of failing it, so a replica behind it would hang reads rather than fail
        over (docs/SCALING.md); `chat_replica` on PgBouncer is there for the
        tests of that path."""
        primary, replica = self.urls()
        if self.with_bouncer:
            return {"DATABASE_URL": self.bouncer_urls()[0], "DATABASE_REPLICA_URLS": replica,
                    "DB_POOLER": "pgbouncer", "DB_PREPARED_STATEMENTS": "false"}
        return {"DATABASE_URL": primary, "DATABASE_REPLICA_URLS": replica}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m chatsite.scaleout.postgres",
        description="A PostgreSQL primary, a streaming replica and PgBouncer on loopback.")
    parser.add_argument("command", choices=["up", "down", "env"])
    parser.add_argument("--dir", required=True, help="base directory of the servers")
    parser.add_argument("--primary-port", type=int, default=DEFAULT_PORTS["primary"])
    parser.add_argument("--replica-port", type=int, default=DEFAULT_PORTS["replica"])
    parser.add_argument("--bouncer-port", type=int, default=DEFAULT_PORTS["bouncer"])
    parser.add_argument("--database", default="chat")
    parser.add_argument("--no-bouncer", action="store_true", help="no PgBouncer")
    parser.add_argument("--purge", action="store_true", help="down: remove the directory too")
    args = parser.parse_args(argv)
    if args.command == "up":
        missing = missing_binaries(bouncer=not args.no_bouncer)
        if missing:
            sys.exit(f"missing: {', '.join(missing)} (Debian: apt-get install postgresql"
                     " pgbouncer)")
    cluster = PostgresCluster(args.dir, primary_port=args.primary_port,
                              replica_port=args.replica_port, bouncer_port=args.bouncer_port,
                              database=args.database, bouncer=not args.no_bouncer)
    if args.command == "down":
        cluster.down(purge=args.purge)
        return
    env = cluster.up() if args.command == "up" else cluster.env()
    for name, value in env.items():
        print(f"{name}={value}")


if __name__ == "__main__":
    main()
