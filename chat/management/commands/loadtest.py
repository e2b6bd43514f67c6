"""Run the locust scenarios headless against a URL and print the targets of docs/PERFORMANCE.md, "The targets, where we stand"."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from loadtest.config import (
    DEFAULT_DRAIN_MAX_SECONDS,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_MESSAGE_INTERVAL,
    DEFAULT_PASSWORD,
    DEFAULT_PROJECT_NAME,
    DEFAULT_THINK_TIME,
    DEFAULT_USERS_PREFIX,
    GUIDE_WAIT,
    LoadTestConfig,
    format_think_time,
    parse_project_ids,
    parse_think_time,
)
from loadtest.cookies import LoopbackSecureCookiePolicy, is_loopback
from loadtest.report import format_report, read_result

ROOT = Path(__file__).resolve().parents[3]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"

HELP = f"""Run the locust scenarios (loadtest/locustfile.py) headless against --url for
--duration seconds and print the targets (docs/PERFORMANCE.md) with measured values.

The users must exist beforehand, all members of one project: e.g.
  manage.py seed_demo --loadtest --users 500 --messages 1000
creates load0..load499 (password {DEFAULT_PASSWORD}) in the project "Load".
Spread over K projects (a team chat has many rooms):
  manage.py seed_demo --loadtest --users 500 --loadtest-projects 25 --messages 0
  manage.py loadtest --users 500 --projects 25
puts load<i> in "Load", "Load 2", ... by i mod 25, and each locust user talks in
its account's project (--project-ids a,b,c: account i uses ids[i mod 3]).
Every locust user signs in as <prefix><i> and, by default, holds an open socket
on the project (see loadtest/README.md). --scenario guide runs the performance
guide's own locustfile instead (HTTP only: GET /api/messages?page=1&per_page=50,
GET /api/projects, POST /api/messages, 3:2:1, wait 1-3 s). Secure cookies go
back over plain http to loopback only, as browsers send them. Loopback URLs
only, unless --allow-remote. Exit status: 0 when the run completed with nothing lost,
duplicated or out of order; 1 otherwise, or with --strict when any target
fails.
"""


def parse_ws_users(value, users):
    """'all', a fraction with a dot (0.5) or a count (250) -> number of socket users."""
    text = str(value).strip().lower()
    try:
        if text == "all":
            return users
        if "." in text or text.endswith("%"):
            fraction = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
            if not 0 <= fraction <= 1:
                raise ValueError
            return round(users * fraction)
        count = int(text)
        if count < 0:
            raise ValueError
        return min(count, users)
    except ValueError:
        raise CommandError(
            f"--ws-users must be 'all', a fraction like 0.5 or a count, not {value!r}."
        ) from None


def parse_project_ids_option(text):
    """Parse --project-ids into a tuple of project ids, or raise CommandError."""
    try:
        ids = parse_project_ids(text)
        if not ids or min(ids) < 1:
            raise ValueError
    except ValueError:
        raise CommandError(
            f"--project-ids is a comma-separated list of project ids, not {text!r}."
        ) from None
    return ids


def read_json(data):
    """A response body as JSON, else its first 300 characters as text."""
    try:
        return json.loads(data or b"null")
    except ValueError:
        return data[:300].decode("utf-8", "replace")


def brief(body):
    """An answer in one short line: the error's code and message, or the start of the body."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('code')}: {error.get('message')}"
    return str(body)[:200]


def describe_cookie(jar, name, url):
    """What became of cookie `name`: never set, or set and (not) sent back to url."""
    cookie = next((c for c in jar if c.name == name), None)
    if cookie is None:
        return "was never set by the server"
    parts = urlparse(url)
    with jar._cookies_lock:  # the jar's own check, as it ran for the requests
        jar._policy._now = jar._now = int(time.time())
        sent = jar._policy.return_ok(cookie, urllib.request.Request(url + "/"))
    plain_http = parts.scheme != "https"
    if sent:
        return "was sent back" + (" (Secure, over plain http to loopback, as browsers do)"
                                  if cookie.secure and plain_http else "")
    if cookie.secure and plain_http:
        return (f"is Secure and was not sent back over plain http to {parts.hostname} "
                "(browsers send Secure cookies over plain http to loopback only): use an "
                "https URL, or for a plain-http trial run the server with "
                "SESSION_COOKIE_SECURE=false CSRF_COOKIE_SECURE=false")
    return f"was not sent back (its domain or path does not match {url})"


