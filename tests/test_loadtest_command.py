"""manage.py loadtest: loopback only, and a short real run prints every target (docs/OPERATIONS.md "loadtest"; docs/PERFORMANCE.md, "The targets, where we stand")."""

import json
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
