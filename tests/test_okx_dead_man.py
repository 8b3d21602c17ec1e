"""OKX's dead man's switch: the simulator serves `cancel-all-after` as OKX does, through the
real ccxt client, and a running worker keeps it armed; frozen (SIGSTOP), it stops refreshing
and OKX cancels its working order (cancelSource 20), pushed to whoever watches."""

from __future__ import annotations

import json
import signal as signals
import subprocess
from pathlib import Path

import ccxt
import pytest

from connectors.sims.okx import dead_man, running
from helpers import APEX, until
from okx_fixtures import PRICES, okx_venue, order, raw
from test_exits import signal
from test_trading_state import T0

PIPELINE = """
state_dir: {state}
venues:
  okx: {{kind: okx, url: "{url}", cancel_all_after_s: 10}}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""


def test_cancel_all_after_takes_what_okx_takes_and_cancels_every_working_order(tmp_path):
    now = [0.0]  # the simulator's limits count time by this clock: a second passes when the test says
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES, clock=lambda: now[0]) as server:
        venue = okx_venue(server.url)
        try:
            for bad in ("5", "121", "x"):
                now[0] += 1
                status, doc = raw(server.url, "POST", "/api/v5/trade/cancel-all-after", {"timeOut": bad})
                assert doc["code"] == "51000", (bad, doc)
            now[0] += 1
            server.set_fill_ratio(0)  # orders rest: working at the venue
            for o in (order("s1"), order("s2", "ETH-USDT")):  # placed by hand: no client of ours follows them
                server.sim.book.place({"clOrdId": o.client_order_id, "instId": o.symbol, "side": "buy",
                                       "ordType": "market", "sz": "0.5", "tgtCcy": "base_ccy",
                                       "tdMode": "cash"})
            assert len(server.sim.book.pending()) == 2
            venue.cancel_all_after(10)  # through ccxt's cancel_all_orders_after
            switch = dead_man.of(server.sim)
            assert switch.trigger_ms > 0
            with pytest.raises(ccxt.BaseError):  # one a second, as OKX allows
                venue._here().ex.cancel_all_orders_after(10_000)
            assert until(lambda: switch.fired == 1, 60)  # its countdown ran out: nobody refreshed it
            records = [server.sim.book.order("BTC-USDT", cl_ord_id=order("s1").client_order_id),
                       server.sim.book.order("ETH-USDT", cl_ord_id=order("s2").client_order_id)]
            assert [(r["state"], r["cancelSource"]) for r in records] == [("canceled", "20")] * 2
        finally:
            venue.close()


def test_a_frozen_worker_leaves_no_working_order_at_okx(tmp_path, redis_server):
    """Apex's own orders are IOC limits (price protection) and never rest; what the switch
    guards is every order working on the account when Apex freezes: here a resting limit
    order placed beside it (by hand, as an operator's or a future resting order would be)."""
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=server.url))
        env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", "OKX_API_KEY": "k", "OKX_API_SECRET": "s",
               "OKX_API_PASSPHRASE": "p"}
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"))
        try:
            switch = dead_man.of(server.sim)
            assert until(lambda: switch.trigger_ms > 0, 60), (tmp_path / "run.log").read_text()[-2000:]
            first = switch.trigger_ms
            assert until(lambda: switch.trigger_ms > first, 30)  # refreshed while the worker is healthy
            working = server.sim.book.place({"clOrdId": "resting1", "instId": "BTC-USDT", "side": "buy",
                                             "ordType": "limit", "px": "50", "sz": "0.01", "tdMode": "cash"})
            assert [o["ordId"] for o in server.sim.book.pending()] == [working["ordId"]]
            worker.send_signal(signals.SIGSTOP)  # frozen: nothing of it runs, its refresher neither
            assert until(lambda: switch.fired == 1, 60)
            record = server.sim.book.order("BTC-USDT", ord_id=working["ordId"])
            assert (record["state"], record["cancelSource"]) == ("canceled", "20")
            assert server.sim.book.pending() == []
        finally:
            worker.send_signal(signals.SIGCONT)
            worker.send_signal(signals.SIGTERM)
            worker.wait(60)
