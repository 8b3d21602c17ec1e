"""`apex run` on both simulators, through the real ccxt and ib_async clients: every fill the
ledger books reached its venue exactly once, the audit trail names each venue's order id,
and no credential appears anywhere Apex writes or prints."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sqlite3
import subprocess
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from connectors.sims import listening, prices_from_recording
from helpers import APEX, until

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recordings" / "argus-sample.jsonl"
PIPELINE = REPO / "docs" / "pipeline-venues.example.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def simulators(tmp_path):
    procs, ports = [], {}
    for venue in ("okx", "ibkr"):
        prices = tmp_path / f"{venue}-prices.json"
        prices.write_text(json.dumps(prices_from_recording(SAMPLE)[venue]))
        ports[venue] = port = _free_port()
        procs.append(subprocess.Popen(
            [APEX, "sim", venue, "--port", str(port), "--prices", str(prices),
             "--orders-log", str(tmp_path / f"{venue}-orders.jsonl")],
            stdout=open(tmp_path / f"{venue}-sim.log", "w"), stderr=subprocess.STDOUT))
        assert until(lambda: listening(port), 30), f"apex sim {venue} did not listen"
    yield ports
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def test_apex_run_on_both_simulators_sends_each_order_once_and_shows_no_secret(tmp_path, simulators):
    creds = {name: "cred" + secrets.token_hex(12) for name in ("OKX_API_KEY", "OKX_API_SECRET", "OKX_API_PASSPHRASE")}
    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "APEX_OKX_URL": f"http://127.0.0.1:{simulators['okx']}",
           "APEX_IBKR_PORT": str(simulators["ibkr"]), **creds}
    state = tmp_path / "state"
    run = subprocess.run([APEX, "run", str(PIPELINE), "--source", f"recording:{SAMPLE}", "--state-dir", str(state),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    db = sqlite3.connect(state / "ledger.sqlite")
    filled = db.execute("SELECT venue, client_order_id, order_id, signal_id FROM executions WHERE status = 'filled'"
                        ).fetchall()
    # OKX is spot: a sell signal is dropped before it is sent (spot_cannot_short), never refused there
    refused = db.execute("SELECT client_order_id, order_id FROM executions WHERE status = 'rejected'"
                         " AND venue = 'okx'").fetchall()
    spot = db.execute("SELECT COUNT(*) FROM decisions WHERE reason = 'spot_cannot_short'").fetchone()[0]
    sold = db.execute("SELECT COUNT(*) FROM executions WHERE venue = 'okx' AND kind = 'open' AND side = 'sell'"
                      ).fetchone()[0]
    # the simulators fill at each symbol's first reference price: a signal whose own reference lies
    # more than the band from it is an IOC the venue took and cancelled with nothing filled
    protected = db.execute("SELECT e.venue, e.client_order_id, d.outcome FROM executions e JOIN decisions d"
                           " ON d.signal_id = e.signal_id WHERE e.kind = 'open' AND e.status = 'cancelled'").fetchall()
    db.close()
    assert refused == [] and spot > 0 and sold == 0, (refused[:3], spot, sold)
    assert {outcome for _, _, outcome in protected} <= {"price_protection"}, protected[:3]
    for venue, key in (("okx", "clOrdId"), ("ibkr", "orderRef")):
        log = tmp_path / f"{venue}-orders.jsonl"
        sent = [json.loads(line)[key] for line in log.read_text().splitlines()]
        ours = {cid for v, cid, _, _ in filled if v == venue}
        assert ours, f"no fills at {venue}"
        assert max(Counter(sent).values()) == 1, f"an order reached {venue} twice"
        assert set(sent) == ours | {cid for v, cid, _ in protected if v == venue}, \
            f"{venue}'s orders and the ledger's fills and protected orders differ"

    trail = subprocess.run([APEX, "audit", "--state-dir", str(state), "--format", "jsonl"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert trail.returncode == 0, trail.stderr
    confirmed = {(json.loads(line)["signal_id"], json.loads(line)["details"].get("order_id"))
                 for line in trail.stdout.splitlines() if '"EXECUTION_CONFIRMED"' in line}
    for venue in ("okx", "ibkr"):
        _, _, order_id, sid = next(f for f in filled if f[0] == venue)
        assert (sid, order_id) in confirmed, f"the trail of {sid} does not name {venue}'s order id {order_id}"

    # a restart on the same state and venues: what the book holds is what the venues hold
    # (OKX keeps a buy's fee in the coin bought), so reconciliation lets it trade
    again = subprocess.run([APEX, "run", str(PIPELINE), "--source", f"recording:{SAMPLE}", "--state-dir",
                            str(state), "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "decided now 180 · already decided 2820" in again.stderr + again.stdout

    written = [run.stdout, run.stderr, trail.stdout, trail.stderr, again.stdout, again.stderr]
    written += [p.read_bytes().decode("latin-1") for p in [*state.rglob("*"), *tmp_path.glob("*.log")] if p.is_file()]
    for name, value in creds.items():
        assert not any(value in text for text in written), f"{name}'s value was written out"


def test_a_replay_stamps_every_venues_fills_on_the_recordings_clock(tmp_path, simulators):
    """One clock per run (issue 24, mistakes 6): IB's fills came stamped with the wall clock,
    OKX's with the recording's, and the report then spanned eleven months. Every fill now
    reads at its order's time, on the stream's clock."""
    lines = SAMPLE.read_text().splitlines()[:60]
    rec = tmp_path / "start.jsonl"
    rec.write_text("\n".join(lines) + "\n")
    first, last = (int(json.loads(line)["id"].split("-")[0]) for line in (lines[0], lines[-1]))
    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "APEX_OKX_URL": f"http://127.0.0.1:{simulators['okx']}",
           "APEX_IBKR_PORT": str(simulators["ibkr"]), "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
           "OKX_API_PASSPHRASE": "p"}
    state = tmp_path / "state"
    run = subprocess.run([APEX, "run", str(PIPELINE), "--source", f"recording:{rec}", "--state-dir", str(state),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    db = sqlite3.connect(state / "ledger.sqlite")
    filled = db.execute("SELECT venue, intent_ms, filled_ms FROM executions WHERE status = 'filled'").fetchall()
    fills = db.execute("SELECT f.ts_ms, e.intent_ms FROM fills f JOIN executions e USING (client_order_id)").fetchall()
    db.close()
    assert {venue for venue, _, _ in filled} == {"okx", "ibkr"}
    assert all(first <= ts == done <= last for _, ts, done in filled), filled
    assert all(f == order for f, order in fills), fills
    trail = subprocess.run([APEX, "audit", "--state-dir", str(state), "--format", "jsonl"], capture_output=True,
                           text=True, env=env, timeout=120)
    events = [json.loads(line) for line in trail.stdout.splitlines()]
    stamped = [(e["venue"], round(datetime.fromisoformat(e["ts"]).timestamp() * 1000)) for e in events
               if e["stage"] in ("EXECUTION_CONFIRMED", "TRADE_OPEN") and e["outcome"] in ("filled", "opened")]
    assert {venue for venue, _ in stamped} == {"okx", "ibkr"}
    assert all(first <= ts <= last for _, ts in stamped), stamped
