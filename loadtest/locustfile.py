"""Locust scenarios for the chat (`manage.py loadtest`, docs/OPERATIONS.md "loadtest"; targets: docs/PERFORMANCE.md, "The targets, where we stand").

Three user classes; `manage.py loadtest` picks them (see loadtest/README.md):

* ``ChatUser`` -- the targets run's HTTP user on ``FastHttpUser``: signs
  in (GET /api/auth/csrf, POST /api/auth/login with X-CSRFToken and Referer),
  then runs weighted tasks: history page (3, "complex GET: history"), project
  list (2, "simple GET: projects"), send a message (1, "POST: message").
* ``SocketChatUser`` -- a ``ChatUser`` that also holds an open socket on the
  project for its whole life, opened like the project page does: read the
  project's number, then /ws/projects/{id}/?after=<number>. A reader greenlet
  times every message it is delivered and checks the change numbers
  (reconnecting with after=<last> if dropped, reading the API after a
  ``resync_required``); a sender greenlet sends ``message.send`` over the
  socket every LOADTEST_MESSAGE_INTERVAL seconds.
* ``GuideUser`` -- the performance guide's own locustfile (``--scenario
  guide``): wait 1-3 s, then GET /api/messages?page=1&per_page=50 (3), GET
  /api/projects (2) or POST /api/messages (1), signed in as ChatUser is.
  HTTP only.

Every message the test sends (over HTTP or the socket) has as content a small
JSON object with the sender's wall-clock send time, so every receiver times
every message: each receipt is reported to locust's statistics as request type
"WS", name "WebSocket delivery", response time = send-to-receive in ms.
Receivers follow the project's ``changed_seq``: a number skipped and never
delivered is lost, a number delivered twice is duplicated, a number that
arrives after a higher one is out of order. When the test stops, sending stops
and every open socket must receive everything up to the highest number any
client saw (the drain waits while deliveries progress); what it has not by then
is lost too. The counters are printed (``LOADTEST_RESULT {...}``) and written as
JSON to LOADTEST_RESULT_FILE.

The sidebar's socket: with LOADTEST_ME_SOCKETS=1 (``manage.py loadtest
--me-sockets``) every user, HTTP and socket users alike, also opens one
``/ws/me/`` (docs/PROTOCOL.md §10) right after signing in, with the same
session cookie and Origin, and holds it until it stops (``MeSocket``). It
sends nothing; a reader greenlet counts its frames (hello, project_update,
membership), its connect failures and the server's closes into the result
(``me_*``), and each handshake (through the hello frame) is reported to
locust as request type "WS", name "me connect". Off, nothing of it runs, so
the same load can be measured with and without it.

Users are created beforehand (``manage.py seed_demo --loadtest --users N``
creates load0..load{N-1}); the i-th locust user signs in as
``<LOADTEST_USERS_PREFIX><i mod LOADTEST_ACCOUNTS>``.

Several projects: with LOADTEST_PROJECTS=K (``seed_demo --loadtest
--loadtest-projects K`` puts account i in "Load", "Load 2", ... by i mod K) the
user of account i talks in its own project, the one named after i mod K among
its GET /api/projects; with LOADTEST_PROJECT_IDS=a,b,c in ids[i mod 3]. Every
counter that follows a project's numbers (highest number, deliveries, gaps,
tail, the drain) is kept per project and summed in the result.

Configured by the LOADTEST_* environment variables, all optional: see
loadtest/config.py. The result is built and written by loadtest/report.py.
"""

import gc
import itertools
import logging
import random
import struct
import time
import uuid
from urllib.parse import urlparse

import gevent
import orjson
import websocket  # websocket-client: blocking sockets, cooperative under gevent
from gevent.lock import Semaphore
from locust import FastHttpUser, between, events, task
from locust.exception import StopUser

from loadtest.config import GUIDE_WAIT, LoadTestConfig
from loadtest.cookies import SteadyCookieJar
from loadtest.report import (
    DELIVERY,
    HISTORY,
    POST_MESSAGE,
    PROJECT_LIST,
    build_result,
    generator_summary,
    write_result,
)

