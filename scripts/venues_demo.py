"""Apex against both venue simulators, end to end, on this machine alone (`make demo-venues`).

Starts a private redis-server, `apex sim okx` and `apex sim ibkr` on free loopback ports,
and `apex run docs/pipeline-venues.example.yaml` reading Redis; publishes the sample
recording as Argus would; waits until every entry is acknowledged; stops Apex gracefully;
then checks what really reached each venue against the ledger (each simulator's order log
holds exactly one order per executed signal, none twice), counts every refusal by its
reason (Apex's own drops, each named, and the venues' refusals: no fault is armed, so a
venue refusing an order is one Apex should have foreseen, and fails the demo) and shows one
audit trail per venue with that venue's order id. Exit 0 only if every check holds.

    python scripts/venues_demo.py [--dir .apex-venues-demo] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from connectors.sims import listening, prices_from_recording, stop_all

REPO = Path(__file__).resolve().parents[1]
APEX = str(Path(sys.executable).with_name("apex"))
SAMPLE = REPO / "recordings" / "argus-sample.jsonl"
PIPELINE = REPO / "docs" / "pipeline-venues.example.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with code {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    sys.exit(f"{what} is not listening on {port} after {timeout:.0f} s")


def status(redis_url: str) -> dict:
    out = subprocess.run([APEX, "status", "--redis", redis_url, "--pipeline", str(PIPELINE), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def executed(ledger: Path) -> dict[str, list[tuple[str, str]]]:
    """(client order id, venue order id) of every order the ledger has filled, by market."""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT venue, client_order_id, order_id FROM executions WHERE status = 'filled'")
        out: dict[str, list[tuple[str, str]]] = {}
        for venue, cid, oid in rows:
            out.setdefault(venue, []).append((cid, oid))
        return out
    finally:
        db.close()


def protected(ledger: Path) -> dict[str, set[str]]:
    """Client order ids of the IOCs a venue cancelled with nothing filled, its price beyond their
    band (docs/price-protection.md: the simulators fill at each symbol's first reference price,
    which a later signal's reference may lie far from), by market."""
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT e.venue, e.client_order_id FROM executions e JOIN decisions d"
                          " ON d.signal_id = e.signal_id WHERE d.outcome = 'price_protection'")
        out: dict[str, set[str]] = {}
        for venue, cid in rows:
            out.setdefault(venue, set()).add(cid)
        return out
    finally:
        db.close()


def logged(path: Path, key: str) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)[key] for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=REPO / ".apex-venues-demo")
    ap.add_argument("--latency-ms", default="0", help="each simulator's added latency per request")
    a = ap.parse_args()
    work = a.dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for venue, table in prices_from_recording(SAMPLE).items():
        (work / f"{venue}-prices.json").write_text(json.dumps(table))
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, stdout=open(work / log, "w"), stderr=subprocess.STDOUT, **kw)
        procs.append(p)
        return p

    try:
        rport, oport, iport = free_port(), free_port(), free_port()
        redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                       "--dir", str(work)], "redis.log")
        # throwaway credentials, made up for this run only: the OKX simulator checks every
        # request's signature against them
        creds = {k: secrets.token_hex(8) for k in ("OKX_API_KEY", "OKX_API_SECRET", "OKX_API_PASSPHRASE")}
        okx = start([APEX, "sim", "okx", "--port", str(oport), "--latency-ms", a.latency_ms, "--prices",
                     str(work / "okx-prices.json"), "--orders-log", str(work / "okx-orders.jsonl")], "okx-sim.log",
                    env=os.environ | creds)
        ibkr = start([APEX, "sim", "ibkr", "--port", str(iport), "--latency-ms", a.latency_ms, "--prices",
                      str(work / "ibkr-prices.json"), "--orders-log", str(work / "ibkr-orders.jsonl")], "ibkr-sim.log")
        for port, proc, what in ((rport, redis, "redis-server"), (oport, okx, "apex sim okx"),
                                 (iport, ibkr, "apex sim ibkr")):
            wait_for_port(port, proc, what)
        redis_url = f"redis://127.0.0.1:{rport}/0"
        env = os.environ | {"APEX_ENV": "paper", "APEX_OKX_URL": f"http://127.0.0.1:{oport}",
                            "APEX_IBKR_PORT": str(iport), "APEX_STATE_DIR": str(work / "state"), **creds}
        print(f"simulators: okx http://127.0.0.1:{oport}, ibkr 127.0.0.1:{iport}; redis {redis_url}", flush=True)
        apex = start([APEX, "run", str(PIPELINE), "--source", redis_url, "--no-progress"], "apex-run.log", env=env)
        deadline = time.monotonic() + 60
        while not status(redis_url)["group_exists"]:  # the consumer group is made at start
            if apex.poll() is not None or time.monotonic() > deadline:
                print((work / "apex-run.log").read_text()[-3000:])
                sys.exit("apex run did not start")
            time.sleep(0.1)
        subprocess.run([APEX, "publish", str(SAMPLE), "--rate", "0", "--redis", redis_url], check=True)
        deadline = time.monotonic() + 600
        while True:  # every entry acknowledged, and every order's fate in the ledger
            s = status(redis_url)
            if s["lag"] == 0 and s["pending"] == 0 and live_orders(work / "state" / "ledger.sqlite") == 0:
                break
            if apex.poll() is not None or time.monotonic() > deadline:
                print((work / "apex-run.log").read_text()[-3000:])
                sys.exit(f"apex run stopped before every entry was acknowledged: {s}")
            time.sleep(0.2)
        apex.send_signal(signal.SIGTERM)
        apex.wait(120)
        print((work / "apex-run.log").read_text())
        return check(work, env)
    finally:
        stop_all(procs)


