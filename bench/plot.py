"""Pictures of the benchmarks' own outputs, for docs/PERFORMANCE.md.

Two curves, each drawn from a file a committed command wrote:

* ``fanout``: a broadcast bench report (``bench/broadcast_bench.py --output
  FILE``, e.g. ``bench/results/fanout_500.md``): latency p50/p95/p99 and
  frames/s against the offered messages/s, one socket count per file.
* ``load``: locust's per-second history of a load run
  (``bench/loadtest_targets.py --csv PREFIX`` or ``manage.py loadtest --csv
  PREFIX`` writes ``PREFIX_stats_history.csv``): locust's events/s, users and
  p95 over the run. Its history keeps only the aggregate of every event type,
  so with sockets the rate counts WebSocket deliveries too (the targets table
  separates them).

    .venv/bin/python bench/plot.py fanout bench/results/fanout_500.md --out docs/img/fanout_500.svg
    .venv/bin/python bench/plot.py load bench/results/load_stats_history.csv --out docs/img/load.svg

matplotlib (requirements-dev.txt) draws them as SVG, without a display.
"""

import argparse
import csv
import sys
from pathlib import Path


def markdown_tables(text):
    """Every pipe table of a markdown text: a list of (header, rows), each row a
    dict keyed by the header's cells."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if (line.startswith("|") and i + 1 < len(lines)
                and set(lines[i + 1].replace("|", "").strip()) <= set("-: ")
                and lines[i + 1].strip().startswith("|")):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(text):
    """'1,234.5' or '100 (98)' -> 1234.5 or 100.0 (the first number)."""
    head = text.replace(",", "").split()[0] if text.strip() else ""
    return float(head)


def fanout_points(text):
    """(variant, [(msg/s, p50, p95, p99, frames/s)]) of a broadcast bench report's
    main table, in the order of its rows."""
    for header, rows in markdown_tables(text):
        if any(h.startswith("msg/s target") for h in header) and "p95 ms" in header:
            target = next(h for h in header if h.startswith("msg/s target"))
            by_variant = {}
            for row in rows:
                by_variant.setdefault(row["variant"], []).append((
                    _number(row[target]), _number(row["p50 ms"]), _number(row["p95 ms"]),
                    _number(row["p99 ms"]), _number(row["frames/s"])))
            return by_variant
    raise ValueError("no broadcast bench table (a 'msg/s target' and 'p95 ms' column) found")


def load_points(rows):
    """[(seconds since the first row, users, requests/s, p95 ms)] of the
    'Aggregated' rows of locust's stats history (a csv.DictReader)."""
    points, start = [], None
    for row in rows:
        if row.get("Name") != "Aggregated":
            continue
        stamp = int(row["Timestamp"])
        start = stamp if start is None else start
        p95 = row.get("95%", "N/A")
        points.append((stamp - start, int(float(row["User Count"])),
                       float(row["Requests/s"]), None if p95 in ("N/A", "") else float(p95)))
    return points


def _figure():
    """A figure with two y axes (left, right), drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(7, 4))
    return fig, left, left.twinx()


def _finish(fig, left, right, title, out, legend_at):
    """Title, one legend for both axes, grid; write the SVG and free the figure."""
    import matplotlib.pyplot as plt

    left.set_title(title)
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    left.legend(handles + more_handles, labels + more_labels, fontsize="small", loc=legend_at)
    left.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="svg")
    plt.close(fig)


def plot_fanout(by_variant, title, out):
    fig, latency, frames = _figure()
    for variant, points in by_variant.items():
        rates = [p[0] for p in points]
        for index, label, style in ((1, "p50", ":"), (2, "p95", "-"), (3, "p99", "--")):
            latency.plot(rates, [p[index] for p in points], style, marker="o",
                         label=f"{variant}: {label}")
        frames.plot(rates, [p[4] for p in points], "-.", color="grey", marker="s",
                    label=f"{variant}: frames/s")
    latency.set_xscale("log")
    rates = sorted({p[0] for points in by_variant.values() for p in points})
    latency.set_xticks(rates, [f"{r:g}" for r in rates])
    latency.minorticks_off()
    latency.set_xlabel("messages/s into the project")
    latency.set_ylabel("send → receive latency, ms")
    frames.set_ylabel("frames/s written (all sockets)")
    _finish(fig, latency, frames, title, out, "upper left")


def plot_load(points, title, out):
    fig, rate, p95 = _figure()
    seconds = [p[0] for p in points]
    rate.plot(seconds, [p[2] for p in points], label="events/s (all of locust's: HTTP and socket)")
    rate.plot(seconds, [p[1] for p in points], ":", label="users")
    p95.plot([p[0] for p in points if p[3] is not None],
             [p[3] for p in points if p[3] is not None], "--", color="tab:red",
             label="p95 of those events, ms (locust's recent window)")
    rate.set_xlabel("seconds into the run")
    rate.set_ylabel("events/s, users")
    p95.set_ylabel("p95, ms")
    _finish(fig, rate, p95, title, out, "lower right")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["fanout", "load"])
    parser.add_argument("source", type=Path, help="the bench report (.md) or locust history (.csv)")
    parser.add_argument("--out", type=Path, required=True, help="the SVG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        if args.kind == "fanout":
            points = fanout_points(args.source.read_text())
            plot_fanout(points, args.title or f"Fan-out ({args.source.name})", args.out)
        else:
            with args.source.open(newline="") as handle:
                points = load_points(csv.DictReader(handle))
            if not points:
                raise ValueError("no 'Aggregated' rows in this locust history")
            plot_load(points, args.title or f"Load run ({args.source.name})", args.out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"plot: {args.source}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
