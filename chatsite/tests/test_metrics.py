"""Prometheus metrics: labels by route pattern, /metrics access, the performance page,
request ids and JSON logs, and correct totals across worker processes."""

import json
import logging
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chatsite.logging import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    accept_request_id,
    bind_connection_id,
)
from chatsite.metrics import readable_route
from chatsite.ops_views import histogram_quantile
from conftest import login_client

EDIT_ROUTE = "/api/messages/{message_id}"


def requests_counted(method, endpoint, status):
    value = REGISTRY.get_sample_value(
        "http_requests_total", {"method": method, "endpoint": endpoint, "status": status}
    )
    return value or 0.0


def scrape(client=None, **extra):
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content[:200]
    return {family.name: family for family in
            text_string_to_metric_families(response.content.decode())}


# --- labels ---------------------------------------------------------------------------


def test_two_message_ids_are_one_endpoint_label_counted_twice(client_owner, owner, project,
                                                              send):
    first, second = send(owner, project, 2)
    before = requests_counted("PATCH", EDIT_ROUTE, "200")
    for message in (first, second):
        response = client_owner.patch(
            f"/api/messages/{message.pk}", {"content": "edited"},
            content_type="application/json",
        )
        assert response.status_code == 200

    families = scrape()
    patch_samples = [
        sample for sample in families["http_requests"].samples
        if sample.name == "http_requests_total" and sample.labels["method"] == "PATCH"
    ]
    endpoints = {sample.labels["endpoint"] for sample in patch_samples}
    assert EDIT_ROUTE in endpoints
    assert not any(str(first.pk) in e or str(second.pk) in e for e in endpoints)
    counted = sum(s.value for s in patch_samples
                  if s.labels["endpoint"] == EDIT_ROUTE and s.labels["status"] == "200")
    assert counted - before == 2


def test_history_of_two_projects_is_one_endpoint(client_member, member, owner, project):
    from projects.actions import do_create_project, do_join_project

    other = do_create_project(owner, name="Second")
    do_join_project(member, other.pk)
    route = "/api/projects/{project_id}/messages"
    before = requests_counted("GET", route, "200")
    for project_id in (project.pk, other.pk):
        assert client_member.get(f"/api/projects/{project_id}/messages").status_code == 200
    assert requests_counted("GET", route, "200") - before == 2


def test_the_guides_four_metrics_are_exported_with_their_labels(client_member, project):
    client_member.get(f"/api/projects/{project.pk}/messages")
    families = scrape()

    requests = families["http_requests"]
    assert requests.type == "counter"
    assert {"method", "endpoint", "status"} <= set(requests.samples[0].labels)

    durations = families["http_request_duration_seconds"]
    assert durations.type == "histogram"
    bucket = next(s for s in durations.samples if s.name.endswith("_bucket"))
    assert set(bucket.labels) == {"method", "endpoint", "le"}

    assert families["websocket_connections_active"].type == "gauge"

    queries = families["database_query_duration_seconds"]
    assert queries.type == "histogram"
    kinds = {s.labels["query_type"] for s in queries.samples if s.name.endswith("_count")}
    assert kinds == {"select", "insert", "update", "delete", "other"}
    select_count = next(s.value for s in queries.samples
                        if s.name.endswith("_count") and s.labels["query_type"] == "select")
    assert select_count > 0
    # django-prometheus's own families ride along.
    assert "django_http_requests_latency_seconds_by_view_method" in families
    assert "django_db_execute" in families


def test_unmatched_paths_share_one_label(client):
    before = requests_counted("GET", "unmatched", "404")
    client.get("/no/such/page/123")
    client.get("/api/no-such-endpoint/456")
    assert requests_counted("GET", "unmatched", "404") - before == 2


@pytest.mark.parametrize("route, label", [
    ("api/projects/<int:project_id>/messages", "/api/projects/{project_id}/messages"),
    ("api/messages/<int:message_id>", "/api/messages/{message_id}"),
    ("healthz", "/healthz"),
    ("admin/chat/message/<path:object_id>/change/", "/admin/chat/message/{object_id}/change/"),
    ("admin/^(?P<app_label>auth|chat)/$", "/admin/{app_label}/"),
])
def test_readable_route(route, label):
    assert readable_route(route) == label


# --- who may scrape -------------------------------------------------------------------


def test_anonymous_client_outside_the_allow_list_gets_403(db):
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 403


def test_signed_in_non_staff_outside_the_allow_list_gets_403(member):
    client = login_client(member)
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403


def test_staff_may_scrape_from_anywhere(admin_client):
    assert admin_client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200


def test_allow_list_takes_networks(db):
    with override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8"]):
        assert Client(REMOTE_ADDR="10.20.30.40").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403


def test_forwarded_for_header_does_not_open_the_allow_list(db):
    response = Client(REMOTE_ADDR="203.0.113.9").get(
        "/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1"
    )
    assert response.status_code == 403


def test_metrics_disabled_means_no_endpoint_and_no_counting(db):
    with override_settings(ENABLE_METRICS=False):
        client = Client()
        before = requests_counted("GET", "/healthz", "200")
        assert client.get("/healthz").status_code == 200
        assert requests_counted("GET", "/healthz", "200") == before
        assert client.get("/metrics").status_code == 404


