"""`make bench`: every side-by-side benchmark, one after the other (about 20 minutes)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

for script, args in (
    ("bench/json_bench.py", []),
    ("bench/http_bench.py", ["--messages", "1000000"]),
    ("bench/list_bench.py", ["--out", "bench/results/list_bench.md"]),
    ("bench/broadcast_bench.py", []),
    ("bench/socket_memory.py", []),
    ("bench/socket_storm.py", ["--mode", "storm"]),
    ("bench/socket_storm.py", ["--mode", "idle", "--deadline", "450"]),
):
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([PY, str(ROOT / script), *args], cwd=ROOT, check=True)
