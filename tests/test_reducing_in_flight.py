"""REDUCING with a buy still at the venue: a sell decided then goes out as a reduction only
of what is surely held. Through a running worker, the real ccxt client and `apex sim okx`
on swaps (where a sell may open a short), its answers slowed (``POST /sim/latency``) so the
buy is at OKX with no answer when the reduce command and the sell come; OKX then cuts the
buy (its price has risen past the buy's limit), where it would have filled the sell."""

from __future__ import annotations

import json
import subprocess

from connectors.sims.okx import running
from helpers import APEX, until
from okx_fixtures import CREDENTIAL_ENV, PRICES, okx_venue
from test_kill_cut_close import _rows
from test_spot_in_flight import LIVE, _publish
from test_venue_invariant import START_MS, signal, sim_post

PIPELINE = """
state_dir: {state}
venues:
  okx: {{kind: okx, url: "{url}", market: swap, ask_after_s: 0.2}}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""


def test_a_sell_beside_a_working_buy_is_no_reduction_and_opens_no_short_while_reducing(tmp_path, redis_server,
                                                                                       monkeypatch):
    from dataflows import kill as switch

    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", **CREDENTIAL_ENV}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=server.url))
        ledger = tmp_path / "state" / "ledger.sqlite"
        log = tmp_path / "run.log"
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        try:
            buy, sell = (signal(START_MS + n * 60_000, n, "BTC-USDT", side) for n, side in [(1, "buy"), (2, "sell")])
            sid = json.loads(sell["fields"]["payload"])["signal_id"]
            # OKX's price above the buy's limit: it will be cut, and a sell would fill there
            server.set_price("BTC-USDT", PRICES["BTC-USDT"] * 1.1)
            sim_post(server.url, "latency", {"latency_ms": 3000})
            _publish(tmp_path, redis_server.url, "buy", [buy])
            assert until(lambda: _rows(ledger, f"SELECT 1 FROM executions WHERE kind = 'open' AND status IN {LIVE}"),
                         120), log.read_text()[-2000:]
            report = switch.reduce(pipeline, None, reason="test")
            assert report.via == "worker", report.lines()
            _publish(tmp_path, redis_server.url, "sell", [sell])
            assert until(lambda: _rows(ledger, "SELECT 1 FROM decisions WHERE signal_id = ?", sid), 60)
            assert _rows(ledger, f"SELECT 1 FROM executions WHERE kind = 'open' AND status IN {LIVE}"), \
                "the buy's answer came before the sell was decided"
            sim_post(server.url, "latency", {"latency_ms": 0})
            assert until(lambda: not _rows(ledger, f"SELECT 1 FROM executions WHERE status IN {LIVE}"), 60)
        finally:
            worker.terminate()
            worker.wait(60)
        assert _rows(ledger, "SELECT outcome, reason FROM decisions WHERE signal_id = ?", sid) == \
            [("dropped", "reducing")]
        assert _rows(ledger, "SELECT kind, side, status, quantity FROM executions") == \
            [("open", "buy", "cancelled", 0.0)]
        venue = okx_venue(server.url)
        try:
            assert venue.positions() == {}  # no short opened while reducing
        finally:
            venue.close()