logger = logging.getLogger("loadtest")

CONFIG = LoadTestConfig.from_env()


class Run:
    """Process-wide state of one test run: the counters that end up in the result."""

    def __init__(self):
        self.user_numbers = itertools.count()
        self.project_id = CONFIG.project_id
        self.project_lock = Semaphore()
        self.project_ids = set()  # projects the users talk in
        self.sending = True  # cleared when the test stops: no new messages
        self.sockets = set()  # open ProjectSocket objects
        self.all_sockets = []  # every ProjectSocket of the run
        self.sockets_peak = 0
        self.sockets_at_stop = 0
        # project id -> highest change number known (acks, POST answers, deliveries)
        self.max_seq = {}
        self.delivered = {}  # (project id, changed_seq) -> send time, this run's messages
        self.posts_in_flight = 0
        self.http_requests = 0  # HTTP requests (not "WS") seen by the request hook
        self.counts = dict.fromkeys((
            "login_failures", "socket_connects", "socket_connect_failures",
            "socket_disconnects", "socket_reconnects", "slow_client_closes",
            "ws_sent", "ws_acked", "http_sent", "deliveries", "foreign_messages",
            "duplicated", "out_of_order", "lost_gaps", "lost_tail", "resyncs",
            "sockets_behind_at_end", "hello_seq_zero", "sockets_closed_before_stop",
            "duplicated_at_join", "ws_unacked", "resync_failures", "caught_up_over_http",
            "http_post_retries", "project_discovery_failures",
            # /ws/me/ (LOADTEST_ME_SOCKETS): connects, failures, the server's
            # closes, reconnects, and the frames received by type.
            "me_socket_connects", "me_socket_connect_failures", "me_socket_closes",
            "me_socket_reconnects", "me_sockets_closed_before_stop", "me_frames",
            "me_hello", "me_project_updates", "me_memberships", "me_other_frames",
        ), 0)
        self.me_enabled = CONFIG.me_sockets
        self.me_sockets = set()  # open MeSocket objects
        self.all_me_sockets = []  # every MeSocket of the run (one per signed-in user)
        self.me_sockets_peak = 0
        self.me_sockets_at_stop = 0
        self.me_close_codes = {}
        self.send_errors = {}
        self.close_codes = {}
        self.started_at = None  # test_start
        self.steady_at = None  # spawning_complete
        self.steady_requests = 0
        self.stopped_at = None  # test_stopping
        self.window_requests = 0
        self.drained = False
        self.drain_seconds = 0.0

    def bump(self, name, n=1):
        self.counts[name] += n

    def saw_seq(self, project_id, seq):
        if seq > self.max_seq.get(project_id, 0):
            self.max_seq[project_id] = seq

    def seq_of(self, project_id):
        return self.max_seq.get(project_id, 0)


RUN = Run()


def describe(response):
    """A failed response in one line (status 0: no answer, e.g. a connection error)."""
    if not response.status_code:
        return f"no response: {response.error!r}"[:200]
    return f"HTTP {response.status_code}: {(response.text or '')[:200]}"


def ws_base(user):
    """The ws(s):// base of the socket server: LOADTEST_WS_URL, else the host's."""
    if CONFIG.ws_url:  # a socket server of its own (make serve)
        return CONFIG.ws_url
    base = urlparse(user.host)
    scheme = "wss" if base.scheme == "https" else "ws"
    return f"{scheme}://{base.netloc}"


def close_code(data):
    """The code of a close frame's payload (1006: none, the connection just went)."""
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1006


def make_content(via):
    return orjson.dumps({"lt": CONFIG.run_id, "t": time.time(), "via": via}).decode()


def sent_at(content):
    """The send time of one of this run's messages, else None."""
    if not content or content[0] != "{":
        return None
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if (isinstance(data, dict) and data.get("lt") == CONFIG.run_id
            and isinstance(data.get("t"), float)):
        return data["t"]
    return None


