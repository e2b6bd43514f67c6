"""manage.py loadtest: loopback only, and a short real run prints every target (docs/OPERATIONS.md "loadtest"; docs/PERFORMANCE.md, "The targets, where we stand")."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.live import (
    PASSWORD,
    ROOT,
    LiveServer,
    create_users_and_project,
    make_live_env,
    run_manage,
)

LATENCY_ROWS = ["Simple GET", "Complex GET", "POST", "WebSocket"]
METRIC_ROWS = [
    "Requests/sec", "Concurrent users", "Messages/sec",
    "Lost messages", "Duplicated messages", "Out-of-order messages",
]
NUMBER = re.compile(r"^\d[\d,]*(\.\d+)?( ms)?( \(peak \d[\d,]*\))?$")


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8000", "http://example.com", "https://192.168.1.2", "http://[2001:db8::1]:80",
])
def test_refuses_a_url_that_is_not_loopback(url):
    with pytest.raises(CommandError, match="--allow-remote"):
        call_command("loadtest", "--url", url, "--users", "1", "--duration", "1")


def test_refusal_is_a_nonzero_exit_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "manage.py", "loadtest", "--url", "http://203.0.113.7:8000"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "not a loopback address" in proc.stderr and "--allow-remote" in proc.stderr


def test_refuses_a_socket_send_rate_over_the_server_limit(settings):
    settings.WS_RATE_PER_SECOND = 10
    with pytest.raises(CommandError, match="WS_RATE_PER_SECOND"):
        call_command("loadtest", "--url", "http://127.0.0.1:1", "--users", "2",
                     "--message-rate", "100")


def test_refuses_more_than_one_way_to_choose_projects():
    with pytest.raises(CommandError, match="only one of"):
        call_command("loadtest", "--url", "http://127.0.0.1:1", "--users", "2",
                     "--project-id", "3", "--projects", "2")
    with pytest.raises(CommandError, match="only one of"):
        call_command("loadtest", "--url", "http://127.0.0.1:1", "--users", "2",
                     "--project-ids", "3,4", "--projects", "2")


@pytest.mark.parametrize("ids", ["", "a,b", "3,-1", "0"])
def test_refuses_bad_project_ids(ids):
    with pytest.raises(CommandError, match="--project-ids"):
        call_command("loadtest", "--url", "http://127.0.0.1:1", "--users", "2",
                     "--project-ids", ids)


def parse_table(output, first_header):
    """Rows of the markdown table whose header starts with first_header: {label: cells}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.live
@pytest.mark.parametrize(("workers", "extra"), [
    (1, []),
    # Two server processes share one PostgreSQL and one Redis (docs/SCALING.md).
    pytest.param(2, [], marks=pytest.mark.redis),
    # Latencies of the steady state only (locust's statistics reset after the ramp-up).
    (1, ["--steady"]),
])
def test_short_run_prints_a_measured_value_in_every_cell_and_loses_nothing(workers, extra):
    env, close = make_live_env()
    server = None
    try:
        users = [f"lt{i}" for i in range(6)]
        project_id = create_users_and_project(env, users, "Load")
        server = LiveServer(env, workers=workers).start()
        proc = subprocess.run(
            [sys.executable, "manage.py", "loadtest", "--url", server.url,
             "--users", "6", "--spawn-rate", "6", "--duration", "8",
             "--users-prefix", "lt", "--password", PASSWORD, "--project-id", str(project_id),
             "--message-rate", "6", "--drain", "10", *extra],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
        )
        output = check_run(proc, server)
        assert "projects: 1" in output.splitlines()
        steady = "latencies over the same (steady state)" in output
        assert steady == ("--steady" in extra)
    finally:
        if server is not None:
            server.stop()
        close()


