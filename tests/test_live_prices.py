"""Live market data: prices and regimes on their own Redis stream, merged into
the portfolio step; `apex publish` and `apex record` carry both streams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from connectors.clickhouse import AuditStore
from helpers import record_until
from tests.test_exits import PRICES, SIGNALS, T0, regime, signal, tick

APEX = str(Path(sys.executable).with_name("apex"))

PIPELINE = """
state_dir: {state}
source: {url}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000}}
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([APEX, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"APEX_ENV": "paper", "PATH": str(Path(sys.executable).parent)})


def test_live_prices_close_trades_and_every_market_entry_is_acked(tmp_path, redis_server):
    # reference prices are recorded; a live signal is fresh when published (publish re-stamps it)
    recs = [
        signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05),
        signal(2, T0 + 1, "ETH-USDT", "sell", 200.0, stop=0.5, regimes=("choppy",)),
        tick(T0 + 10, "BTC-USDT", 97.0),
        tick(T0 + 20, "ETH-USDT", 190.0),
        tick(T0 + 30, "BTC-USDT", 94.0),  # BTC stop
        regime(T0 + 40, "choppy"),         # ETH regime exit
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps(r) + "\n" for r in recs))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=redis_server.url))
    # signals first, so both trades are open before the market moves: two publishes, one run
    sig_feed = tmp_path / "signals.jsonl"
    sig_feed.write_text("".join(json.dumps(r) + "\n" for r in recs[:2]))
    mkt_feed = tmp_path / "market.jsonl"
    mkt_feed.write_text("".join(json.dumps(r) + "\n" for r in recs[2:]))
    assert _run("publish", str(sig_feed), "--rate", "0", "--redis", redis_server.url, cwd=tmp_path).returncode == 0
    run1 = _run("run", str(pipeline), "--stop-when-idle", "300", "--no-progress", cwd=tmp_path)
    assert run1.returncode == 0, run1.stdout + run1.stderr
    assert _run("publish", str(mkt_feed), "--rate", "0", "--redis", redis_server.url, cwd=tmp_path).returncode == 0
    run2 = _run("run", str(pipeline), "--stop-when-idle", "300", "--no-progress", cwd=tmp_path)
    assert run2.returncode == 0, run2.stdout + run2.stderr

    store = AuditStore(f"chdb://{tmp_path / 'state' / 'clickhouse'}")
    trades = {sid: (reason, price, pnl) for sid, reason, price, pnl in store.query(
        "SELECT signal_id, exit_reason, exit_price, pnl_usd FROM trades FINAL")}
    store.close()
    assert trades == {"t1": ("hard_stop", 94.0, (94.0 - 100.0) * 100),
                      "t2": ("regime_exit", 190.0, (200.0 - 190.0) * 50)}
    r = redis_server.client()
    for stream in (SIGNALS, PRICES):
        assert r.xpending(stream, "apex-consumer")["pending"] == 0
        assert r.xinfo_groups(stream)[0]["lag"] == 0


def test_record_captures_signals_and_prices_on_one_timeline(tmp_path, redis_server):
    """`apex record` writes the signal and price streams interleaved in stream-id order."""
    r = redis_server.client()
    r.xadd(SIGNALS, {"payload": "{}"}, id="1000-0")
    r.xadd(PRICES, {"symbol": "BTC-USDT", "price": "100"}, id="1500-0")
    r.xadd(SIGNALS, {"payload": "{}"}, id="2000-0")
    lines = record_until(tmp_path / "rec.jsonl", 3, "--since", "0", "--redis", redis_server.url)
    assert [(e["stream"], e["id"]) for e in lines] == [(SIGNALS, "1000-0"), (PRICES, "1500-0"), (SIGNALS, "2000-0")]
    assert lines[1]["fields"] == {"symbol": "BTC-USDT", "price": "100"}