class ProjectSocket:
    """One client socket on a project; tracks delivery by changed_seq."""

    def __init__(self, user, project_id, after=None):
        self.user = user
        self.project_id = project_id
        self.ws = None
        self.last = after  # highest changed_seq received (or the first `after`)
        self.joined_after = after or 0  # `after` of the current connection
        self.hello_seq = 0
        self.missing = set()  # numbers skipped and not (yet) delivered
        self.reader = None
        self.sender = None
        self.closing = False
        self.pending = {}  # client_msg_id -> perf_counter at send
        RUN.all_sockets.append(self)

    # -- connection --
    def _url(self, after):
        url = f"{ws_base(self.user)}/ws/projects/{self.project_id}/"
        return url + (f"?after={after}" if after is not None else "")

    def connect(self):
        after = self.last
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                self._url(after), timeout=30, origin=self.user.origin,
                cookie=self.user.cookie_header(), enable_multithread=True,
                # orjson checks the UTF-8 in C; websocket-client's own check is pure
                # Python, about 0.5 ms per 3 KB frame, and would make the load
                # generator, not the server, the bottleneck.
                skip_utf8_validation=True,
            )
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                raise ConnectionError(f"socket refused with close code {code}")
            hello = orjson.loads(data)
            if hello.get("type") != "hello":
                raise ConnectionError(f"expected hello, got {hello.get('type')!r}")
            ws.settimeout(None)
        except Exception as error:  # noqa: BLE001 - reported to locust
            RUN.bump("socket_connect_failures")
            events.request.fire(
                request_type="WS", name="WebSocket connect",
                response_time=(time.perf_counter() - started) * 1000, response_length=0,
                exception=error, context={},
            )
            return False
        events.request.fire(
            request_type="WS", name="WebSocket connect",
            response_time=(time.perf_counter() - started) * 1000, response_length=len(data),
            exception=None, context={},
        )
        RUN.bump("socket_connects")
        if hello["seq"] == 0 and max(after or 0, RUN.seq_of(self.project_id)) > 0:
            # The project's number never goes back: a hello of 0 is wrong (docs/PROTOCOL.md §3, `hello`).
            RUN.bump("hello_seq_zero")
            logger.warning("hello with seq 0 for %s in project %s (after=%s, known seq %s)",
                           self.user.username, self.project_id, after,
                           RUN.seq_of(self.project_id))
        if self.last is None:
            self.last = hello["seq"]
        self.hello_seq = hello["seq"]
        RUN.saw_seq(self.project_id, hello["seq"])
        self.ws = ws
        self.joined_after = self.last
        RUN.sockets.add(self)
        if RUN.stopped_at is None:
            RUN.sockets_peak = max(RUN.sockets_peak, len(RUN.sockets))
        return True

    def start(self):
        """Connect (retrying in the background if that fails) and start reading and sending."""
        connected = self.connect()
        self.reader = gevent.spawn(self.read_loop, connected)
        if CONFIG.message_interval > 0:
            self.sender = gevent.spawn(self.send_loop)

    def close(self):
        if RUN.stopped_at is None and self in RUN.sockets:
            RUN.bump("sockets_closed_before_stop")
        self.closing = True
        if self.sender is not None:
            self.sender.kill(block=False)
        RUN.sockets.discard(self)
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception as error:  # noqa: BLE001 - closing anyway
                logger.debug("closing a socket: %s", error)
        if self.reader is not None:
            self.reader.kill(block=False)

    # -- receiving --
    def read_loop(self, connected=True):
        if not connected and not self.reconnect():
            return
        while not self.closing:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except Exception:  # noqa: BLE001 - connection gone
                opcode, data = websocket.ABNF.OPCODE_CLOSE, b""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if self.closing:
                    return
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1006
                self.on_lost_connection(code)
                if not self.reconnect():
                    return
                continue
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            self.on_frame(orjson.loads(data), time.time())

    def on_lost_connection(self, code):
        RUN.sockets.discard(self)
        RUN.bump("socket_disconnects")
        RUN.bump("ws_unacked", len(self.pending))  # may or may not have been taken
        self.pending.clear()
        RUN.close_codes[str(code)] = RUN.close_codes.get(str(code), 0) + 1
        if code == 4008:
            RUN.bump("slow_client_closes")
        logger.warning("socket of %s closed by the server (code %s); reconnecting with after=%s",
                       self.user.username, code, self.last)

    def reconnect(self):
        for attempt in range(5):
            if self.closing:
                return False
            gevent.sleep(0.2 * (attempt + 1))
            if self.connect():
                RUN.bump("socket_reconnects")
                return True
        return False

    def on_frame(self, frame, now):
        kind = frame.get("type")
        if kind == "message_batch":
            for message in frame["messages"]:
                self.on_message(message, now)
        elif kind == "ack":
            started = self.pending.pop(frame.get("client_msg_id"), None)
            RUN.bump("ws_acked")
            RUN.saw_seq(self.project_id, frame["message"]["changed_seq"])
            if started is not None:
                events.request.fire(
                    request_type="WS", name="WebSocket send (ack)",
                    response_time=(time.perf_counter() - started) * 1000, response_length=0,
                    exception=None, context={},
                )
        elif kind == "error":
            # Error frames name no client_msg_id; the server answers frames in order.
            if self.pending:
                self.pending.pop(next(iter(self.pending)))
            code = frame.get("code", "?")
            RUN.send_errors[code] = RUN.send_errors.get(code, 0) + 1
            events.request.fire(
                request_type="WS", name="WebSocket send (ack)", response_time=0,
                response_length=0, exception=RuntimeError(f"error frame: {code}"), context={},
            )
        elif kind == "resync_required":
            # More was missed than the server replays: like a real client, read
            # the missed changes (last, hello's seq] from the API; live frames
            # after hello's seq follow on the socket.
            RUN.bump("resyncs")
            self.catch_up(self.hello_seq)

    def catch_up(self, upto):
        after = self.last or 0
        while after < upto:
            with self.user.client.get(
                f"/api/projects/{self.project_id}/messages?after={after}&limit=200",
                name="resync: catch up", catch_response=True,
            ) as r:
                if r.status_code != 200:
                    r.failure(describe(r))
                    RUN.bump("resync_failures")
                    return
                page = r.json()
            items = [m for m in page["items"] if m["changed_seq"] <= upto]
            for message in items:
                self.on_message(message, None)
            if not page["has_more"] or not items or items[-1]["changed_seq"] >= upto:
                return
            after = items[-1]["changed_seq"]

    def on_message(self, message, now):
        seq = message["changed_seq"]
        RUN.saw_seq(self.project_id, seq)
        if self.last is None:
            self.last = seq
        elif seq > self.last:
            if seq > self.last + 1:
                self.missing.update(range(self.last + 1, seq))
            self.last = seq
        elif seq in self.missing:
            self.missing.discard(seq)
            RUN.bump("out_of_order")
        else:
            RUN.bump("duplicated")
            if seq <= self.joined_after:
                # Already had it when (re)connecting with after=joined_after.
                RUN.bump("duplicated_at_join")
            return
        sent = sent_at(message.get("content"))
        if sent is None:
            RUN.bump("foreign_messages")
            return
        if now is None:  # read over HTTP after a resync: not a socket delivery
            RUN.bump("caught_up_over_http")
            return
        RUN.bump("deliveries")
        RUN.delivered.setdefault((self.project_id, seq), sent)
        events.request.fire(
            request_type="WS", name=DELIVERY, response_time=max(0.0, (now - sent) * 1000),
            response_length=0, exception=None, context={},
        )

    def tail(self):
        """Numbers of this socket's project known to exist that it has not received."""
        return max(0, RUN.seq_of(self.project_id) - (self.last or 0))

    def behind(self):
        return self.tail() > 0

    # -- sending --
    def send_loop(self):
        gevent.sleep(random.uniform(0, CONFIG.message_interval))  # spread the senders out
        while not self.closing and RUN.sending:
            if self not in RUN.sockets:  # not connected right now
                gevent.sleep(CONFIG.message_interval)
                continue
            client_msg_id = str(uuid.uuid4())
            frame = orjson.dumps({
                "type": "message.send", "content": make_content("ws"),
                "client_msg_id": client_msg_id,
            }).decode()
            try:
                self.pending[client_msg_id] = time.perf_counter()
                self.ws.send(frame)
                RUN.bump("ws_sent")
            except Exception:  # noqa: BLE001 - the reader reconnects
                self.pending.pop(client_msg_id, None)
            gevent.sleep(CONFIG.message_interval)


