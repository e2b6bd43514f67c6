"""The guide's Prometheus metrics of the HTTP and database paths, and their export.

Metrics are collected per process. With several worker processes set
PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped before the server starts):
every process then writes its values there and /metrics (or METRICS_PORT)
adds them up, so totals are correct whichever worker answers the scrape.
"""

import logging
import os
import re
import time

import prometheus_client
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django_prometheus import middleware as django_prometheus_middleware
from django_prometheus.utils import Time
from prometheus_client import Counter, Histogram, multiprocess

# Reused, not redefined: the consumer keeps it up to date.
from chat.metrics import WEBSOCKET_CONNECTIONS_ACTIVE  # noqa: F401

logger = logging.getLogger(__name__)

# Finer than the client's defaults below 100 ms, where the latency targets are (docs/PERFORMANCE.md).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0,
                2.5, 5.0, 10.0)
QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                 2.5, 5.0)

HTTP_REQUESTS_TOTAL = Counter(
    "http_requests_total", "HTTP requests by method, route pattern and status",
    ["method", "endpoint", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request duration by method and route pattern",
    ["method", "endpoint"], buckets=HTTP_BUCKETS,
)
DATABASE_QUERY_DURATION = Histogram(
    "database_query_duration_seconds", "Database statement duration by statement kind",
    ["query_type"], buckets=QUERY_BUCKETS,
)

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PATH_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")
_REGEX_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def readable_route(route):
    """Turn a URL pattern into a readable endpoint label.

    "api/projects/<int:project_id>/messages" -> "/api/projects/{project_id}/messages";
    regular-expression routes (the admin's) get the same {name} placeholders.
    """
    route = _REGEX_GROUP.sub(r"{\1}", route).replace("^", "").replace("$", "")
    route = _PATH_CONVERTER.sub(r"{\1}", route)
    return "/" + route.lstrip("/")


class MetricsMiddleware:
    """Count and time every request by method, route pattern and status.

    Runs on every request, so it only does dictionary lookups: the readable
    route and the labelled children of both metrics are cached (both sets are
    bounded by the URL patterns and the allowed methods).
    """

    def __init__(self, get_response):
        if not settings.ENABLE_METRICS:
            raise MiddlewareNotUsed
        self.get_response = get_response
        self.static_prefix = settings.STATIC_URL or "/static/"
        self._endpoints = {}
        self._counters = {}
        self._timers = {}

    def __call__(self, request):
        start = time.perf_counter()
        response = self.get_response(request)
        duration = time.perf_counter() - start
        method = request.method if request.method in METHODS else "other"
        endpoint = self.endpoint(request)
        key = (method, endpoint)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = HTTP_REQUEST_DURATION.labels(method, endpoint)
        timer.observe(duration)
        key = (method, endpoint, response.status_code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = HTTP_REQUESTS_TOTAL.labels(
                method, endpoint, str(response.status_code)
            )
        counter.inc()
        return response

    def endpoint(self, request):
        match = request.resolver_match
        if match is None:
            # Static files are answered by whitenoise before URL resolution.
            if request.path.startswith(self.static_prefix):
                return self.static_prefix + "*"
            return UNMATCHED
        route = match.route
        endpoint = self._endpoints.get(route)
        if endpoint is None:
            endpoint = self._endpoints[route] = readable_route(route)
        return endpoint


class PrometheusBeforeMiddleware(django_prometheus_middleware.PrometheusBeforeMiddleware):
    """django-prometheus's outer middleware; off with ENABLE_METRICS=false."""

    def __init__(self, get_response):
        if not settings.ENABLE_METRICS:
            raise MiddlewareNotUsed
        super().__init__(get_response)


class PrometheusAfterMiddleware(django_prometheus_middleware.PrometheusAfterMiddleware):
    """django-prometheus's inner middleware with its labelled children cached.

    As shipped it calls .labels() about eight times a request (a lock and a
    label validation each) and parses every header into request.headers; this
    was most of its cost (docs/OPERATIONS.md, "Cost of the metrics").
    """

    def __init__(self, get_response):
        if not settings.ENABLE_METRICS:
            raise MiddlewareNotUsed
        super().__init__(get_response)
        self._children = {}

    def label_metric(self, metric, request, response=None, **labels):
        if not labels:
            return metric
        # Every call site passes its labels in one fixed order.
        key = (metric, *labels.values())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(**labels)
        return child

    def process_request(self, request):
        # The parent's, reading META instead of building request.headers.
        meta = request.META
        self.label_metric(self.metrics.requests_by_method, request,
                          method=self._method(request)).inc()
        self.label_metric(self.metrics.requests_by_transport, request,
                          transport=self._transport(request)).inc()
        if meta.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest":
            self.metrics.requests_ajax.inc()
        try:
            content_length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            content_length = 0
        self.metrics.requests_body_bytes.observe(content_length)
        request.prometheus_after_middleware_event = Time()


def multiprocess_dir():
    """Return PROMETHEUS_MULTIPROC_DIR when multiprocess mode is on, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def get_registry():
    """Return the registry to export: all processes' values in multiprocess mode."""
    if multiprocess_dir():
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return prometheus_client.REGISTRY


def render_metrics():
    """Return (body, content type) of the Prometheus text exposition."""
    return prometheus_client.generate_latest(get_registry()), prometheus_client.CONTENT_TYPE_LATEST


def start_metrics_server():
    """Serve /metrics on METRICS_PORT in a daemon thread when ENABLE_METRICS is on.

    Call once per server process (chatsite/asgi.py). With several workers only
    the first binds the port; in multiprocess mode it serves everyone's totals.
    Returns True when this process serves the port.
    """
    if not settings.ENABLE_METRICS or not settings.METRICS_PORT:
        return False
    address = settings.METRICS_ADDRESS
    try:
        prometheus_client.start_http_server(
            settings.METRICS_PORT, addr=address, registry=get_registry()
        )
    except OSError as exc:
        logger.info(
            "event=metrics_port_busy port=%s address=%s error=%s",
            settings.METRICS_PORT, address, exc,
        )
        return False
    logger.info("event=metrics_port_serving port=%s address=%s",
                settings.METRICS_PORT, address)
    return True


def mark_this_process_dead():
    """Drop this process's live gauges from the multiprocess directory on exit."""
    path = multiprocess_dir()
    if path and os.path.isdir(path):
        multiprocess.mark_process_dead(os.getpid(), path)
