"""Time the garbage collector takes in one process serving the API mix.

Usage:
    .venv/bin/python bench/gc_probe.py [--rounds 3000] [--gc off|freeze|THRESHOLDS]

On the embedded default (SQLite, local cache), through Django's test client:
per round a first history page, a project list and, every third round, a send
(~7,000 requests for 3,000 rounds). Prints the run's time, the collector's share
of it (gc.callbacks) and the collections per generation. `--gc off` is
Python's defaults; `freeze` adds gc.freeze() after start-up; `10000,10,100`
freezes and sets those thresholds (what chatsite.runtime.tune_gc does with
GC_THRESHOLD). A throwaway SQLite database, created and deleted here.
"""

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--gc", default="off", help="off, freeze or gen0,gen1,gen2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("DATABASE_URL", "REDIS_URL", "REQUIRE_SERVICES"):
            os.environ.pop(name, None)
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/probe.sqlite3"
        os.environ["GC_THRESHOLD"] = "off"
        # One user sends every round's message: the per-user send limit is not measured.
        os.environ["SEND_RATE_PER_USER"] = "0"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
        import django

        django.setup()
        from django.core.management import call_command
        from django.test import Client

        from accounts.models import User
        from projects.actions import do_create_project

        call_command("migrate", verbosity=0)
        user = User.objects.create_user("probe", email="probe@example.com",
                                        password="probe-pass-123")
        project = do_create_project(user, name="probe")
        client = Client()
        client.force_login(user)
        if args.gc != "off":
            gc.collect()
            gc.freeze()
            if args.gc != "freeze":
                gc.set_threshold(*(int(x) for x in args.gc.split(",")))
        spent, started, counts = [0.0], [0.0], [0, 0, 0]

        def on_gc(phase, info):
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                spent[0] += time.perf_counter() - started[0]
                counts[info["generation"]] += 1

        gc.callbacks.append(on_gc)
        began = time.perf_counter()
        for i in range(args.rounds):
            client.get(f"/api/projects/{project.pk}/messages")
            client.get("/api/projects")
            if i % 3 == 0:
                client.post("/api/messages", {"project_id": project.pk, "content": f"m{i}"},
                            content_type="application/json")
        total = time.perf_counter() - began
        gc.callbacks.remove(on_gc)
        print(f"--gc {args.gc}: {total:.2f} s, collector {spent[0] * 1000:.0f} ms "
              f"({100 * spent[0] / total:.1f} %), collections per generation {counts}")


if __name__ == "__main__":
    main()