class MeSocket:
    """One user's /ws/me/ (the sidebar's socket): held open, read and counted, never sent on."""

    # Closes after which the sidebar does not reconnect (docs/PROTOCOL.md §10):
    # signed out, forbidden, not found, too many sockets.
    FINAL_CLOSES = (4401, 4403, 4404, 4429)

    def __init__(self, user):
        self.user = user
        self.ws = None
        self.reader = None
        self.closing = False
        RUN.all_me_sockets.append(self)

    def connect(self):
        """Open the socket and read its hello; report the handshake to locust."""
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                f"{ws_base(self.user)}/ws/me/", timeout=30, origin=self.user.origin,
                cookie=self.user.cookie_header(), enable_multithread=True,
                skip_utf8_validation=True,  # as ProjectSocket: orjson checks it in C
            )
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError(f"/ws/me/ refused with close code {close_code(data)}")
            hello = orjson.loads(data)
            if hello.get("type") != "hello":
                raise ConnectionError(f"expected hello, got {hello.get('type')!r}")
            ws.settimeout(None)
        except Exception as error:  # noqa: BLE001 - reported to locust
            RUN.bump("me_socket_connect_failures")
            events.request.fire(
                request_type="WS", name="me connect",
                response_time=(time.perf_counter() - started) * 1000, response_length=0,
                exception=error, context={},
            )
            return False
        events.request.fire(
            request_type="WS", name="me connect",
            response_time=(time.perf_counter() - started) * 1000, response_length=len(data),
            exception=None, context={},
        )
        RUN.bump("me_socket_connects")
        RUN.bump("me_frames")
        RUN.bump("me_hello")
        self.ws = ws
        RUN.me_sockets.add(self)
        if RUN.stopped_at is None:
            RUN.me_sockets_peak = max(RUN.me_sockets_peak, len(RUN.me_sockets))
        return True

    def start(self):
        """Connect (retrying in the background if that fails) and start reading."""
        connected = self.connect()
        self.reader = gevent.spawn(self.read_loop, connected)

    def close(self):
        if RUN.stopped_at is None and self in RUN.me_sockets:
            RUN.bump("me_sockets_closed_before_stop")
        self.closing = True
        RUN.me_sockets.discard(self)
        # Stop the reader first, so the close handshake reads its own answer.
        if self.reader is not None:
            self.reader.kill(block=True, timeout=1)
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except Exception as error:  # noqa: BLE001 - closing anyway
                logger.debug("closing a /ws/me/ socket: %s", error)

    def read_loop(self, connected=True):
        if not connected and not self.reconnect():
            return
        while not self.closing:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except Exception:  # noqa: BLE001 - connection gone
                opcode, data = websocket.ABNF.OPCODE_CLOSE, b""
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if self.closing:
                    return
                code = close_code(data)
                RUN.me_sockets.discard(self)
                RUN.bump("me_socket_closes")
                RUN.me_close_codes[str(code)] = RUN.me_close_codes.get(str(code), 0) + 1
                logger.warning("/ws/me/ of %s closed by the server (code %s)",
                               self.user.username, code)
                if code in self.FINAL_CLOSES or not self.reconnect():
                    return
                continue
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            RUN.bump("me_frames")
            kind = orjson.loads(data).get("type")
            if kind == "project_update":
                RUN.bump("me_project_updates")
            elif kind == "membership":
                RUN.bump("me_memberships")
            elif kind == "hello":
                RUN.bump("me_hello")
            else:
                RUN.bump("me_other_frames")

    def reconnect(self):
        for attempt in range(5):
            if self.closing or RUN.stopped_at is not None:
                return False
            gevent.sleep(0.2 * (attempt + 1))
            if self.connect():
                RUN.bump("me_socket_reconnects")
                return True
        return False


