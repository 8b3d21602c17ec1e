"""Apex as the bench runs it: the real dataflow in a child process, plus what it needs to measure.

    python -m bench.worker run PIPELINE --source URL --state-dir DIR --acks FILE --summary FILE
                                  [--consumer C] [--stop-when-idle MS] [--count N] [--hold-file PATH]
    python -m bench.worker audit STATE_DIR        # prints the audit store's counts as JSON

``run`` is ``apex run`` with one observer added: after each batch's XACK the sink
calls it, and it appends "stream_id ack_us outcome read_us step_us" lines to
``--acks`` (wall-clock µs of the XACK and of the XREADGROUP that read the entry,
and the portfolio step's time for it; buffered, so memory stays flat in a soak). ``--hold-file`` puts a first
filter in front that waits while that file exists: the worker then sits on a
batch it has read and not acknowledged, to be SIGKILLed (the recovery scenario).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from operators.audit import Outcome


class AckLog:
    """The sink's observer: one line per entry, written right after its batch was acknowledged."""

    def __init__(self, path: Path):
        self.fh = path.open("w", buffering=1 << 16)
        self.outcomes: Counter = Counter()

    def observe(self, outcomes: list[Outcome], done_ns: int) -> None:
        now_ns = time.time_ns()
        t, offset = now_ns // 1000, now_ns - time.perf_counter_ns()  # perf_counter → wall clock
        lines = []
        for o in outcomes:
            if o.stream_id:
                read_us = (o.received_ns + offset) // 1000 if o.received_ns else 0
                lines.append(f"{o.stream_id} {t} {o.outcome} {read_us} {o.step_us:.0f}\n")
                self.outcomes[o.outcome] += 1
        self.fh.write("".join(lines))

    def close(self) -> None:
        self.fh.close()


def hold(signal, portfolio, path: str) -> bool:  # noqa: ARG001 - a filter's signature
    while os.path.exists(path):
        time.sleep(0.005)
    return True


def run(a: argparse.Namespace) -> None:
    from bytewax.testing import run_main

    from apex.gc_policy import quiet_gc
    from dataflows.apex import wire
    from dataflows.config import load
    from operators.filters import Filter

    p = load(a.pipeline)
    p.state_dir = Path(a.state_dir)
    overrides = {k: v for k, v in (("consumer", a.consumer), ("stop_when_idle_ms", a.stop_when_idle),
                                   ("count", a.count)) if v}
    if a.hold_file:
        p.filters.insert(0, Filter("hold", hold, {"path": a.hold_file}, True))
    acks = AckLog(Path(a.acks))
    # through the gates ``apex run`` passes (dataflows/gates.py): one worker per state dir, the
    # real venues checked against the book and their instrument lists read before the first
    # decision, on the connections the dataflow then trades on
    from dataflows.gates import Refused, admit

    try:
        admitted = admit(p, lambda line: print(line, file=sys.stderr))
    except Refused as e:
        sys.exit("; ".join(e.lines))
    shared = admitted.venues
    flow, wiring = wire(p, source=a.source, observer=acks, redis_overrides=overrides or None,
                        shared_venues=shared)
    atexit.register(admitted.release)
    # every live source stops reading (the signal stream, and the price stream where wired)
    stop = getattr(wiring, "stop", None) or getattr(wiring.source, "stop", None)
    if stop is not None:
        signal.signal(signal.SIGTERM, lambda *_: stop())
    quiet_gc()
    t0 = time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - t0
    acks.close()
    stats = {k: v for part in (wiring.source, wiring.acker) for k, v in getattr(part, "stats", {}).items()}
    Path(a.summary).write_text(json.dumps({"outcomes": dict(acks.outcomes), "seconds": seconds,
                                           "redis": stats}))


def audit(a: argparse.Namespace) -> None:
    """Counts in the embedded ClickHouse of a finished run (one process per directory, hence a child)."""
    from connectors.clickhouse import AuditStore

    store = AuditStore(f"chdb://{(Path(a.state_dir) / 'clickhouse').resolve()}")
    q = {"audit_entries": "SELECT count(DISTINCT stream_id) FROM audit_events",
         "audit_rows": "SELECT count() FROM audit_events FINAL",
         "executions": "SELECT count() FROM executions FINAL",
         "filter_drops": "SELECT count() FROM filter_drops FINAL"}
    print(json.dumps({k: int(store.query(sql)[0][0]) for k, sql in q.items()}))
    store.close()


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.worker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("pipeline")
    r.add_argument("--source", required=True)
    r.add_argument("--state-dir", required=True)
    r.add_argument("--acks", required=True)
    r.add_argument("--summary", required=True)
    r.add_argument("--consumer")
    r.add_argument("--stop-when-idle", type=int)
    r.add_argument("--count", type=int)
    r.add_argument("--hold-file")
    r.set_defaults(fn=run)
    c = sub.add_parser("audit")
    c.add_argument("state_dir")
    c.set_defaults(fn=audit)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main(sys.argv[1:])
