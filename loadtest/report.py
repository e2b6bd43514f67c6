"""The load test's result and the targets tables (docs/PERFORMANCE.md, "The targets, where we stand") printed from it.

The locustfile builds the result from its counters and locust's statistics
(`build_result`) and writes it (`write_result`); `manage.py loadtest` reads it
(`read_result`) and prints the tables (`format_report`).

No Django here: the locustfile imports this module in locust's own process.
"""

import json
import time
from dataclasses import dataclass

# Statistics names of the requests the latency targets are measured on.
DELIVERY = "WebSocket delivery"
HISTORY = "complex GET: history"
PROJECT_LIST = "simple GET: projects"
POST_MESSAGE = "POST: message"

# key in the result's endpoints -> locust's statistics entry (name, request type)
ENDPOINTS = {
    "simple_get": (PROJECT_LIST, "GET"),
    "complex_get": (HISTORY, "GET"),
    "post": (POST_MESSAGE, "POST"),
    "websocket": (DELIVERY, "WS"),
}

# What the guide's scenario (`--scenario guide`) runs, and what its tables say
# where a target needs sockets it does not hold.
GUIDE_SCENARIO = ("the guide's locustfile: wait 1-3 s, then GET /api/messages?page=1&per_page=50,"
                  " GET /api/projects or POST /api/messages, 3:2:1")
NO_SOCKETS = "no sockets in this scenario"

# (label, key in the result's endpoints, p95 target in ms)
LATENCY_TARGETS = [
    ("Simple GET", "simple_get", 50),
    ("Complex GET", "complex_get", 200),
    ("POST", "post", 100),
    ("WebSocket", "websocket", 50),
]


# -- building the result (in the locust process) -----------------------------


def percentile(ordered, fraction):
    """Return the value at fraction (0..1) of a sorted list, rounded to 0.1; None if empty."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 1)


def generator_summary(lags_ms, gc_pauses_ms):
    """Summarize the generator's event loop lags and full garbage-collection pauses."""
    lags = sorted(lags_ms)
    return {
        "loop_lag_p50_ms": percentile(lags, 0.5),
        "loop_lag_p95_ms": percentile(lags, 0.95),
        "loop_lag_p99_ms": percentile(lags, 0.99),
        "loop_lag_max_ms": percentile(lags, 1.0),
        "gc_full_collections": len(gc_pauses_ms),
        "gc_full_pause_max_ms": round(max(gc_pauses_ms), 1) if gc_pauses_ms else 0,
    }


def entry_summary(entry):
    """Summarize one locust statistics entry (None: never requested): count and percentiles."""
    if entry is None or entry.num_requests == 0:
        return {"count": 0, "failures": entry.num_failures if entry else 0}
    return {
        "count": entry.num_requests,
        "failures": entry.num_failures,
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "avg_ms": round(entry.avg_response_time, 2),
        "max_ms": round(entry.max_response_time or 0, 2),
    }


def build_result(run, stats, *, run_id, generator, scenario="targets"):
    """Return the run's result: the summary, the four endpoints, every entry and the errors.

    run is the locustfile's Run (its counters and times), stats locust's
    statistics, generator the generator_summary of the run, scenario "targets"
    or "guide" (the guide's locustfile: HTTP only, no sockets).
    """
    end = run.stopped_at or time.time()
    start = run.steady_at if run.steady_at is not None else (run.started_at or end)
    window = end - start
    if window < 1.0 and run.started_at is not None:  # too short to measure: the whole run
        start, window = run.started_at, end - run.started_at
        requests_in_window = run.http_requests
    else:
        requests_in_window = (
            run.window_requests if run.stopped_at else (run.http_requests - run.steady_requests)
        )
    messages_in_window = sum(1 for t in run.delivered.values() if start <= t <= end)
    entries = {}
    for (name, method), entry in stats.entries.items():
        entries[f"{method} {name}"] = entry_summary(entry)
    status_codes = {}
    for error in stats.errors.values():
        status_codes[str(error.error)[:200]] = error.occurrences
    lost = run.counts["lost_gaps"] + run.counts["lost_tail"]
    summary = {
        "run_id": run_id,
        "scenario": scenario,
        "project_id": run.project_id
        if run.project_id is not None
        else (next(iter(run.project_ids)) if len(run.project_ids) == 1 else None),
        "projects": len(run.project_ids),
        "project_ids": sorted(run.project_ids),
        "window_seconds": round(max(window, 0.0), 3),
        "http_requests": run.http_requests,
        "http_requests_in_window": requests_in_window,
        "requests_per_second": round(requests_in_window / window, 2) if window > 0 else 0.0,
        "sockets_open_at_stop": run.sockets_at_stop,
        "sockets_peak": run.sockets_peak,
        # /ws/me/ (LOADTEST_ME_SOCKETS): held by how many of the users that opened one.
        "me_sockets": run.me_enabled,
        "me_sockets_users": len(run.all_me_sockets),
        "me_sockets_open_at_stop": run.me_sockets_at_stop,
        "me_sockets_peak": run.me_sockets_peak,
        "me_close_codes": dict(run.me_close_codes),
        "messages_sent": run.counts["ws_sent"] + run.counts["http_sent"],
        "messages_delivered": len(run.delivered),
        "messages_delivered_in_window": messages_in_window,
        "messages_per_second": round(messages_in_window / window, 2) if window > 0 else 0.0,
        "deliveries_per_second": round(run.counts["deliveries"] / window, 2) if window > 0 else 0.0,
        "max_seq": sum(run.max_seq.values()),
        "max_seq_by_project": {str(k): v for k, v in sorted(run.max_seq.items())},
        "drain_seconds": round(run.drain_seconds, 2),
        "lost": lost,
        "duplicated": run.counts["duplicated"],
        "out_of_order": run.counts["out_of_order"],
        **run.counts,
        "generator": generator,
        "send_errors": dict(run.send_errors),
        "close_codes": dict(run.close_codes),
        "total_failures": stats.total.num_failures,
    }
    return {
        "summary": summary,
        "endpoints": {
            key: entry_summary(stats.entries.get(name_and_type))
            for key, name_and_type in ENDPOINTS.items()
        },
        "entries": entries,
        "errors": status_codes,
    }