class SignedInUser(FastHttpUser):
    """A user signed in as its account, with its project found: the base of both scenarios."""

    abstract = True
    username = ""
    me_socket = None

    def on_start(self):
        self.client.cookiejar = self.client.client.cookiejar = SteadyCookieJar()
        number = next(RUN.user_numbers)
        self.index = CONFIG.account_index(number)
        self.username = CONFIG.username_of(self.index)
        base = urlparse(self.host)
        self.origin = f"{base.scheme}://{base.netloc}"
        self.login()
        self.project_id = self.discover_project()
        RUN.project_ids.add(self.project_id)
        if CONFIG.me_sockets and RUN.stopped_at is None:
            # The sidebar's socket, as every signed-in page holds one.
            self.me_socket = MeSocket(self)
            self.me_socket.start()

    def on_stop(self):
        if self.me_socket is not None:
            self.me_socket.close()

    def login(self):
        with self.client.get("/api/auth/csrf", name="auth: csrf", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"csrf: {describe(r)}")
                RUN.bump("login_failures")
                raise StopUser()
            token = r.json()["csrf_token"]
        with self.client.post(
            "/api/auth/login", json={"username": self.username, "password": CONFIG.password},
            headers={"X-CSRFToken": token, "Referer": self.origin + "/"},
            name="auth: login", catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"login as {self.username}: {describe(r)}")
                RUN.bump("login_failures")
                raise StopUser()
        # Signing in rotates the CSRF token; the new one is in the cookie.
        self.csrf = self.cookie("csrftoken") or token

    def cookie(self, name):
        for c in self.client.cookiejar:
            if c.name == name:
                return c.value
        return None

    def cookie_header(self):
        """The Cookie header of this user's sockets (the socket server's host)."""
        return self.client.cookiejar.header(ws_base(self))

    def discover_project(self):
        if CONFIG.project_ids:
            return CONFIG.project_ids[self.index % len(CONFIG.project_ids)]
        if RUN.project_id is None and CONFIG.projects > 1:
            return self.discover_own_project()
        if RUN.project_id is not None:
            return RUN.project_id
        with RUN.project_lock:
            if RUN.project_id is None:
                r = self.client.get("/api/projects?per_page=100", name="setup: projects")
                items = r.json()["items"] if r.status_code == 200 else []
                named = [p for p in items if p["name"] == CONFIG.project_name]
                chosen = (named or items or [None])[0]
                if chosen is None:
                    logger.error("%s is in no project; create the load test users first",
                                 self.username)
                    raise StopUser()
                RUN.project_id = chosen["id"]
        return RUN.project_id

    def discover_own_project(self):
        """This account's project of seed_demo --loadtest-projects: by name, i mod K."""
        name = CONFIG.project_name_of(self.index)
        with self.client.get("/api/projects?per_page=100", name="setup: projects",
                             catch_response=True) as r:
            if r.status_code != 200:
                r.failure(describe(r))
                RUN.bump("project_discovery_failures")
                raise StopUser()
            items = r.json()["items"]
        named = [p for p in items if p["name"] == name]
        if not named:
            logger.error("%s is not a member of a project named %r; create the users with "
                         "seed_demo --loadtest --loadtest-projects %s",
                         self.username, name, CONFIG.projects)
            RUN.bump("project_discovery_failures")
            raise StopUser()
        return named[0]["id"]


