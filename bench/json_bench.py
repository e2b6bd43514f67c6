"""orjson vs the standard library on the history payload (100 messages), one run.

Usage: .venv/bin/python bench/json_bench.py
"""

import datetime
import json
import timeit
import uuid

import orjson


def payload(n=100):
    now = datetime.datetime.now(datetime.UTC)
    return {
        "items": [
            {
                "id": i, "project_id": 1, "seq": i, "changed_seq": i,
                "user": {"id": i % 7, "username": f"user{i % 7}"},
                "content": f"message number {i} with some ordinary chat text in it — ünïcödé",
                "created_at": now, "edited_at": None, "deleted": False,
                "client_msg_id": str(uuid.uuid4()),
            }
            for i in range(n)
        ],
        "has_more": True, "next_cursor": 1,
    }


def main():
    data = payload()
    stdlib = lambda: json.dumps(data, default=str).encode()  # noqa: E731
    fast = lambda: orjson.dumps(data)  # noqa: E731
    encoded = fast()
    rows = []
    for name, fn in (("json.dumps (stdlib)", stdlib), ("orjson.dumps", fast),
                     ("json.loads (stdlib)", lambda: json.loads(encoded)),
                     ("orjson.loads", lambda: orjson.loads(encoded))):
        number = 2000
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number
        rows.append((name, best * 1e6))
    print(f"100-message history payload, {len(encoded):,} bytes; best of 5 × 2,000 calls\n")
    print("| operation | µs per call |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    print(f"\nencode speed-up: {rows[0][1] / rows[1][1]:.1f}×, "
          f"decode speed-up: {rows[2][1] / rows[3][1]:.1f}×")


if __name__ == "__main__":
    main()