def write_result(result, path):
    """Print the summary as a LOADTEST_RESULT line; write the whole result to path, if any."""
    print("LOADTEST_RESULT " + json.dumps(result["summary"]), flush=True)
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)


def read_result(path):
    """Read a result write_result wrote; raise OSError or ValueError if there is none."""
    with open(path) as f:
        return json.load(f)


# -- the targets tables (in manage.py loadtest) -------------------------------


@dataclass(frozen=True)
class Report:
    """The printed report: its lines, the problems for one warning line, the failed targets."""

    lines: list[str]
    problems: list[str]
    failed: list[str]


def fmt_ms(value):
    """Write a latency: 12.5 -> "12.5 ms"."""
    return f"{value:g} ms"


def fmt_number(value):
    """Write a count with thousands separators, a rate with one decimal as well."""
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"


def format_table(header, rows):
    """Return the lines of a markdown table, every column as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return [
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(row) for row in rows),
    ]


def format_report(result, steady=False):
    """Return the targets tables of a result with PASS/FAIL, the counters and the problems."""
    summary, endpoints = result["summary"], result["endpoints"]
    # The guide's scenario holds no sockets: its rows of socket measures say so.
    guide = summary.get("scenario") == "guide"
    failed = []

    def status(ok, label):
        if not ok:
            failed.append(label)
        return "PASS" if ok else "FAIL"

    def not_measured(label, target):
        return (label, target, NO_SOCKETS, "n/a")

    rows = []
    for label, key, target in LATENCY_TARGETS:
        entry = endpoints.get(key) or {}
        if guide and key == "websocket":
            rows.append(not_measured(label, f"< {target} ms"))
        elif entry.get("count"):
            p95 = entry["p95_ms"]
            rows.append((label, f"< {target} ms", fmt_ms(p95), status(p95 < target, label)))
        else:
            rows.append((label, f"< {target} ms", "no samples", status(False, label)))
    lines = format_table(("Endpoint type", "Target (p95)", "Measured", "Status"), rows)

    def rate_row(label, target, rate, samples):
        measured = fmt_number(rate) if samples else "no samples"
        return (label, f"> {target}", measured, status(samples > 0 and rate > target, label))

    def zero_row(label, key):
        return (label, "0", fmt_number(summary[key]), status(summary[key] == 0, label))

    open_sockets, peak = summary["sockets_open_at_stop"], summary["sockets_peak"]
    sockets = f"{open_sockets:,} (peak {peak:,})"
    rows = [
        rate_row(
            "Requests/sec",
            1000,
            summary["requests_per_second"],
            summary["http_requests_in_window"],
        ),
    ]
    if guide:
        rows += [
            not_measured("Concurrent users", "> 500"),
            not_measured("Messages/sec", "> 100"),
            *(not_measured(label, "0") for label in (
                "Lost messages", "Duplicated messages", "Out-of-order messages")),
        ]
    else:
        rows += [
            ("Concurrent users", "> 500", sockets,
             status(open_sockets > 500, "Concurrent users")),
            rate_row(
                "Messages/sec", 100, summary["messages_per_second"],
                summary["messages_delivered"],
            ),
            zero_row("Lost messages", "lost"),
            zero_row("Duplicated messages", "duplicated"),
            zero_row("Out-of-order messages", "out_of_order"),
        ]
    lines.append("")
    lines += format_table(("Metric", "Target", "Measured", "Status"), rows)
    lines.append(f"projects: {summary.get('projects', 1)}")
    if guide:
        lines.append(f"scenario: guide ({GUIDE_SCENARIO})")

    counts = ", ".join(
        f"{label} {endpoints[key].get('count', 0):,}" for label, key, _ in LATENCY_TARGETS
    )
    lines.append("")
    lines.append(
        f"Measured over {summary['window_seconds']:.1f} s with all users running "
        f"(rates), latencies over "
        f"{'the same (steady state)' if steady else 'the whole run'}. "
        f"Samples: {counts}."
    )
    if guide:
        lines.append(
            f"Messages: {summary['http_sent']:,} sent over HTTP; the guide's users hold no "
            "socket, so nothing is delivered or timed on one."
        )
        return Report(lines=lines + generator_lines(summary), problems=list_problems(result),
                      failed=failed)
    lines.append(
        f"Messages: {summary['messages_sent']:,} sent ({summary['http_sent']:,} over HTTP, "
        f"{summary['ws_sent']:,} over sockets, {summary['ws_acked']:,} acknowledged), "
        f"{summary['messages_delivered']:,} delivered, {summary['deliveries']:,} deliveries "
        f"({summary['deliveries_per_second']:,.1f}/s)."
    )
    lines.append(
        f"Sockets: {summary['socket_connects']:,} connects, "
        f"{summary['socket_connect_failures']:,} failed, "
        f"{summary['socket_disconnects']:,} dropped by the server "
        f"({summary['slow_client_closes']:,} as slow readers, close codes "
        f"{summary['close_codes'] or '{}'}), {summary['socket_reconnects']:,} reconnected, "
        f"{summary['sockets_behind_at_end']:,} still behind after the "
        f"{summary['drain_seconds']:.1f} s drain."
    )
    if summary.get("me_sockets"):
        lines.append(format_me_sockets(summary))
    lines += generator_lines(summary)
    return Report(lines=lines, problems=list_problems(result), failed=failed)


def generator_lines(summary):
    """The line on the generator's own event loop lag and pauses (none without samples)."""
    generator = summary.get("generator") or {}
    if generator.get("loop_lag_p95_ms") is None:
        return []
    return [
        f"Generator (this locust process): event loop lag p50 "
        f"{generator['loop_lag_p50_ms']} ms, p95 {generator['loop_lag_p95_ms']} ms, "
        f"p99 {generator['loop_lag_p99_ms']} ms, max {generator['loop_lag_max_ms']} ms; "
        f"{generator['gc_full_collections']} full garbage collections (longest "
        f"{generator['gc_full_pause_max_ms']} ms). Every latency above includes the "
        "generator's own lag."
    ]