def test_start_metrics_server_serves_the_port(db):
    from chatsite.metrics import start_metrics_server
    from tests.live import free_port

    port = free_port()
    with override_settings(METRICS_PORT=port, METRICS_ADDRESS="127.0.0.1"):
        assert start_metrics_server() is True
        # A second process (here: call) finds the port taken and carries on.
        assert start_metrics_server() is False
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"http_request_duration_seconds" in response.read()


# --- performance page -------------------------------------------------------------------


def test_performance_page_shows_endpoints_chart_and_slow_queries(admin_client, client_member,
                                                                 project):
    for _ in range(3):
        client_member.get(f"/api/projects/{project.pk}/messages")
    response = admin_client.get("/admin/performance/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/api/projects/{project_id}/messages" in page
    assert "<svg" in page and "p95" in page
    assert "Slowest recent queries" in page
    assert response.context["slowest"], "the wrapper keeps the slowest statements"
    # A second view has a window to compute a rate over.
    assert admin_client.get("/admin/performance/?refresh=10").status_code == 200


def test_performance_page_is_staff_only(client_member):
    response = client_member.get("/admin/performance/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_index_links_the_performance_page(admin_client):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert 'href="/admin/performance/"' in response.content.decode()


def test_histogram_quantile_interpolates_inside_the_bucket():
    inf = float("inf")
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.55)
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (inf, 10.0)]) == 0.1


# --- request ids and JSON lines ---------------------------------------------------------


def test_response_carries_a_request_id(client):
    response = client.get("/healthz")
    assert len(response["X-Request-ID"]) == 16


def test_a_sane_incoming_request_id_is_echoed_and_an_odd_one_replaced(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.01").headers[
        "X-Request-ID"] == "lb-7f3a.01"
    odd = client.get("/healthz", HTTP_X_REQUEST_ID="<script>\n").headers["X-Request-ID"]
    assert odd != "<script>\n" and len(odd) == 16
    assert accept_request_id("x" * 65) != "x" * 65


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
        self.addFilter(RequestIdFilter())

    def emit(self, record):
        self.records.append(record)


def test_log_lines_of_a_request_carry_its_request_id(client_member, project):
    handler = Collect()
    db_logger = logging.getLogger("chatsite.db")
    db_logger.addHandler(handler)
    try:
        with override_settings(SLOW_QUERY_THRESHOLD=0):
            client_member.get(f"/api/projects/{project.pk}/messages",
                              HTTP_X_REQUEST_ID="req-12345")
    finally:
        db_logger.removeHandler(handler)
    assert handler.records
    assert {record.request_id for record in handler.records} == {"req-12345"}
    assert REQUEST_ID.get() == "-", "the id is unbound when the request finishes"


def test_djangos_own_response_lines_carry_the_request_id(client):
    handler = Collect()
    request_logger = logging.getLogger("django.request")
    request_logger.addHandler(handler)
    try:
        client.get("/no/such/page", HTTP_X_REQUEST_ID="req-404")
    finally:
        request_logger.removeHandler(handler)
    assert [record.request_id for record in handler.records] == ["req-404"]


def test_json_formatter_writes_one_object_per_line_with_extras():
    record = logging.LogRecord("chatsite.db", logging.WARNING, __file__, 1,
                               "event=slow_query duration=%.4f", (0.25,), None)
    record.event, record.duration_ms = "slow_query", 250.0
    token = REQUEST_ID.set("abc123")
    try:
        RequestIdFilter().filter(record)
        line = JsonFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "event=slow_query duration=0.2500"
    assert entry["request_id"] == "abc123"
    assert entry["event"] == "slow_query" and entry["duration_ms"] == 250.0
    assert entry["level"] == "WARNING" and entry["logger"] == "chatsite.db"


def test_websocket_connection_binds_its_own_request_id():
    async def connect(headers):
        return bind_connection_id({"headers": headers})

    import asyncio

    chosen = asyncio.run(connect([(b"x-request-id", b"ws-abc")]))
    assert chosen == "ws-abc"
    fresh = asyncio.run(connect([]))
    assert len(fresh) == 16
    assert REQUEST_ID.get() == "-", "bound inside the connection's task only"


# --- several worker processes -----------------------------------------------------------


def _healthz_requests_counted(base_url):
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
        body = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(body) if family.name == "http_requests"
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.labels["endpoint"] == "/healthz"
    )


@pytest.mark.live
def test_request_counter_is_the_total_across_two_workers(tmp_path):
    from tests.live import LiveServer, make_live_env

    multiproc = tmp_path / "prometheus"
    env, close = make_live_env()
    server = LiveServer(env, workers=2, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    sent = 120
    try:
        server.start()
        # LiveServer.start() polled /healthz until it answered: not ours to count.
        before = _healthz_requests_counted(server.url)

        def get(_):
            # A new connection each time, so both workers take requests.
            with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
                return response.status

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(get, range(sent)))
        assert statuses == [200] * sent

        assert _healthz_requests_counted(server.url) - before == sent
        pids = {Path(name).stem.rsplit("_", 1)[-1] for name in os.listdir(multiproc)
                if name.startswith("counter_")}
        assert len(pids) >= 2, f"one worker took every request: {pids}"
    finally:
        server.stop()
        close()
