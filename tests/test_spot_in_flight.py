"""The spot rule while a buy of the coin is still at OKX (not filled yet): a sell signal
decided then never sends coins the account does not hold yet (OKX would refuse 51008).

On spot no sell signal is an order of its own (``spot_cannot_short``); with ``sell_on_long:
close`` it closes the book's longs, and a long whose opening buy is still working is
closed only once that buy's fate is in, for what it filled (less the fee OKX keeps in the
coin), never for what the book reserved. Through the real ccxt client against `apex sim
okx`, its answers slowed (``POST /sim/latency``): in one run, the sell decided before the
buy has its answer; beside a running worker, the sell published only once the buy is
known to be at OKX with no answer yet."""

from __future__ import annotations

import json
import subprocess

import pytest

from connectors.sims.okx import running
from helpers import APEX, until
from okx_fixtures import CREDENTIAL_ENV, PRICES, okx_venue
from test_kill_cut_close import _rows
from test_venue_invariant import Account, check_invariant, signal, sim_post

LIVE = "('intent', 'submitted', 'accepted', 'partially_filled', 'unknown')"


def _outcomes(col, signal_id: str) -> list[tuple[str, str]]:
    return [(o.outcome, o.reason) for o in col.by_signal(signal_id)]


def _sold(acc: Account) -> float:
    """What the closes sold, a cancelled close's part too."""
    return sum(q for (q,) in acc.rows("SELECT quantity FROM executions WHERE kind = 'close'"))


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0])
def test_a_sell_decided_before_the_buys_answer_closes_only_what_filled(tmp_path, ratio):
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp_path, server.url, "spot", "close")
        sim_post(server.url, "fill-ratio", {"ratio": ratio})
        sim_post(server.url, "latency", {"latency_ms": 400})
        acc.ms += 60_000
        buy, bought = signal(acc.ms, 0, "BTC-USDT", "buy"), f"s{acc.ms}-0"
        acc.ms += 1_000
        sell, sold = signal(acc.ms, 1, "BTC-USDT", "sell"), f"s{acc.ms}-1"
        col = acc.run([buy, sell])
        assert _outcomes(col, sold) == [("dropped", "spot_cannot_short")]
        check_invariant(acc, "spot")  # nothing refused; the venue holds what the book holds
        [(filled,)] = acc.rows("SELECT quantity FROM executions WHERE kind = 'open'")
        if ratio == 0.0:  # nothing bought: no trade, and nothing to sell
            assert acc.rows("SELECT 1 FROM executions WHERE kind = 'close'") == []
        else:  # the close waited for the buy's fate and sold what it left held, no more
            assert 0 < filled and [kind for kind, _ in _outcomes(col, bought)][-1] in ("closed", "price_protection")
            assert _sold(acc) <= filled + 1e-9  # an open's quantity is the coins held: the fee kept is out


PIPELINE = """
state_dir: {state}
venues:
  okx: {{kind: okx, url: "{url}", market: spot, sell_on_long: close, ask_after_s: 0.2}}
stages:
  - filter: confidence
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""


def _publish(tmp_path, redis_url: str, name: str, entries: list[dict]) -> None:
    rec = tmp_path / f"{name}.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    subprocess.run([APEX, "publish", str(rec), "--rate", "0", "--redis", redis_url], check=True, capture_output=True)


def test_a_sell_beside_a_held_long_and_a_buy_still_at_okx_sells_only_what_is_held(tmp_path, redis_server):
    """One long of BTC filled and held, a second buy of it at OKX with no answer yet: the
    sell closes the first at once and the second only once its buy has filled, each for
    what it holds; OKX refuses nothing and ends holding nothing."""
    env = {"PATH": "/usr/bin:/bin", "APEX_ENV": "paper", **CREDENTIAL_ENV}
    with running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=server.url))
        ledger = tmp_path / "state" / "ledger.sqlite"
        log = tmp_path / "run.log"
        worker = subprocess.Popen([APEX, "run", str(pipeline), "--source", redis_server.url, "--no-progress"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        try:
            acc = Account(tmp_path, server.url, "spot", "close")
            first, second, sell = (signal(acc.ms + n * 60_000, n, "BTC-USDT", side)
                                   for n, side in [(1, "buy"), (2, "buy"), (3, "sell")])
            _publish(tmp_path, redis_server.url, "first", [first])
            assert until(lambda: _rows(ledger, "SELECT 1 FROM trades WHERE status = 'open'"), 120), \
                log.read_text()[-2000:]
            sim_post(server.url, "latency", {"latency_ms": 3000})
            _publish(tmp_path, redis_server.url, "second", [second])
            # the second buy is at OKX, its answer not come yet: the sell is decided now
            assert until(lambda: _rows(ledger, f"SELECT 1 FROM executions WHERE kind = 'open' AND status IN {LIVE}"),
                         60), \
                (_rows(ledger, "SELECT kind, side, status, quantity FROM executions"), log.read_text()[-2000:])
            _publish(tmp_path, redis_server.url, "sell", [sell])
            sid = json.loads(sell["fields"]["payload"])["signal_id"]
            assert until(lambda: _rows(ledger, "SELECT 1 FROM decisions WHERE signal_id = ?", sid), 60)
            assert _rows(ledger, "SELECT outcome, reason FROM decisions WHERE signal_id = ?", sid) == \
                [("dropped", "spot_cannot_short")]
            assert _rows(ledger, f"SELECT 1 FROM executions WHERE kind = 'open' AND status IN {LIVE}"), \
                "the buy's answer came before the sell was decided"
            sim_post(server.url, "latency", {"latency_ms": 0})
            assert until(lambda: len(_rows(ledger, "SELECT 1 FROM trades WHERE status = 'closed'")) == 2
                         and not _rows(ledger, f"SELECT 1 FROM executions WHERE status IN {LIVE}"), 120), \
                (_rows(ledger, "SELECT kind, side, status, quantity FROM executions"), log.read_text()[-2000:])
        finally:
            worker.terminate()
            worker.wait(60)
        rows = _rows(ledger, "SELECT kind, side, status, quantity FROM executions ORDER BY rowid")
        assert [r[:3] for r in rows if r[2] == "rejected"] == [], rows
        opens = [q for kind, _, _, q in rows if kind == "open"]
        closes = [q for kind, _, _, q in rows if kind == "close"]
        assert len(opens) == 2 and len(closes) == 2, rows
        # each close sold what its buy filled (an open's quantity is net of the fee kept in the coin)
        assert sum(closes) == pytest.approx(sum(opens))
        venue = okx_venue(server.url)
        try:
            assert venue.positions().get(("okx", "BTC-USDT"), 0.0) == pytest.approx(0.0, abs=1e-7)
        finally:
            venue.close()