def format_me_sockets(summary):
    """The /ws/me/ line: whether every user held the sidebar's socket, and what it received."""
    return (
        f"/ws/me/: held by {summary['me_sockets_open_at_stop']:,} of "
        f"{summary['me_sockets_users']:,} users at the stop (peak "
        f"{summary['me_sockets_peak']:,}); {summary['me_socket_connects']:,} connects, "
        f"{summary['me_socket_connect_failures']:,} failed, "
        f"{summary['me_socket_closes']:,} closed by the server (close codes "
        f"{summary['me_close_codes'] or '{}'}), {summary['me_socket_reconnects']:,} "
        f"reconnected; {summary['me_frames']:,} frames received: "
        f"{summary['me_hello']:,} hello, {summary['me_project_updates']:,} project_update, "
        f"{summary['me_memberships']:,} membership, {summary['me_other_frames']:,} other."
    )


# (summary key, what a nonzero count of it says), in the order they are listed
COUNTED_PROBLEMS = [
    ("login_failures", "{} sign-in failures"),
    ("project_discovery_failures", "{} users found no project of theirs (see --projects)"),
    ("resyncs", "{} resync_required (gap over the replay limit)"),
    (
        "hello_seq_zero",
        "{} hello frames with seq 0 (the project's number is never 0 once it has messages)",
    ),
    (
        "duplicated_at_join",
        "{} of the duplicates were at or below the socket's after= when it (re)connected",
    ),
    ("http_post_retries", "{} POSTs retried after no answer (same client_msg_id)"),
    ("me_socket_connect_failures", "{} /ws/me/ connects failed"),
    ("me_socket_closes", "{} /ws/me/ sockets closed by the server"),
    ("me_sockets_closed_before_stop", "{} /ws/me/ sockets closed before the stop"),
    (
        "ws_unacked",
        "{} socket sends never acknowledged (server backlog at the end, or a dropped socket)",
    ),
]


def list_problems(result):
    """Return what went wrong besides the targets (failures, errors, resyncs), one item each."""
    summary = result["summary"]
    problems = []
    if summary["total_failures"]:
        problems.append(
            f"{summary['total_failures']:,} failed requests: "
            + "; ".join(f"{n}x {e}" for e, n in result["errors"].items())
        )
    if summary["send_errors"]:
        problems.append(f"socket send errors {summary['send_errors']}")
    problems += [text.format(summary[key]) for key, text in COUNTED_PROBLEMS if summary.get(key)]
    if summary.get("me_sockets") and (
        summary["me_sockets_open_at_stop"] < summary["me_sockets_users"]
    ):
        problems.append(
            f"only {summary['me_sockets_open_at_stop']:,} of {summary['me_sockets_users']:,} "
            "users held /ws/me/ at the stop"
        )
    return problems