class ChatUser(SignedInUser):
    """The targets scenario's HTTP user: history, project list and sends, weighted 3:2:1."""

    wait_time = between(*CONFIG.think_time)

    @task(3)
    def history(self):
        self.client.get(f"/api/projects/{self.project_id}/messages?limit=50", name=HISTORY)

    @task(2)
    def projects(self):
        self.client.get("/api/projects", name=PROJECT_LIST)

    @task(1)
    def send_message(self):
        if not RUN.sending:
            return
        RUN.posts_in_flight += 1
        body = {"project_id": self.project_id, "content": make_content("http"),
                "client_msg_id": str(uuid.uuid4())}
        try:
            for attempt in range(2):
                with self.client.post(
                    "/api/messages", json=body,
                    headers={"X-CSRFToken": self.csrf, "Referer": self.origin + "/"},
                    name=POST_MESSAGE, catch_response=True,
                ) as r:
                    # 201 created; 200 on a retry: the first attempt had been taken.
                    if r.status_code == 201 or (attempt and r.status_code == 200):
                        RUN.bump("http_sent")
                        RUN.saw_seq(self.project_id, r.json()["changed_seq"])
                        return
                    r.failure(describe(r))
                    if r.status_code:
                        return
                # No answer (e.g. the server closed the kept-alive connection as
                # the request went out): retry once with the same client_msg_id,
                # as a client may, since a repeated id creates nothing new.
                RUN.bump("http_post_retries")
        finally:
            RUN.posts_in_flight -= 1


