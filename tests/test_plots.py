"""bench/plot.py: the curves of docs/PERFORMANCE.md are drawn from the bench's
own outputs (parsed row by row), and bad input is an error message, not a
traceback."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "bench" / "plot.py")
plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot)

HISTORY = """Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
1765137600,50,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
1765137600,50,GET,/api/projects,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
1765137601,100,,Aggregated,150.5,0.000000,10,12,14,15,20,25,30,35,40,40,40
1765137603,150,,Aggregated,310.0,0.000000,12,14,16,18,22,31,40,45,50,50,50
"""


def test_the_fanout_report_gives_one_point_per_rate():
    points = plot.fanout_points((ROOT / "bench/results/fanout_500.md").read_text())
    assert list(points) == ["batched hub (ours)"]
    rows = points["batched hub (ours)"]
    assert [r[0] for r in rows] == [5, 10, 20, 50, 100, 200]
    # 100 msg/s: p50, p95, p99 and frames/s of that row.
    assert rows[4] == (100.0, 129.6, 195.8, 239.7, 14403.0)


def test_the_load_history_keeps_aggregated_rows_only(tmp_path):
    source = tmp_path / "run_stats_history.csv"
    source.write_text(HISTORY)
    import csv

    with source.open(newline="") as handle:
        points = plot.load_points(csv.DictReader(handle))
    assert points == [(0, 50, 0.0, None), (1, 100, 150.5, 25.0), (3, 150, 310.0, 31.0)]
    out = tmp_path / "load.svg"
    assert plot.main(["load", str(source), "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_a_fanout_svg_is_written(tmp_path):
    out = tmp_path / "fanout.svg"
    assert plot.main(["fanout", str(ROOT / "bench/results/fanout_500.md"), "--out", str(out)]) == 0
    assert "<svg" in out.read_text()


@pytest.mark.parametrize("kind, text", [
    ("fanout", "# no table here\n"),
    ("load", "Timestamp,User Count,Name,Requests/s,95%\n1,2,/api/x,3,4\n"),
])
def test_a_source_without_the_table_is_a_clear_error(tmp_path, capsys, kind, text):
    source = tmp_path / "source"
    source.write_text(text)
    assert plot.main([kind, str(source), "--out", str(tmp_path / "x.svg")]) == 2
    assert "plot:" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()
