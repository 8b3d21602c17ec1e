"""The floor: the least a consumer of the signal stream can do, to measure Apex against.

    python -m bench.floor consume URL STREAM GROUP CONSUMER --acks FILE [--count 10] [--block-ms 2]
                                       [--stop-when-idle MS] [--hold-file PATH]
    python -m bench.floor replay RECORDING

``consume``: XREADGROUP (its own pending entries first, then new ones) → json.loads of
each payload → XACK of the batch, and nothing else; same redis-py client settings,
COUNT and BLOCK as Apex's source. It appends "stream_id ack_wall_us" lines to the
acks file. ``--hold-file``: wait after reading while that file exists (to be killed
with entries pending, for the recovery scenario). ``replay``: read a recording and
json.loads each line and its payload; prints {"entries", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import redis


def consume(a: argparse.Namespace) -> None:
    r = redis.Redis.from_url(a.url, decode_responses=True, encoding_errors="replace")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    history: str | None = "0"  # own pending first, as Apex's source does
    idle_since = time.monotonic()
    n = 0
    with open(a.acks, "w", buffering=1 << 16) as log:
        while not stopping:
            res = r.xreadgroup(a.group, a.consumer, {a.stream: history or ">"}, count=a.count,
                               block=None if history else a.block_ms)
            got = res[0][1] if res else []
            if history is not None:
                if not got:
                    history = None
                    continue
                history = got[-1][0]
            if not got:
                if a.stop_when_idle and (time.monotonic() - idle_since) * 1000 >= a.stop_when_idle:
                    break
                continue
            for _, fields in got:
                try:
                    json.loads(fields.get("payload") or "null")
                except ValueError:
                    pass
            while a.hold_file and os.path.exists(a.hold_file):
                time.sleep(0.005)
            ids = [sid for sid, _ in got]
            r.xack(a.stream, a.group, *ids)
            t = time.time_ns() // 1000
            log.write("".join(f"{sid} {t}\n" for sid in ids))
            n += len(ids)
            idle_since = time.monotonic()
    print(json.dumps({"entries": n}))


def replay(a: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    n = 0
    with open(a.recording, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                json.loads(rec.get("fields", {}).get("payload") or "null")
            except ValueError:
                pass
            n += 1
    print(json.dumps({"entries": n, "seconds": time.perf_counter() - t0}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.floor")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("consume")
    for name in ("url", "stream", "group", "consumer"):
        c.add_argument(name)
    c.add_argument("--acks", required=True)
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--block-ms", type=int, default=2)
    c.add_argument("--stop-when-idle", type=int, default=0, metavar="MS")
    c.add_argument("--hold-file")
    c.set_defaults(fn=consume)
    p = sub.add_parser("replay")
    p.add_argument("recording")
    p.set_defaults(fn=replay)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main(sys.argv[1:])