def explain_login_failure(url, username, status, body, jar):
    """The sign-in's failure in words: which check refused it, and what to do."""
    code = body["error"].get("code") if isinstance(body, dict) and isinstance(
        body.get("error"), dict) else None
    answer = f"HTTP {status} {brief(body)}"
    if code == "csrf_failed":
        return (f"Cannot sign in at {url}: the server's CSRF check refused the sign-in ({answer})."
                f" The csrftoken cookie {describe_cookie(jar, 'csrftoken', url)}; the "
                "X-CSRFToken header and Referer were sent. Over https Django also wants the "
                "Referer to be a trusted origin (CSRF_TRUSTED_ORIGINS).")
    if code == "bad_credentials":
        return (f"Cannot sign in as {username!r} at {url}: wrong username or password "
                f"({answer}). Create the load test users first, e.g. manage.py seed_demo "
                "--loadtest --users N, or give --users-prefix/--password of existing users.")
    if status == 429:
        return (f"Cannot sign in as {username!r} at {url}: the sign-in throttle refused it "
                f"({answer}) after too many failed sign-ins a minute for this user or this "
                "address; wait a minute.")
    return f"Cannot sign in as {username!r} at {url}: {answer}."


class Command(BaseCommand):
    help = HELP

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000",
                            help="base URL of the server (default http://127.0.0.1:8000)")
        parser.add_argument("--scenario", choices=("targets", "guide"), default="targets",
                            help="targets (default): the targets run, every user with a "
                                 "socket; guide: the performance guide's own locustfile, "
                                 "HTTP only, wait 1-3 s, GET /api/messages?page=1&per_page=50, "
                                 "GET /api/projects, POST /api/messages 3:2:1")
        parser.add_argument("--ws-url", default=None,
                            help="base ws(s):// URL of the socket server when it is not "
                                 "--url's (make serve: ws://127.0.0.1:8001)")
        parser.add_argument("--users", type=int, default=500,
                            help="concurrent locust users (default 500)")
        parser.add_argument("--spawn-rate", type=float, default=None,
                            help="users started per second (default users/10, at least 1)")
        parser.add_argument("--duration", default="60",
                            help="run time after the start, in seconds or locust's 1m30s form "
                                 "(default 60)")
        parser.add_argument("--ws-users", default="all",
                            help="users holding an open socket: 'all' (default), a fraction "
                                 "like 0.5, or a count; the others are HTTP-only")
        parser.add_argument("--message-rate", type=float, default=None,
                            help="messages per second sent over sockets, all socket users "
                                 f"together (default one per socket user every "
                                 f"{DEFAULT_MESSAGE_INTERVAL:g} s; 0 sends none). HTTP users also "
                                 "POST messages (1 task in 6).")
        parser.add_argument("--me-sockets", action="store_true",
                            help="every user (HTTP-only and socket users alike) also holds "
                                 "the sidebar's socket /ws/me/ after signing in; the report "
                                 "shows its counters (loadtest/README.md)")
        think_time = format_think_time(DEFAULT_THINK_TIME)
        parser.add_argument("--think-time", default=None,
                            help="MIN,MAX seconds between one user's HTTP tasks "
                                 f"(default {think_time}: about 2 requests/s per user; "
                                 "the guide's scenario waits 1-3 s as the guide wrote it)")
        parser.add_argument("--users-prefix", default=DEFAULT_USERS_PREFIX,
                            help="usernames are <prefix>0, <prefix>1, ... "
                                 f"(default {DEFAULT_USERS_PREFIX!r})")
        parser.add_argument("--first-index", type=int, default=0,
                            help="number of the first account (default 0)")
        parser.add_argument("--accounts", type=int, default=None,
                            help="how many accounts exist; locust users wrap around "
                                 "(default: --users)")
        parser.add_argument("--password", default=DEFAULT_PASSWORD,
                            help=f"the users' password (default {DEFAULT_PASSWORD!r}, "
                                 "seed_demo's)")
        parser.add_argument("--project-id", type=int, default=None,
                            help="project to talk in (default: the first user's project "
                                 "named 'Load', else its first project)")
        parser.add_argument("--projects", type=int, default=1, metavar="K",
                            help="spread the users over K projects: account i talks in its "
                                 "project named 'Load' (i mod K = 0), 'Load 2', ... as "
                                 "seed_demo --loadtest --loadtest-projects K makes them "
                                 "(default 1)")
        parser.add_argument("--project-ids", default=None, metavar="A,B,C",
                            help="spread the users over these projects: account i talks in "
                                 "ids[i mod K]")
        parser.add_argument("--csv", metavar="PREFIX", default=None,
                            help="write locust's CSV statistics with this prefix")
        parser.add_argument("--html", metavar="FILE", default=None,
                            help="write locust's own HTML report (its tables and its charts "
                                 "over time) to FILE")
        parser.add_argument("--json", metavar="FILE", default=None,
                            help="write the full result (counters, percentiles) as JSON")
        parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN_SECONDS,
                            help="at the end, wait for in-flight deliveries until none "
                                 f"progressed for this many seconds "
                                 f"(default {DEFAULT_DRAIN_SECONDS:g})")
        parser.add_argument("--drain-max", type=float, default=DEFAULT_DRAIN_MAX_SECONDS,
                            help="... and at most this many seconds in all "
                                 f"(default {DEFAULT_DRAIN_MAX_SECONDS:g})")
        parser.add_argument("--steady", action="store_true",
                            help="latencies of the steady state only: locust's statistics "
                                 "are reset once every user is running (--reset-stats)")
        parser.add_argument("--allow-remote", action="store_true",
                            help="allow a URL that is not on loopback")
        parser.add_argument("--strict", action="store_true",
                            help="exit 1 when any target fails")
        parser.add_argument("--quiet-locust", action="store_true",
                            help="do not show locust's own output")

    # -- checks --------------------------------------------------------------
    def validate_options(self, options):
        """Check the options; return the URL, the run's shape and the locust config."""
        url = options["url"].rstrip("/")
        parts = urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(f"--url must be an http(s) URL like http://127.0.0.1:8000, "
                               f"not {options['url']!r}.")
        if not options["allow_remote"] and not is_loopback(parts.hostname):
            raise CommandError(
                f"Refusing to load-test {parts.hostname!r}: it is not a loopback address. "
                "Load tests are for your own machine; pass --allow-remote to run against "
                "a server you operate elsewhere."
            )
        ws_url = options["ws_url"]
        if ws_url:
            ws_parts = urlparse(ws_url)
            if ws_parts.scheme not in ("ws", "wss") or not ws_parts.hostname:
                raise CommandError(f"--ws-url must be a ws(s) URL like ws://127.0.0.1:8001, "
                                   f"not {ws_url!r}.")
            if not options["allow_remote"] and not is_loopback(ws_parts.hostname):
                raise CommandError(f"Refusing to load-test {ws_parts.hostname!r}: it is not a "
                                   "loopback address; pass --allow-remote to allow it.")
        if options["users"] < 1:
            raise CommandError("--users must be at least 1.")
        if options["projects"] < 1:
            raise CommandError("--projects must be at least 1.")
        given = [name for name, value in (
            ("--project-id", options["project_id"] is not None),
            ("--project-ids", options["project_ids"] is not None),
            ("--projects", options["projects"] != 1),
        ) if value]
        if len(given) > 1:
            raise CommandError(f"Give only one of {', '.join(given)}.")
        try:
            duration = self.parse_duration(options["duration"])
        except ValueError:
            raise CommandError(f"--duration {options['duration']!r}: give seconds or "
                               "locust's form like 1m30s.") from None
        if duration <= 0:
            raise CommandError("--duration must be positive.")
        guide = options["scenario"] == "guide"
        if guide:
            # The guide's user has no socket and waits as the guide says.
            given = [name for name, value in (
                ("--ws-users", str(options["ws_users"]).lower() != "all"),
                ("--ws-url", options["ws_url"] is not None),
                ("--message-rate", options["message_rate"] is not None),
                ("--me-sockets", options["me_sockets"]),
                ("--think-time", options["think_time"] is not None),
            ) if value]
            if given:
                raise CommandError(
                    f"--scenario guide runs the guide's locustfile as written (HTTP only, "
                    f"wait 1-3 s): {', '.join(given)} does not apply to it.")
            options = {**options, "ws_users": "0", "message_rate": 0.0,
                       "think_time": format_think_time(GUIDE_WAIT)}
        elif options["think_time"] is None:
            options = {**options, "think_time": format_think_time(DEFAULT_THINK_TIME)}
        spawn_rate = options["spawn_rate"] or max(1.0, options["users"] / 10)
        if spawn_rate <= 0:
            raise CommandError("--spawn-rate must be positive.")
        try:
            think_time = parse_think_time(options["think_time"])
            if not 0 <= think_time[0] <= think_time[1]:
                raise ValueError
        except ValueError:
            raise CommandError("--think-time is MIN,MAX seconds, e.g. 0.25,0.75.") from None
        ws_users = parse_ws_users(options["ws_users"], options["users"])
        rate = options["message_rate"]
        if rate is None:
            rate = ws_users / DEFAULT_MESSAGE_INTERVAL
        if rate < 0:
            raise CommandError("--message-rate must not be negative.")
        interval = 0.0
        if rate > 0 and ws_users:
            per_socket = rate / ws_users
            limit = float(settings.WS_RATE_PER_SECOND)
            if per_socket > 0.8 * limit:
                raise CommandError(
                    f"--message-rate {rate:g}/s over {ws_users} sockets is {per_socket:.2f}/s "
                    f"per socket; keep it under 80% of the server's per-connection limit "
                    f"WS_RATE_PER_SECOND={limit:g}: add socket users or lower the rate."
                )
            interval = 1.0 / per_socket
        elif rate > 0 and not ws_users:
            raise CommandError("--message-rate needs socket users (--ws-users).")
        if importlib.util.find_spec("locust") is None:
            raise CommandError("locust is not installed: pip install -r requirements-dev.txt")
        project_ids = ()
        if options["project_ids"] is not None:
            project_ids = parse_project_ids_option(options["project_ids"])
        config = LoadTestConfig(
            ws_url=(ws_url or "").rstrip("/"),
            users_prefix=options["users_prefix"],
            password=options["password"],
            accounts=options["accounts"] or options["users"],
            first_index=options["first_index"],
            project_id=options["project_id"],
            project_ids=project_ids,
            projects=options["projects"],
            message_interval=interval,
            think_time=think_time,
            ws_users=ws_users if 0 < ws_users < options["users"] else None,
            me_sockets=options["me_sockets"],
            drain_seconds=options["drain"],
            drain_max_seconds=options["drain_max"],
        )
        return url, duration, spawn_rate, ws_users, rate, config

    @staticmethod
    def parse_duration(text):
        text = str(text).strip().lower()
        if text.replace(".", "", 1).isdigit():
            return float(text)
        total, number = 0.0, ""
        units = {"h": 3600, "m": 60, "s": 1}
        for char in text:
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                total += float(number) * units[char]
                number = ""
            else:
                raise ValueError(text)
        if number:
            raise ValueError(text)
        return total

    def preflight(self, url, username, password, project_id, project_name=None):
        """Sign in as the first user; return the project id to use (fail early and clearly).

        project_name: the first user must be a member of a project of that name.
        Cookies go back as a browser sends them (loadtest.cookies): Secure ones
        over https, and over plain http to loopback only.
        """
        jar = CookieJar(LoopbackSecureCookiePolicy())
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def call(method, path, body=None, headers=None):
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(url + path, data=data, method=method,
                                             headers={"Content-Type": "application/json",
                                                      **(headers or {})})
            try:
                with opener.open(request, timeout=15) as response:
                    return response.status, read_json(response.read())
            except urllib.error.HTTPError as error:
                return error.code, read_json(error.read())

        try:
            status, body = call("GET", "/api/auth/csrf")
        except OSError as error:
            raise CommandError(f"Cannot reach {url}: {error}. Is the server running?") from None
        token = body.get("csrf_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str):
            raise CommandError(f"GET {url}/api/auth/csrf answered HTTP {status} without a "
                               f"CSRF token ({brief(body)}): is --url this chat server?")
        status, body = call("POST", "/api/auth/login",
                            {"username": username, "password": password},
                            {"X-CSRFToken": token, "Referer": url + "/"})
        if status != 200:
            raise CommandError(explain_login_failure(url, username, status, body, jar))
        status, body = call("GET", "/api/auth/me")
        if status != 200:
            raise CommandError(
                f"Signed in as {username!r} at {url}, but the next request was not signed in "
                f"(GET /api/auth/me: HTTP {status}: {brief(body)}): the session cookie "
                f"{describe_cookie(jar, settings.SESSION_COOKIE_NAME, url)}."
            )
        if project_id is not None:
            status, body = call("GET", f"/api/projects/{project_id}")
            if status != 200:
                raise CommandError(f"{username!r} cannot open project {project_id}: "
                                   f"HTTP {status}: {brief(body)}")
            return project_id
        status, body = call("GET", "/api/projects?per_page=100")
        items = body.get("items", []) if status == 200 and isinstance(body, dict) else []
        if project_name is not None:
            named = [p for p in items if p["name"] == project_name]
            if not named:
                raise CommandError(
                    f"{username!r} is not a member of a project named {project_name!r}; "
                    "create the users with manage.py seed_demo --loadtest "
                    "--loadtest-projects K (the same K as --projects)."
                )
            return named[0]["id"]
        named = [p for p in items if p["name"] == DEFAULT_PROJECT_NAME]
        chosen = (named or items or [None])[0]
        if chosen is None:
            raise CommandError(f"{username!r} is in no project; give --project-id or create "
                               "the users with manage.py seed_demo --loadtest.")
        return chosen["id"]

    # -- run -----------------------------------------------------------------
    def handle(self, *args, **options):
        url, duration, spawn_rate, ws_users, rate, config = self.validate_options(options)
        users = options["users"]
        first = config.first_index
        username = config.username_of(first)
        if config.project_ids:
            project_ids = config.project_ids
            self.preflight(url, username, config.password,
                           project_ids[first % len(project_ids)])
            where = f"projects {','.join(map(str, project_ids))}"
        elif config.projects > 1:
            projects = config.projects
            self.preflight(url, username, config.password, None,
                           config.project_name_of(first))
            where = (f"{projects} projects ('Load' .. 'Load {projects}', "
                     "each account in its own)")
        else:
            config = replace(config, project_id=self.preflight(
                url, username, config.password, config.project_id))
            where = f"project {config.project_id}"

        if options["scenario"] == "guide":
            classes = ["GuideUser"]
        elif ws_users == users:
            classes = ["SocketChatUser"]
        elif ws_users == 0:
            classes = ["ChatUser"]
        else:
            classes = ["SocketChatUser", "ChatUser"]
        # Locust runs in the repository root: files named relative to the caller's
        # directory are made absolute here.
        csv_prefix, html_file, json_file = (
            os.path.abspath(options[name]) if options[name] else None
            for name in ("csv", "html", "json"))
        result_file = json_file or os.path.join(
            tempfile.mkdtemp(prefix="loadtest-"), "result.json")
        config = replace(config, result_file=result_file)
        # Every LOADTEST_* variable is set, so none leaks in from this environment.
        env = {**os.environ, **config.to_env()}
        if os.path.exists(result_file):
            os.unlink(result_file)
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{duration:g}s",
            "--host", url, "--only-summary", "--exit-code-on-error", "0",
            *classes,
        ]
        if options["steady"]:
            cmd += ["--reset-stats"]
        if csv_prefix:
            cmd += ["--csv", csv_prefix]
        if html_file:
            if os.path.exists(html_file):
                os.unlink(html_file)  # so that a report found after the run is this run's
            cmd += ["--html", html_file]
        scenario = ("the guide's scenario (GuideUser: HTTP only, wait 1-3 s), "
                    if options["scenario"] == "guide" else "")
        self.stdout.write(
            f"Load test: {scenario}{users} users ({ws_users} with a socket) on {url}, "
            f"{where}, spawn {spawn_rate:g}/s, {duration:g} s, socket messages "
            f"{rate:g}/s" + (f" (one per socket every {config.message_interval:.2f} s)"
                             if config.message_interval else "")
            + ("; every user also holds /ws/me/" if config.me_sockets else "")
        )
        self.stdout.flush()
        budget = duration + users / spawn_rate + options["drain_max"] + 90
        returncode = self.run_locust(cmd, env, budget, options["quiet_locust"])
        try:
            result = read_result(result_file)
        except (OSError, ValueError):
            raise CommandError(
                f"locust exited with {returncode} and wrote no result; see its output above."
            ) from None
        failed = self.report(result, steady=options['steady'])
        if html_file:
            if os.path.exists(html_file):
                self.stdout.write(f"HTML report (locust's, with its charts over time): "
                                  f"{html_file}")
            else:
                self.stdout.write(self.style.WARNING(
                    f"locust wrote no HTML report to {html_file}; see its output above."))
        summary = result["summary"]
        correctness = summary["lost"] + summary["duplicated"] + summary["out_of_order"]
        if correctness:
            raise CommandError(
                f"{summary['lost']} lost, {summary['duplicated']} duplicated, "
                f"{summary['out_of_order']} out-of-order messages."
            )
        if options["strict"] and failed:
            raise CommandError(f"targets failed: {', '.join(failed)}")

    def run_locust(self, cmd, env, budget, quiet):
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, start_new_session=True,
        )

        def copy_output():
            for line in proc.stdout:
                if not quiet:
                    self.stdout.write(line.rstrip("\n"))
                    self.stdout.flush()

        reader = threading.Thread(target=copy_output, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=budget)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            raise CommandError(f"locust did not finish within {budget:.0f} s; stopped it.")
        reader.join(10)
        return proc.returncode

    # -- report --------------------------------------------------------------
    def report(self, result, steady=False):
        """Print the targets tables of result; return the labels of the failed targets."""
        report = format_report(result, steady=steady)
        for line in report.lines:
            self.stdout.write(line)
        if report.problems:
            self.stdout.write(self.style.WARNING("Problems: " + " | ".join(report.problems)))
        return report.failed
