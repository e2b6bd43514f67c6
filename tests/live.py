"""Real server processes on loopback for end-to-end tests, benchmarks and load tests.

A live server gets its own database (a fresh PostgreSQL database when
DATABASE_URL points at PostgreSQL, else a SQLite file), so it never touches the
pytest-django test database, and Redis database 1 when REDIS_URL is set.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PASSWORD = "live-pass-123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin_url(url):
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/postgres"))


def live_base_env():
    """This process's environment as a live server's: plain-http cookies on
    loopback, a fast hasher, quiet logs, no metrics port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "FAST_PASSWORD_HASHER": "1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "METRICS_PORT": "0",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "live-test-secret-" + "k" * 40,
    })
    return env


def make_live_env(extra=None):
    """Return (env, cleanup) for live server processes with a database of their own."""
    env = live_base_env()
    cleanup = []
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith("postgres"):
        import psycopg

        name = f"chat_live_{uuid.uuid4().hex[:8]}"
        admin = _pg_admin_url(database_url)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop():
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        cleanup.append(drop)
        env["DATABASE_URL"] = urlunparse(urlparse(database_url)._replace(path=f"/{name}"))
    else:
        tmp = tempfile.mkdtemp(prefix="chat-live-")
        env["DATABASE_URL"] = f"sqlite:///{tmp}/live.sqlite3"
    if os.environ.get("REDIS_URL"):
        parts = urlparse(os.environ["REDIS_URL"])
        env["REDIS_URL"] = urlunparse(parts._replace(path="/1"))
        # Its own keys (and, by its database name, its own bus channels), so
        # live servers of different runs on one Redis never see each other.
        env["CACHE_KEY_PREFIX"] = urlparse(env["DATABASE_URL"]).path.strip("/").replace(
            "/", "_")[-40:] or uuid.uuid4().hex[:8]
    # Uploads of live servers go to a directory of their own, removed with it.
    media = tempfile.mkdtemp(prefix="chat-live-media-")
    env["MEDIA_ROOT"] = media
    cleanup.append(lambda: shutil.rmtree(media, ignore_errors=True))
    env.update(extra or {})
    run_manage(env, "migrate", "--noinput", "-v0")
    _collect_static(env)

    def close():
        for fn in cleanup:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort
                pass

    return env, close


_static_collected = False


def _collect_static(env):
    """Hashed, precompressed static files, as `make serve` makes them (once a run)."""
    global _static_collected
    if not _static_collected:
        run_manage(env, "collectstatic", "--noinput", "-v0")
        _static_collected = True


def run_manage(env, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
        capture_output=True, text=True, timeout=timeout,
    )


def create_users_and_project(env, usernames, project_name="Live", private=False):
    """Create users (password PASSWORD) who are all members of one new project; return its id."""
    code = (
        "from accounts.models import User\n"
        "from projects.actions import do_create_project, do_join_project\n"
        "from projects.models import Membership\n"
        f"names = {list(usernames)!r}\n"
        "users = []\n"
        "for n in names:\n"
        "    u = User.objects.filter(username=n).first()\n"
        f"    u = u or User.objects.create_user(n, n + '@example.com', {PASSWORD!r})\n"
        "    users.append(u)\n"
        f"p = do_create_project(users[0], name={project_name!r}, is_private={private!r})\n"
        "for u in users[1:]:\n"
        "    Membership.objects.get_or_create(user=u, project=p)\n"
        "print(p.pk)\n"
    )
    out = run_manage(env, "shell", "-c", code)
    return int(out.stdout.strip().splitlines()[-1])


class LiveServer:
    """One server on loopback: uvicorn serving chatsite.asgi (sockets and HTTP),
    or with http="granian" granian's WSGI interface serving chatsite.wsgi (HTTP
    only), the two servers of `make serve`."""

    app = "chatsite.asgi:application"

    def __init__(self, env, *, port=None, workers=1, extra_env=None, app=None, http="uvicorn",
                 threads=8, ws="chatsite.websocket:SocketProtocol"):
        self.port = port or free_port()
        self.http = http
        self.app = app or ("chatsite.wsgi:application" if http == "granian" else self.app)
        self.env = dict(env, **(extra_env or {}))
        self.workers = workers
        self.threads = threads
        self.ws = ws  # uvicorn's --ws: make serve's protocol unless told otherwise
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}"

    def command(self):
        if self.http == "granian":
            return [
                str(VENV_BIN / "granian"), "--interface", "wsgi", self.app,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--blocking-threads", str(self.threads),
                "--no-ws", "--log-level", "warning",
            ]
        return [
            str(VENV_BIN / "uvicorn"), self.app,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--ws", self.ws,
            "--ws-max-size", "65536", "--timeout-keep-alive", "30",
            "--no-access-log", "--log-level", "warning",
        ]

    def start(self, timeout=30):
        cmd = self.command()
        self.log = tempfile.NamedTemporaryFile(prefix="chat-live-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()  # its workers too: nothing of a failed start keeps running
        raise RuntimeError(
            f"server did not become healthy: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def kill(self):
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def cpu_seconds(self):
        """utime + stime of every process in the server's process group."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            # fields[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
            if int(fields[2]) == self.proc.pid:
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def output(self):
        return Path(self.log.name).read_text()


def login(base_url, username, password=PASSWORD):
    """Sign in through the API; return a requests.Session with session and CSRF cookies."""
    import requests

    session = requests.Session()
    token = session.get(base_url + "/api/auth/csrf", timeout=10).json()["csrf_token"]
    r = session.post(
        base_url + "/api/auth/login", json={"username": username, "password": password},
        headers={"X-CSRFToken": token, "Referer": base_url + "/"}, timeout=10,
    )
    r.raise_for_status()
    session.csrf = session.cookies.get("csrftoken")
    session.base_url = base_url
    return session


def cookie_header(session):
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def post_message(session, project_id, content, client_msg_id=None):
    body = {"project_id": project_id, "content": content}
    if client_msg_id:
        body["client_msg_id"] = client_msg_id
    return session.post(
        session.base_url + "/api/messages", json=body,
        headers={"X-CSRFToken": session.csrf, "Referer": session.base_url + "/"}, timeout=30,
    )