def check_run(proc, server, sockets=6):
    """Every cell measured, nothing lost, duplicated or out of order; return the output."""
    output = proc.stdout
    # The command exits 1 when anything was lost, duplicated or out of order.
    assert proc.returncode == 0, output[-4000:] + proc.stderr[-2000:]

    latency = parse_table(output, "Endpoint type")
    metrics = parse_table(output, "Metric")
    assert list(latency) == LATENCY_ROWS
    assert list(metrics) == METRIC_ROWS
    for label, (target, measured, status) in {**latency, **metrics}.items():
        assert NUMBER.match(measured), f"{label}: measured {measured!r}"
        assert target and status in ("PASS", "FAIL"), f"{label}: {target!r} {status!r}"
    for row in ("Lost messages", "Duplicated messages", "Out-of-order messages"):
        assert metrics[row][1:] == ["0", "PASS"], output[-3000:]
    assert metrics["Concurrent users"][1].startswith(f"{sockets} ")
    assert "Traceback" not in server.output(), server.output()[-4000:]
    return output


@pytest.mark.live
@pytest.mark.parametrize(("workers", "choose"), [
    # Each account finds its own project by name, as seed_demo --loadtest-projects names them.
    (1, "--projects"),
    pytest.param(2, "--project-ids", marks=pytest.mark.redis),
])
def test_users_spread_over_two_projects_lose_nothing(workers, choose, tmp_path):
    env, close = make_live_env()
    server = None
    try:
        users = [f"lt{i}" for i in range(6)]
        # Account i in project i mod 2, as seed_demo --loadtest --loadtest-projects 2 does.
        load = create_users_and_project(env, users[::2], "Load")
        load2 = create_users_and_project(env, users[1::2], "Load 2")
        server = LiveServer(env, workers=workers).start()
        how = ["--projects", "2"] if choose == "--projects" else [
            "--project-ids", f"{load},{load2}"]
        result_file = tmp_path / "result.json"
        proc = subprocess.run(
            [sys.executable, "manage.py", "loadtest", "--url", server.url,
             "--users", "6", "--spawn-rate", "6", "--duration", "8",
             "--users-prefix", "lt", "--password", PASSWORD, *how,
             "--message-rate", "6", "--drain", "10", "--json", str(result_file)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
        )
        output = check_run(proc, server)
        assert "projects: 2" in output.splitlines()

        summary = json.loads(result_file.read_text())["summary"]
        assert summary["projects"] == 2
        assert sorted(summary["project_ids"]) == sorted([load, load2])
        by_project = summary["max_seq_by_project"]
        assert set(by_project) == {str(load), str(load2)}
        assert all(seq > 0 for seq in by_project.values()), by_project
        assert summary["max_seq"] == sum(by_project.values())
        assert summary["messages_delivered"] > 0
        assert summary["lost"] == summary["duplicated"] == summary["out_of_order"] == 0
        assert summary["sockets_behind_at_end"] == 0
        # Each message reaches only the 3 sockets of its project, not all 6.
        assert summary["deliveries"] <= 3 * summary["messages_delivered"], summary
    finally:
        if server is not None:
            server.stop()
        close()


def test_me_sockets_setting_goes_through_the_environment():
    from loadtest.config import LoadTestConfig

    assert LoadTestConfig().me_sockets is False
    assert LoadTestConfig.from_env(LoadTestConfig().to_env()).me_sockets is False
    on = LoadTestConfig(me_sockets=True)
    assert on.to_env()["LOADTEST_ME_SOCKETS"] == "1"
    assert LoadTestConfig.from_env(on.to_env()).me_sockets is True
    assert LoadTestConfig.from_env({"LOADTEST_ME_SOCKETS": "0"}).me_sockets is False


@pytest.mark.live
def test_every_user_holds_the_me_socket_with_me_sockets(tmp_path):
    env, close = make_live_env()
    server = None
    try:
        users = [f"lt{i}" for i in range(6)]
        project_id = create_users_and_project(env, users, "Load")
        server = LiveServer(env).start()
        result_file = tmp_path / "result.json"
        # 4 socket users and 2 HTTP-only ones: both kinds open /ws/me/.
        proc = subprocess.run(
            [sys.executable, "manage.py", "loadtest", "--url", server.url,
             "--users", "6", "--ws-users", "4", "--spawn-rate", "6", "--duration", "8",
             "--users-prefix", "lt", "--password", PASSWORD, "--project-id", str(project_id),
             "--message-rate", "6", "--drain", "10", "--me-sockets",
             "--json", str(result_file)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
        )
        output = check_run(proc, server, sockets=4)
        assert "every user also holds /ws/me/" in output
        assert any(line.startswith("/ws/me/: held by 6 of 6 users") for line in
                   output.splitlines()), output[-3000:]

        result = json.loads(result_file.read_text())
        summary = result["summary"]
        assert summary["me_sockets"] is True
        assert summary["me_socket_connects"] == 6, summary
        assert summary["me_sockets_users"] == summary["me_sockets_open_at_stop"] == 6
        assert summary["me_hello"] == 6
        assert summary["me_project_updates"] > 0, summary
        assert summary["me_socket_connect_failures"] == summary["me_socket_closes"] == 0
        assert summary["me_sockets_closed_before_stop"] == 0
        assert summary["lost"] == summary["duplicated"] == summary["out_of_order"] == 0
        connect = result["entries"]["WS me connect"]
        assert connect["count"] == 6 and connect["failures"] == 0, connect
    finally:
        if server is not None:
            server.stop()
        close()


# --- Secure cookies on loopback, and what a refused sign-in says ------------------------


def load_cookies(jar, url):
    """Give jar the cookies a production-shape server sets: Secure csrftoken, and a plain one."""
    import email.message
    import urllib.request

    headers = email.message.Message()
    headers["Set-Cookie"] = "csrftoken=token1; Path=/; Secure; SameSite=Lax"
    headers["Set-Cookie"] = "plain=1; Path=/"

    class Response:
        def info(self):
            return headers

    Response.headers = headers
    jar.extract_cookies(Response(), urllib.request.Request(url + "/api/auth/csrf"))


@pytest.mark.parametrize(("base", "secure_sent"), [
    ("http://127.0.0.1:8000", True),
    ("http://127.9.9.9:8000", True),
    ("http://localhost:8000", True),
    ("http://[::1]:8000", True),
    ("https://example.com", True),
    ("http://example.com", False),
    ("http://10.0.0.5:8000", False),
    ("http://127.0.0.1.example.com", False),
])
def test_the_jar_sends_secure_cookies_over_http_to_loopback_only(base, secure_sent):
    import urllib.request

    from loadtest.cookies import SteadyCookieJar

    jar = SteadyCookieJar()
    load_cookies(jar, base)
    request = urllib.request.Request(base + "/api/projects")
    jar.add_cookie_header(request)
    expected = "csrftoken=token1; plain=1" if secure_sent else "plain=1"
    assert request.get_header("Cookie") == expected
    # The sockets' header, to the socket server's ws(s) URL, follows the same rule.
    ws = base.replace("http", "ws", 1)
    assert jar.header(ws) == expected
    # A response that sets a cookie rebuilds the header.
    jar.clear()
    load_cookies(jar, base)
    assert jar.header(base + "/") == expected


def test_the_standard_jar_would_not_send_them_to_loopback():
    """Why the jar exists: the standard policy keeps Secure cookies for https."""
    import urllib.request
    from http.cookiejar import CookieJar

    jar = CookieJar()
    load_cookies(jar, "http://127.0.0.1:8000")
    request = urllib.request.Request("http://127.0.0.1:8000/api/projects")
    jar.add_cookie_header(request)
    assert request.get_header("Cookie") == "plain=1"


SECURE_SETTINGS = """from chatsite.settings import *  # noqa: F403

# Production shape's cookies, also on the embedded default (where settings.py
# sets them only with PostgreSQL and Redis).
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
"""


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    """A live server whose session and CSRF cookies are Secure, over plain http on
    loopback (as `make serve` is), with users lt0..lt11 in project "Load"."""
    settings_dir = tmp_path_factory.mktemp("secure_settings")
    (settings_dir / "secure_cookie_settings.py").write_text(SECURE_SETTINGS)
    env, close = make_live_env()
    env.update({
        "SESSION_COOKIE_SECURE": "true", "CSRF_COOKIE_SECURE": "true",
        "DJANGO_SETTINGS_MODULE": "secure_cookie_settings",
        "PYTHONPATH": os.pathsep.join([str(settings_dir), str(ROOT)]),
    })
    server = None
    try:
        project_id = create_users_and_project(env, [f"lt{i}" for i in range(12)], "Load")
        server = LiveServer(env).start()
        yield server, env, project_id
    finally:
        if server is not None:
            server.stop()
        close()


def set_cookie_headers(url):
    import urllib.request

    with urllib.request.urlopen(url + "/api/auth/csrf", timeout=10) as response:
        return response.headers.get_all("Set-Cookie")


@pytest.mark.live
def test_runs_against_a_server_whose_cookies_are_secure(secure_server, tmp_path):
    server, env, project_id = secure_server
    (csrf_cookie,) = set_cookie_headers(server.url)
    assert csrf_cookie.startswith("csrftoken=") and "Secure" in csrf_cookie
    result_file = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "manage.py", "loadtest", "--url", server.url,
         "--users", "4", "--spawn-rate", "4", "--duration", "6",
         "--users-prefix", "lt", "--password", PASSWORD, "--project-id", str(project_id),
         "--message-rate", "4", "--drain", "10", "--json", str(result_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    check_run(proc, server, sockets=4)
    summary = json.loads(result_file.read_text())["summary"]
    assert summary["login_failures"] == summary["total_failures"] == 0, summary
    assert summary["socket_connect_failures"] == 0 and summary["http_sent"] > 0, summary


@pytest.mark.live
def test_a_refused_sign_in_says_what_failed(secure_server, monkeypatch):
    from http.cookiejar import DefaultCookiePolicy

    from chat.management.commands.loadtest import Command
    from loadtest.cookies import LoopbackSecureCookiePolicy

    server, _env, project_id = secure_server
    command = Command()
    assert command.preflight(server.url, "lt0", PASSWORD, project_id) == project_id

    with pytest.raises(CommandError) as wrong:
        command.preflight(server.url, "lt0", "not-the-password", project_id)
    assert "wrong username or password" in str(wrong.value)
    assert "CSRF" not in str(wrong.value)

    # A jar that keeps Secure cookies for https, as the standard library's does:
    # the server refuses the sign-in's CSRF check, and the error says why.
    monkeypatch.setattr(LoopbackSecureCookiePolicy, "return_ok_secure",
                        DefaultCookiePolicy.return_ok_secure)
    with pytest.raises(CommandError) as refused:
        command.preflight(server.url, "lt0", PASSWORD, project_id)
    message = str(refused.value)
    assert "CSRF check refused the sign-in" in message and "csrf_failed" in message
    assert "csrftoken cookie is Secure and was not sent back over plain http" in message
    assert "Create the load test users" not in message


GUIDE_REQUESTS = {
    "GET complex GET: history", "GET simple GET: projects", "POST POST: message",
}


@pytest.mark.live
def test_the_guide_scenario_runs_the_guides_mix_and_writes_locusts_html_report(
    secure_server, tmp_path
):
    server, env, project_id = secure_server
    users, duration = 12, 8
    html_file, result_file = tmp_path / "guide.html", tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "manage.py", "loadtest", "--scenario", "guide", "--url", server.url,
         "--users", str(users), "--spawn-rate", str(users), "--duration", str(duration),
         "--users-prefix", "lt", "--password", PASSWORD, "--project-id", str(project_id),
         "--html", str(html_file), "--json", str(result_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    output = proc.stdout
    assert proc.returncode == 0, output[-4000:] + proc.stderr[-2000:]
    result = json.loads(result_file.read_text())
    summary, entries = result["summary"], result["entries"]
    assert summary["scenario"] == "guide"
    assert summary["total_failures"] == summary["login_failures"] == 0, result["errors"]
    assert summary["socket_connects"] == 0  # the guide's user holds no socket
    # Each of the guide's three requests was made, and nothing else but signing in.
    made = {name for name, entry in entries.items() if entry["count"]}
    assert made == GUIDE_REQUESTS | {"GET auth: csrf", "POST auth: login"}, made
    assert entries["POST auth: login"]["count"] == users
    # The guide's wait (1-3 s between tasks) bounds each user's tasks by the run time.
    tasks = sum(entries[name]["count"] for name in GUIDE_REQUESTS)
    assert tasks <= users * (duration + 1), tasks
    assert summary["http_sent"] == entries["POST POST: message"]["count"]

    latency = parse_table(output, "Endpoint type")
    metrics = parse_table(output, "Metric")
    for label in ("Simple GET", "Complex GET", "POST"):
        assert NUMBER.match(latency[label][1]), latency[label]
    assert latency["WebSocket"][1:] == ["no sockets in this scenario", "n/a"]
    assert NUMBER.match(metrics["Requests/sec"][1])
    for label in METRIC_ROWS[1:]:
        assert metrics[label][2] == "n/a", metrics[label]
    assert any(line.startswith("scenario: guide") for line in output.splitlines())

    # locust's own HTML report, with the run's requests in it, named under the tables.
    html = html_file.read_text()
    assert html.lstrip().lower().startswith("<!doctype html>"), html[:200]
    assert "complex GET: history" in html and "</html>" in html.lower()
    assert f"HTML report (locust's, with its charts over time): {html_file}" in output
    assert "Traceback" not in server.output(), server.output()[-4000:]


@pytest.mark.parametrize("extra", [
    ["--ws-users", "2"], ["--message-rate", "1"], ["--me-sockets"], ["--think-time", "0,1"],
    ["--ws-url", "ws://127.0.0.1:1"],
])
def test_the_guide_scenario_refuses_options_it_does_not_have(extra):
    with pytest.raises(CommandError, match="guide's locustfile as written"):
        call_command("loadtest", "--scenario", "guide", "--url", "http://127.0.0.1:1",
                     "--users", "2", *extra)


def guide_locustfile():
    """The guide's locustfile with its one change, as loadtest/README.md shows it."""
    text = (ROOT / "loadtest" / "README.md").read_text()
    block = text.split("<!-- guide-locustfile -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.live
def test_the_readmes_guide_locustfile_runs_without_a_failure(tmp_path):
    code = guide_locustfile()
    assert '"username": "testuser"' in code and '"project_id": 1' in code
    assert "self.client.get(\"/api/messages?page=1&per_page=50\")" in code
    (tmp_path / "locustfile.py").write_text(code)
    env, close = make_live_env()  # cookies not Secure: requests' jar keeps those for https
    server = None
    try:
        created = run_manage(env, "shell", "-c", (
            "from accounts.models import User\n"
            "from projects.actions import do_create_project\n"
            "u = User.objects.create_user('testuser', 'testuser@example.com', 'testpass')\n"
            "print(do_create_project(u, name='Guide').pk)\n"))
        assert created.stdout.strip().splitlines()[-1] == "1"  # the guide posts to project 1
        server = LiveServer(env).start()
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(tmp_path / "locustfile.py"),
             "--headless", "-u", "6", "-r", "6", "-t", "6s", "--host", server.url,
             "--only-summary", "--csv", str(tmp_path / "guide")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        # locust exits 1 when any request failed.
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = {row["Name"]: row for row in csv.DictReader(
            (tmp_path / "guide_stats.csv").open())}
        total = rows["Aggregated"]
        assert int(total["Request Count"]) > 6 and int(total["Failure Count"]) == 0, total
        assert int(rows["/api/auth/login"]["Request Count"]) == 6
        assert int(rows["/api/messages?page=1&per_page=50"]["Request Count"]) > 0
    finally:
        if server is not None:
            server.stop()
        close()
