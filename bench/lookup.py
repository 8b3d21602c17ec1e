"""The idempotency guard under load: lookups in a ledger holding ROWS decisions and executions.

    python -m bench.lookup populate LEDGER --rows N
    python -m bench.lookup lookup LEDGER --rows N --lookups M --impl apex|floor

``populate`` fills a real ``Ledger`` (its schema and indexes) with N decided
signals, each with its filled execution, in one transaction. ``lookup`` times
M calls, half of them for signals the ledger has (a duplicate) and half for
new ones (every fresh signal's path), interleaved at random:
``apex``: ``Ledger.decided(signal_id)`` and ``Ledger.execution(order)`` (by signal_id and kind);
``floor``: the bare ``SELECT 1 … WHERE key = ?`` on the same tables.
Prints JSON: per kind, per-call µs percentiles, calls/s and the loop's CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

from bench.proc import percentiles


def signal_id(i: int) -> str:
    return f"sig-{i:08d}-{(i * 2654435761) & 0xFFFFFF:06x}"


def populate(a: argparse.Namespace) -> None:
    from connectors.ledger import Ledger
    from operators.orders import client_order_id

    t0 = time.perf_counter()
    ledger = Ledger(a.ledger)
    db = ledger.db
    db.execute("PRAGMA cache_size=-1000000")  # 1 GB for the load: random-key index inserts, not spills
    base_ms = 1767261600000
    db.execute("BEGIN")
    db.execute("DROP INDEX executions_signal")  # rebuilt below in one sorted pass: same index, built faster
    sids = [signal_id(i) for i in range(a.rows)]
    db.executemany("INSERT INTO decisions VALUES (?, ?, 'filled', '', ?)",
                   ((sid, f"{base_ms + i}-0", base_ms + i) for i, sid in enumerate(sids)))
    rows = [(client_order_id(sid), i) for i, sid in enumerate(sids)]
    db.executemany(
        "INSERT INTO executions (client_order_id, signal_id, kind, venue, symbol, side, quantity, status,"
        " intent_ms, order_id, price, fee_usd, filled_ms, seq) VALUES (?, ?, 'open', 'okx', 'BTC-USDT',"
        " 'buy', 0.05, 'filled', ?, ?, 95000.0, 2.37, ?, ?)",
        ((coid, sids[i], base_ms + i, f"paper-{i:012x}", base_ms + i, i + 1) for coid, i in rows))
    db.execute("CREATE UNIQUE INDEX executions_signal ON executions(signal_id, kind)")
    db.execute("COMMIT")
    ledger.close()
    print(json.dumps({"rows": a.rows, "seconds": time.perf_counter() - t0,
                      "bytes": Path(a.ledger).stat().st_size}))


def lookup(a: argparse.Namespace) -> None:
    from connectors.ledger import Ledger
    from operators.orders import Order, client_order_id

    rng = random.Random(11)
    keys = [signal_id(rng.randrange(a.rows)) if rng.random() < 0.5 else f"sig-new-{i:08d}"
            for i in range(a.lookups)]
    orders = [Order(client_order_id(k), k, "open", "okx", "BTC-USDT", "buy", 0.05, 95000.0, 0) for k in keys]
    ledger = Ledger(a.ledger)
    if a.impl == "apex":
        calls = {"decided": (ledger.decided, keys), "execution": (ledger.execution, orders)}
    else:
        db = ledger.db

        def decided(k: str):
            return db.execute("SELECT 1 FROM decisions WHERE signal_id = ?", (k,)).fetchone()

        def execution(o):
            return db.execute("SELECT 1 FROM executions WHERE signal_id = ? AND kind = ?",
                              (o.signal_id, o.kind)).fetchone()

        calls = {"decided": (decided, keys), "execution": (execution, orders)}
    out = {}
    clock = time.perf_counter_ns
    for kind, (fn, ks) in calls.items():
        for k in ks[:1000]:  # warm SQLite's page cache the way a running worker's is
            fn(k)
        times = [0.0] * len(ks)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i, k in enumerate(ks):
            s = clock()
            fn(k)
            times[i] = (clock() - s) / 1000
        secs = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        out[kind] = {"latency_us": percentiles(times), "per_s": len(ks) / secs, "seconds": secs,
                     "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}
    ledger.close()
    print(json.dumps(out))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.lookup")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("populate")
    p.add_argument("ledger")
    p.add_argument("--rows", type=int, required=True)
    p.set_defaults(fn=populate)
    q = sub.add_parser("lookup")
    q.add_argument("ledger")
    q.add_argument("--rows", type=int, required=True)
    q.add_argument("--lookups", type=int, default=100_000)
    q.add_argument("--impl", choices=("apex", "floor"), required=True)
    q.set_defaults(fn=lookup)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main(sys.argv[1:])