class SocketChatUser(ChatUser):
    """A ChatUser holding an open project socket that also sends over it."""

    socket = None

    def on_start(self):
        super().on_start()
        if RUN.stopped_at is not None:
            return  # the test ended while this user was signing in
        # Like the project page: know where the project is, then open the socket
        # with after=<that number>, so the server replays anything sent meanwhile.
        with self.client.get(f"/api/projects/{self.project_id}", name="setup: project",
                             catch_response=True) as r:
            if r.status_code != 200:
                r.failure(describe(r))
                raise StopUser()
            after = r.json()["seq"]
        RUN.saw_seq(self.project_id, after)
        self.socket = ProjectSocket(self, self.project_id, after)
        self.socket.start()

    def on_stop(self):
        if self.socket is not None:
            self.socket.close()
        super().on_stop()


if CONFIG.ws_users is not None:
    SocketChatUser.fixed_count = CONFIG.ws_users


class GuideUser(SignedInUser):
    """The performance guide's locustfile, task for task (`manage.py loadtest --scenario guide`).

    The guide's ChatUser: wait 1-3 s, then its messages page (3), its project
    list (2) or a send (1), in the guide's shapes. Mapped onto this API with
    nothing changed but what the guide leaves out: each user signs in as its own
    account with the CSRF token (SignedInUser.login; the guide posts the login
    bare, which Django's CSRF protection refuses), sends the token with its
    POSTs, and posts to its own project instead of the guide's `project_id: 1`.
    No sockets: the guide's user has none.
    """

    wait_time = between(*GUIDE_WAIT)

    @task(3)
    def get_messages(self):
        """Get messages (most common): the newest across the user's projects."""
        self.client.get("/api/messages?page=1&per_page=50", name=HISTORY)

    @task(2)
    def get_projects(self):
        self.client.get("/api/projects", name=PROJECT_LIST)

    @task(1)
    def send_message(self):
        """Send message (less common)."""
        if not RUN.sending:
            return
        with self.client.post(
            "/api/messages", json={"content": "Test message", "project_id": self.project_id},
            headers={"X-CSRFToken": self.csrf, "Referer": self.origin + "/"},
            name=POST_MESSAGE, catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(describe(r))
                return
        RUN.bump("http_sent")


# -- run bookkeeping ---------------------------------------------------------


@events.request.add_listener
def _count_http(request_type, **kwargs):
    if request_type != "WS":
        RUN.http_requests += 1


class GeneratorLag:
    """How late this process's event loop runs, and its garbage-collector pauses.

    Every delivery is timed when its reader greenlet runs, so a busy or paused
    generator makes the server look slow: a greenlet that asks to sleep 10 ms
    records how much later it woke (steady state only), and gc callbacks time
    every full (generation 2) collection, which stops every greenlet.
    """

    TICK = 0.01

    def __init__(self):
        self.lags_ms = []
        self.gc_pauses_ms = []
        self._gc_started = None

    def start(self):
        gc.callbacks.append(self._on_gc)
        gevent.spawn(self._tick)

    def _tick(self):
        while RUN.stopped_at is None:
            before = time.perf_counter()
            gevent.sleep(self.TICK)
            if RUN.steady_at is not None:
                self.lags_ms.append((time.perf_counter() - before - self.TICK) * 1000)

    def _on_gc(self, phase, info):
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None and RUN.steady_at is not None:
            self.gc_pauses_ms.append((time.perf_counter() - self._gc_started) * 1000)

    def summary(self):
        return generator_summary(self.lags_ms, self.gc_pauses_ms)


LAG = GeneratorLag()


@events.test_start.add_listener
def _on_test_start(environment, **kwargs):
    RUN.started_at = time.time()
    LAG.start()


@events.spawning_complete.add_listener
def _on_spawned(user_count, **kwargs):
    if RUN.steady_at is None:
        RUN.steady_at = time.time()
        RUN.steady_requests = RUN.http_requests


@events.test_stopping.add_listener
def _on_stopping(environment, **kwargs):
    """Stop sending, let every open socket receive what was sent, then count."""
    if RUN.stopped_at is not None:
        return
    RUN.stopped_at = time.time()
    RUN.window_requests = RUN.http_requests - (
        RUN.steady_requests if RUN.steady_at is not None else 0)
    RUN.sockets_at_stop = len(RUN.sockets)
    RUN.me_sockets_at_stop = len(RUN.me_sockets)
    RUN.sending = False
    # Wait while deliveries progress: a loaded server may be seconds behind, and
    # only what never arrives is lost. Give up after drain_seconds without any
    # progress, or drain_max_seconds in all.
    started = time.monotonic()
    last_progress, progress = started, None
    while time.monotonic() - started < CONFIG.drain_max_seconds:
        behind = [s for s in RUN.sockets if s.behind() or s.pending]
        if not behind and RUN.posts_in_flight == 0:
            break
        now_progress = (sum(s.last or 0 for s in RUN.sockets), RUN.counts["ws_acked"],
                        sum(RUN.max_seq.values()), RUN.posts_in_flight)
        if now_progress != progress:
            progress, last_progress = now_progress, time.monotonic()
        elif time.monotonic() - last_progress > CONFIG.drain_seconds:
            break
        gevent.sleep(0.1)
    RUN.drain_seconds = time.monotonic() - started
    # Gaps never filled count on every socket, also one that went away; the tail
    # (sent but not received by the end of the drain) only on sockets still open.
    RUN.counts["lost_gaps"] = sum(len(s.missing) for s in RUN.all_sockets)
    RUN.counts["lost_tail"] = sum(s.tail() for s in RUN.sockets)
    RUN.counts["sockets_behind_at_end"] = sum(1 for s in RUN.sockets if s.behind())
    # Sent over a socket, never acknowledged (not lost: nothing was promised).
    RUN.counts["ws_unacked"] += sum(len(s.pending) for s in RUN.all_sockets)
    RUN.drained = True


@events.test_stop.add_listener
def _on_test_stop(environment, **kwargs):
    if not RUN.drained:
        _on_stopping(environment)
    scenario = "guide" if GuideUser in environment.user_classes else "targets"
    result = build_result(RUN, environment.stats, run_id=CONFIG.run_id, generator=LAG.summary(),
                          scenario=scenario)
    write_result(result, CONFIG.result_file)
