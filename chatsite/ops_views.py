"""Operator views: the Prometheus scrape endpoint and the admin performance page."""

import ipaddress
import math
import threading
import time
from collections import deque
from functools import lru_cache

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpResponse, HttpResponseForbidden
from django.template.response import TemplateResponse

from chatsite.db import SLOWEST_QUERIES
from chatsite.metrics import get_registry, multiprocess_dir

# --- /metrics -----------------------------------------------------------------------


@lru_cache(maxsize=8)
def _allowed_networks(entries):
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


def client_may_scrape(request):
    """Return True for an allow-listed client address or a signed-in staff user.

    Only REMOTE_ADDR counts: X-Forwarded-For is whatever the client says.
    """
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        address = None
    if address is not None:
        if any(address in net for net in _allowed_networks(tuple(settings.METRICS_ALLOWED_IPS))):
            return True
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def metrics(request):
    """Prometheus text exposition of every metric (all workers in multiprocess mode)."""
    import prometheus_client

    if not settings.ENABLE_METRICS:
        raise Http404("Metrics are disabled (ENABLE_METRICS=false).")
    if not client_may_scrape(request):
        return HttpResponseForbidden(
            "Metrics are for allow-listed addresses (METRICS_ALLOWED_IPS) and staff.\n",
            content_type="text/plain",
        )
    body = prometheus_client.generate_latest(get_registry())
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)


# --- Reading histograms back ------------------------------------------------------


def histogram_quantile(q, buckets):
    """Estimate the q-quantile from cumulative buckets [(upper bound, count), ...].

    Linear interpolation inside the bucket, as Prometheus's histogram_quantile;
    None without observations.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def read_histograms(name, label_names):
    """Return {label values: (bucket list, count, sum)} of one histogram, all workers."""
    series = {}
    for family in get_registry().collect():
        if family.name != name:
            continue
        for sample in family.samples:
            key = tuple(sample.labels.get(label, "") for label in label_names)
            entry = series.setdefault(key, {"buckets": {}, "count": 0.0, "sum": 0.0})
            if sample.name.endswith("_bucket"):
                entry["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
    return {
        key: (sorted(entry["buckets"].items()), entry["count"], entry["sum"])
        for key, entry in series.items()
    }


def read_error_counts():
    """Return {(method, endpoint): count of 5xx responses}, all workers."""
    errors = {}
    for family in get_registry().collect():
        if family.name != "http_requests":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if sample.labels.get("status", "").startswith("5"):
                key = (sample.labels["method"], sample.labels["endpoint"])
                errors[key] = errors.get(key, 0.0) + sample.value
    return errors


def take_snapshot():
    return {
        "at": time.monotonic(),
        "http": read_histograms("http_request_duration_seconds", ("method", "endpoint")),
        "db": read_histograms("database_query_duration_seconds", ("query_type",)),
        "errors": read_error_counts(),
    }


def _minus(current, baseline):
    """Subtract a baseline histogram (bucket list, count, sum) from the current one."""
    if baseline is None:
        return current
    base_buckets = dict(baseline[0])
    buckets = [(upper, max(0.0, count - base_buckets.get(upper, 0.0)))
               for upper, count in current[0]]
    return buckets, max(0.0, current[1] - baseline[1]), max(0.0, current[2] - baseline[2])


class SnapshotHistory:
    """Earlier snapshots of this process's view, to turn totals into recent rates."""

    def __init__(self, keep_seconds=300.0, min_window=1.0):
        self.keep_seconds = keep_seconds
        self.min_window = min_window
        self._snapshots = deque(maxlen=64)
        self._lock = threading.Lock()

    def baseline_for(self, now):
        """Return the oldest snapshot kept that is at least min_window old, or None."""
        with self._lock:
            while self._snapshots and now - self._snapshots[0]["at"] > self.keep_seconds:
                self._snapshots.popleft()
            for snapshot in self._snapshots:
                if now - snapshot["at"] >= self.min_window:
                    return snapshot
        return None

    def add(self, snapshot):
        with self._lock:
            self._snapshots.append(snapshot)


