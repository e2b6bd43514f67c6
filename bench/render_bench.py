"""Message rendering cost (chat.rendering.render): µs per message, median of N runs.

Three messages: a typical short one, a formatted one (emphasis, code, a
quote, a list, a link, mentions), and the worst 10,000-character input found
(chat/tests/test_rendering.py PATHOLOGICAL; docs/API.md "Formatting"). Each
run times a batch of renders; the table shows the median run. No services
needed.

Usage: .venv/bin/python bench/render_bench.py [--runs 15]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django  # noqa: E402

django.setup()

from chat.rendering import render  # noqa: E402

MENTIONS = {"alice": 2, "bob": 3}


def fill(unit, length=10_000):
    return (unit * (length // len(unit) + 1))[:length]


MESSAGES = {
    "short (plain, 40 chars)": ("sounds good, shipping it after lunch :)", 2000),
    "formatted (~300 chars)": (
        "@alice **heads up**: the deploy of `chat-api` is *done*.\n\n"
        "> the cache was cold for ~2 min\n\n"
        "- check https://example.com/dashboards/api?range=1h\n"
        "- ping @bob if ~~errors~~ alerts fire\n\n"
        "```\nmake serve WEB_WORKERS=8\n```",
        500,
    ),
    "worst case (10,000 chars: '<http://a' repeated)": (fill("<http://a"), 3),
    "plain 10,000 chars (short lines)": (fill("lorem ipsum dolor\n"), 10),
}


def median_us(content, batch, runs):
    render(content, MENTIONS)  # warm this thread's parser
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batch):
            render(content, MENTIONS)
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"chat.rendering.render, median of {args.runs} runs\n")
    print("| message | characters | µs per message |")
    print("|---|---:|---:|")
    for name, (content, batch) in MESSAGES.items():
        print(f"| {name} | {len(content):,} | {median_us(content, batch, args.runs):,.0f} |")


if __name__ == "__main__":
    main()
