"""Slicing at the OKX simulator, through `apex run` and the real ccxt client, with IBKR's
simulator trading beside it: a BTC order over 5 % of the minute's volume reaches OKX as
children, each under its own client order id, summing to the parent and none over the
share; an AAPL order (no volume known) goes to IBKR whole; a kill between two runs stops
the child not sent yet, which never reaches OKX."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
from pathlib import Path

from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import running as okx_running
from dataflows import kill as switch
from helpers import APEX, KELLY_AND_EXECUTE, write_recording
from operators.orders import client_order_id
from operators.slicing import child_order_id
from test_exits import PRICES, signal
from test_gates import clean_env, no_traceback

T0 = 1_767_312_000_000
MIN = 60_000
CREDS = {"OKX_API_KEY": "k", "OKX_API_SECRET": "s", "OKX_API_PASSPHRASE": "p"}


def _pipeline(tmp: Path, okx_url: str, ibkr_port: int) -> Path:
    path = tmp / "pipeline.yaml"
    stages = KELLY_AND_EXECUTE + "      slicing: {max_volume_share: 0.05, window_s: 300}\n"
    path.write_text(f"state_dir: {tmp / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{okx_url}'}}\n"
                    f"  ibkr: {{kind: ibkr, port: {ibkr_port}, account: DU1234567}}\nstages:\n{stages}")
    return path


def _run(path: Path, rec: Path) -> None:
    res = subprocess.run([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress"],
                         capture_output=True, text=True, timeout=300, env=clean_env(APEX_ENV="paper", **CREDS))
    no_traceback(res)
    assert res.returncode == 0, res.stderr[-3000:]


def _market(start_ms: int, until_ms: int) -> list[dict]:
    """BTC trading 400 a minute (5 %: 20), a tick every 10 s."""
    return [{"stream": PRICES, "id": f"{ms}-0", "fields": {"symbol": "BTC-USDT", "price": "100.0",
                                                            "volume": str(400 / 6)}}
            for ms in range(start_ms, until_ms + 1, 10_000)]


def _opens(tmp: Path) -> list[tuple[str, str, str, float, str]]:
    db = sqlite3.connect(f"file:{tmp / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT venue, client_order_id, signal_id, quantity, status FROM executions"
                          " WHERE kind = 'open' ORDER BY intent_ms, signal_id").fetchall()
    finally:
        db.close()


def _sent(log: Path) -> list[tuple[str, float]]:
    return [(d["clOrdId"], float(d["sz"])) for d in map(json.loads, log.read_text().splitlines())]


def test_children_reach_okx_summing_to_the_parent_and_a_kill_stops_the_rest(tmp_path, monkeypatch):
    okx_log = tmp_path / "okx-orders.jsonl"
    with okx_running(prices={"BTC-USDT": 100.0}, orders_log=okx_log) as okx, \
            ibkr_running(prices={"AAPL": 230.0}, cash=1_000_000.0,
                         orders_log=tmp_path / "ibkr-orders.jsonl") as ib:
        path = _pipeline(tmp_path, okx.url, ib.port)
        # kelly 0.005 of 1 000 000: 50 BTC at 100 (over 20, 5 % of the minute's 400: 3 children,
        # due at T0, +100 s, +200 s), and 5 000 USD of AAPL at IBKR, sent whole
        first = (_market(T0 - MIN + 1, T0 - 1)
                 + [signal(1, T0, "BTC-USDT", "buy", 100.0, kelly=0.005, venue="okx"),
                    {**signal(2, T0, "AAPL", "buy", 230.0, kelly=0.005, venue="ibkr"), "id": f"{T0}-1"}]
                 + _market(T0 + 1, T0 + 110_000))
        _run(path, write_recording(tmp_path / "a.jsonl", first))
        parent = client_order_id("t1")
        kids = [child_order_id(parent, i) for i in range(3)]
        assert [cid for cid, _ in _sent(okx_log) if cid in kids] == kids[:2]  # each once, in turn
        opens = _opens(tmp_path)
        assert [(v, sid, st) for v, _, sid, _, st in opens] == [
            ("okx", "t1#0", "filled"), ("ibkr", "t2", "filled"), ("okx", "t1#1", "filled")]
        assert all(q <= 0.05 * 400 + 1e-9 for v, _, _, q, _ in opens if v == "okx")

        monkeypatch.setenv("APEX_ENV", "paper")
        for k, v in CREDS.items():
            monkeypatch.setenv(k, v)
        assert switch.kill(path, None, reason="test").ok  # no worker: the kill acts here
        _run(path, write_recording(tmp_path / "b.jsonl", _market(T0 + 110_001, T0 + 10 * MIN)))
        sent = _sent(okx_log)

    assert kids[2] not in [cid for cid, _ in sent]  # due after the kill: never reached OKX
    children = [q for cid, q in sent if cid in kids]
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    plan = db.execute("SELECT idx, quantity, fate FROM slices ORDER BY idx").fetchall()
    db.close()
    assert [f for _, _, f in plan] == ["send", "send", "halted"]
    assert math.isclose(sum(q for _, q, _ in plan), 50.0)  # the plan: the parent, whole
    assert math.isclose(sum(children), sum(q for _, q, f in plan if f == "send"), rel_tol=1e-9)