SNAPSHOTS = SnapshotHistory()


def summarise(current, baseline, window):
    """Build the rows of both tables from a snapshot and an optional baseline."""
    def row(histogram, seconds):
        buckets, count, total = histogram
        p50, p95 = histogram_quantile(0.5, buckets), histogram_quantile(0.95, buckets)
        return {
            "count": int(count),
            "rate": count / seconds if seconds else None,
            "p50_ms": p50 * 1000 if p50 is not None else None,
            "p95_ms": p95 * 1000 if p95 is not None else None,
            "mean_ms": total / count * 1000 if count else None,
        }

    endpoints = []
    for key, histogram in current["http"].items():
        base = baseline["http"].get(key) if baseline else None
        entry = row(_minus(histogram, base), window)
        if not entry["count"]:
            continue
        errors = current["errors"].get(key, 0.0)
        if baseline:
            errors -= baseline["errors"].get(key, 0.0)
        entry.update(method=key[0], endpoint=key[1], errors=int(max(errors, 0)))
        endpoints.append(entry)
    endpoints.sort(key=lambda entry: entry["count"], reverse=True)

    queries = []
    for key, histogram in current["db"].items():
        base = baseline["db"].get(key) if baseline else None
        entry = row(_minus(histogram, base), window)
        if entry["count"]:
            entry["query_type"] = key[0]
            queries.append(entry)
    queries.sort(key=lambda entry: entry["count"], reverse=True)
    return endpoints, queries


def p95_chart(endpoints, limit=12, width=640, bar_height=18, label_width=300):
    """Return the geometry of a server-rendered SVG bar chart of p95 per endpoint."""
    rows = [entry for entry in endpoints if entry["p95_ms"] is not None][:limit]
    # The latency targets (docs/PERFORMANCE.md) as guides: 50 ms for simple GETs, 200 ms for complex ones.
    targets = (50.0, 200.0)
    top = max([entry["p95_ms"] for entry in rows] + [targets[0] * 1.2])
    scale = (width - label_width - 70) / top
    bars = [
        {
            "label": f"{entry['method']} {entry['endpoint']}"[:48],
            "y": index * (bar_height + 6) + 20,
            "text_y": index * (bar_height + 6) + 20 + bar_height - 5,
            "width": max(1.0, entry["p95_ms"] * scale),
            "value_x": label_width + max(1.0, entry["p95_ms"] * scale) + 6,
            "value": entry["p95_ms"],
            "over": entry["p95_ms"] > targets[0],
        }
        for index, entry in enumerate(rows)
    ]
    height = len(bars) * (bar_height + 6) + 30
    lines = [
        {"x": label_width + target * scale, "label": f"{target:g} ms"}
        for target in targets if target <= top
    ]
    return {"bars": bars, "lines": lines, "width": width, "height": height,
            "label_width": label_width, "bar_height": bar_height}


@staff_member_required
def performance(request):
    """Live p50/p95 per endpoint, request rate and the slowest recent queries.

    Statements are shown as shapes (chatsite.db.normalize_sql), never with their
    values: any staff user may open this page, and values are message text and
    session keys.
    """
    current = take_snapshot()
    baseline = SNAPSHOTS.baseline_for(current["at"])
    SNAPSHOTS.add(current)
    window = current["at"] - baseline["at"] if baseline else None
    endpoints, queries = summarise(current, baseline, window)
    try:
        refresh = min(max(int(request.GET.get("refresh", "0")), 0), 300)
    except ValueError:
        refresh = 0
    context = {
        **admin.site.each_context(request),
        "title": "Performance",
        "endpoints": endpoints,
        "queries": queries,
        "window_seconds": window,
        "total_rate": sum(entry["count"] for entry in endpoints) / window if window else None,
        "chart": p95_chart(endpoints),
        "slowest": SLOWEST_QUERIES.snapshot(),
        "slow_threshold_ms": settings.SLOW_QUERY_THRESHOLD * 1000,
        "multiprocess": bool(multiprocess_dir()),
        "refresh": refresh,
    }
    return TemplateResponse(request, "admin/performance.html", context)
