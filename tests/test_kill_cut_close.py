"""`apex kill` after an exit's close was cut at its limit (price protection), with the worker
running, with no worker, and beside a frozen worker that then wakes: through the real ccxt
client against `apex sim okx`. Whichever way the kill goes, OKX ends flat, the ledger ends
flat, no client order id is sent twice, and the kill's close is a market order under the
trade's next attempt's id (``close:1``), which a woken worker adopts rather than sends."""

from __future__ import annotations

import json
import signal as signals
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pytest

from connectors.sims.okx import running
from helpers import APEX, until
from okx_fixtures import KEY, PASSPHRASE, PRICES, SECRET, logged, okx_venue
from operators.closes import close_id
from operators.trading_state import HALTED
from test_exits import signal, tick
from test_trading_state import MIN, T0

PIPELINE = """
state_dir: {state}
venues:
  okx: {{kind: okx, url: "{url}", market: spot, ask_after_s: 0.2}}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""
ENDED = "('filled', 'rejected', 'cancelled', 'denied')"
ENV = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "OKX_API_KEY": KEY, "OKX_API_SECRET": SECRET,
       "OKX_API_PASSPHRASE": PASSPHRASE}


def _rows(ledger: Path, sql: str, *args) -> list[tuple]:
    if not ledger.exists():
        return []
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the worker has not made its tables yet
        return []
    finally:
        db.close()


def _publish(tmp_path: Path, redis_url: str, name: str, entries: list[dict]) -> None:
    rec = tmp_path / f"{name}.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    subprocess.run([APEX, "publish", str(rec), "--rate", "0", "--redis", redis_url], check=True, capture_output=True)


OPEN = "SELECT json_extract(terms, '$.quantity') FROM trades WHERE status = 'open'"


def _why(ledger: Path, log: Path) -> tuple:
    return _rows(ledger, "SELECT * FROM executions"), log.read_text()[-2000:]


def _settled(ledger: Path) -> bool:
    return not _rows(ledger, f"SELECT 1 FROM executions WHERE status NOT IN {ENDED}")


@pytest.mark.parametrize("filled", ["nothing", "half"])
@pytest.mark.parametrize("worker_is", ["running", "gone", "frozen"])
def test_a_kill_after_a_cut_close_flattens_once_under_close_1(tmp_path, redis_server, monkeypatch, worker_is,
                                                             filled):
    from dataflows import kill as switch

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=server.url))
        ledger = tmp_path / "state" / "ledger.sqlite"
        log = tmp_path / "run.log"
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        try:
            _publish(tmp_path, redis_server.url, "open", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
            assert until(lambda: _rows(ledger, OPEN), 120), _why(ledger, log)
            [(bought,)] = _rows(ledger, OPEN)
            # the stop fires at 94; OKX's price is 90 (nothing fills at the close's limit) or
            # OKX fills half of it and cancels the rest
            if filled == "nothing":
                server.set_price("BTC-USDT", 90.0)
            else:
                server.set_fill_ratio(0.5)
            _publish(tmp_path, redis_server.url, "stop", [tick(T0 + MIN, "BTC-USDT", 94.0)])
            cut = close_id("t1")
            assert until(lambda: _rows(ledger, f"SELECT status FROM executions WHERE client_order_id = ? AND status"
                                               f" IN {ENDED}", cut), 60), _why(ledger, log)
            assert until(lambda: _settled(ledger), 60)
            [(left,)] = _rows(ledger, OPEN)
            assert left == pytest.approx(bought if filled == "nothing" else bought / 2)
            server.set_fill_ratio(1.0)
            if worker_is == "gone":
                worker.send_signal(signals.SIGTERM)
                worker.wait(60)
            elif worker_is == "frozen":
                worker.send_signal(signals.SIGSTOP)  # it holds its state dir and reads nothing
            report = switch.kill(pipeline, None, reason="test", confirm_s=2 if worker_is == "frozen" else 60)
            assert report.venues["okx"].closed and not report.venues["okx"].errors, report.lines()
            if worker_is == "frozen":
                assert report.via == "here: the worker did not confirm"
                worker.send_signal(signals.SIGCONT)  # it wakes, carries the kill out and adopts its close
                assert until(lambda: _rows(ledger, "SELECT command_id FROM trading_state") ==
                             [(report.command_id,)], 60), _why(ledger, log)
            elif worker_is == "running":
                assert report.via == "worker"
            assert until(lambda: _settled(ledger) and not _rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'"),
                         60), _why(ledger, log)
            venue = okx_venue(server.url)
            try:
                assert venue.positions().get(("okx", "BTC-USDT"), 0.0) == pytest.approx(0.0, abs=1e-7)
            finally:
                venue.close()
        finally:
            worker.send_signal(signals.SIGCONT)
            if worker.poll() is None:
                worker.send_signal(signals.SIGTERM)
                worker.wait(60)
        placed = json.loads(urllib.request.urlopen(f"{server.url}/sim/placements", timeout=10).read())
        assert placed and set(placed.values()) == {1}, placed  # no client order id ever went twice
        kill_close = close_id("t1", 1)
        assert [o["clOrdId"] for o in logged(tmp_path / "okx.jsonl")].count(kill_close) == 1
        sent = server.sim.book.order("BTC-USDT", cl_ord_id=kill_close)
        assert sent["ordType"] == "market" and sent["state"] == "filled", sent
    closes = _rows(ledger, "SELECT attempt, client_order_id, status, quantity, COALESCE(limit_px, 0) FROM executions"
                           " WHERE kind = 'close' ORDER BY attempt")
    assert [c[:2] for c in closes] == [(0, cut), (1, kill_close)]
    assert closes[1][2] == "filled" and closes[1][3] == pytest.approx(left) and not closes[1][4]
    # what filled, a cancelled order's part too
    held = _rows(ledger, "SELECT SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) FROM executions"
                         " WHERE status IN ('filled', 'cancelled')")[0][0]
    assert held == pytest.approx(0.0, abs=1e-7)
    assert _rows(ledger, "SELECT status FROM trades") == [("closed",)]
    assert _rows(ledger, "SELECT state FROM trading_state") == [(HALTED,)]