def live_orders(path: Path) -> int:
    """Orders whose fate has not come yet (an entry is acknowledged once its order's intent
    is durable, before the venue answers)."""
    if not path.exists():
        return 1
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM executions WHERE status IN"
                          " ('intent', 'submitted', 'accepted', 'partially_filled', 'unknown')").fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return 1
    finally:
        db.close()


def refusals(state: Path) -> tuple[Counter, Counter]:
    """What was not traded, by reason: the entries Apex itself refused at receipt (invalid,
    duplicate: by kind, from the audit store), dropped or let expire (each with its named
    reason), and the orders a venue refused ((market, kind, reason) each)."""
    from connectors.clickhouse import AuditStore

    store = AuditStore(f"chdb://{state / 'clickhouse'}")
    try:
        received = store.query("SELECT outcome, reason, count() FROM audit_events WHERE stage = 'SIGNAL_RECEIVED'"
                               " AND outcome IN ('invalid', 'duplicate') GROUP BY outcome, reason")
    finally:
        store.close()
    drops: Counter = Counter()
    for outcome, reason, n in received:  # the kind of each: "schema", "not_json", "signal_id decided"
        drops[(outcome, reason.split(":")[0] if outcome == "invalid" else "signal_id already decided")] += n
    db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        drops.update({(outcome, reason or "(none)"): n for outcome, reason, n in db.execute(
            "SELECT outcome, reason, COUNT(*) FROM decisions WHERE outcome IN ('dropped', 'expired')"
            " GROUP BY 1, 2")})
        # a refused order's row keeps the venue's reason where a filled one keeps its order id
        refused = Counter({(venue, kind, reason or "(none)"): n for venue, kind, reason, n in db.execute(
            "SELECT venue, kind, order_id, COUNT(*) FROM executions WHERE status = 'rejected' GROUP BY 1, 2, 3")})
        return drops, refused
    finally:
        db.close()


def check(work: Path, env: dict) -> int:
    ledger = executed(work / "state" / "ledger.sqlite")
    cut = protected(work / "state" / "ledger.sqlite")
    failures = []
    drops, refused = refusals(work / "state")
    print("not traded, by reason (Apex's own, each named):", flush=True)
    for (outcome, reason), n in sorted(drops.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {outcome}: {reason}", flush=True)
    print(f"refused by a venue: {sum(refused.values())}", flush=True)
    for (market, kind, reason), n in sorted(refused.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {market} {kind}: {reason}", flush=True)
    if refused:
        failures.append(f"{sum(refused.values())} order(s) refused by a venue with no fault armed: "
                        "a refusal Apex should have foreseen")
    for market, log, key in (("okx", "okx-orders.jsonl", "clOrdId"), ("ibkr", "ibkr-orders.jsonl", "orderRef")):
        sent = logged(work / log, key)
        twice = [cid for cid, n in Counter(sent).items() if n > 1]
        ours = {cid for cid, _ in ledger.get(market, [])}
        print(f"{market}: {len(ours)} orders filled in the ledger, {len(cut.get(market, ()))} cancelled for"
              f" price protection, {len(sent)} orders in the simulator's log, {len(twice)} sent twice", flush=True)
        if not ours:
            failures.append(f"{market}: no fills")
        if twice:
            failures.append(f"{market}: {len(twice)} client order ids reached the venue twice")
        ours |= cut.get(market, set())
        if set(sent) != ours:
            failures.append(f"{market}: the simulator's orders and the ledger's differ "
                            f"({len(set(sent) - ours)} only at the venue, {len(ours - set(sent))} only in the ledger)")
    for market in ("okx", "ibkr"):
        if ledger.get(market):
            cid, order_id = ledger[market][0]
            db = sqlite3.connect(f"file:{work / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)
            sid = db.execute("SELECT signal_id FROM executions WHERE client_order_id = ?", (cid,)).fetchone()[0]
            db.close()
            show = [APEX, "audit", "--pipeline", str(PIPELINE), sid]
            print(subprocess.run(show, capture_output=True, text=True, env=env).stdout, flush=True)
            trail = subprocess.run(show + ["--format", "jsonl"], capture_output=True, text=True, env=env).stdout
            if f'"order_id": "{order_id}"' not in trail:
                failures.append(f"{market}: the audit trail of {sid} does not name the venue's order id {order_id}")
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    print("demo: " + ("every check held" if not failures else f"{len(failures)} check(s) failed"), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
