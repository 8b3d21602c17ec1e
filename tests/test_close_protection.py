"""Every close but a kill's carries a protection limit, through the real clients against the
simulators: OKX (ccxt, ``ordType`` ioc) and IBKR (ib_async, a ``LimitOrder`` IOC). A close
the venue cut at its limit leaves the trade open with the rest, says ``price_protection``
with its reference, limit and the venue's price, and is tried again under ``close:1`` at
the next price for its symbol; a restart between attempts goes on where the last run was;
a kill's close is a market order."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pytest

from connectors.ledger import Ledger
from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import running as okx_running
from connectors.venues.ibkr import IbkrVenue
from connectors.venues.paper import PaperVenue
from dataflows.config import parse
from helpers import APEX, KELLY_AND_EXECUTE, payload, run_entries, sig
from okx_fixtures import PRICES, okx_venue
from test_gates import clean_env
from operators.closes import close_id, cut

SIGNALS, TICKS = "argus:signals:stream", "argus:prices:stream"
T0 = 1_767_261_600_000
BTC = PRICES["BTC-USDT"]


def _signal(ms: int, sid: str, venue: str, symbol: str, price: float) -> dict:
    doc = sig(sid, symbol=symbol, venue=venue, side="buy", reference_price=price, suggested_kelly=0.01,
              max_position_usd=3000.0)
    return {"stream": SIGNALS, "id": f"{ms}-0", "fields": {"payload": payload(doc)}}


def _tick(ms: int, symbol: str, price: float) -> dict:
    return {"stream": TICKS, "id": f"{ms}-0", "fields": {"symbol": symbol, "price": str(price)}}


class Runs:
    """Runs one after another on one state dir, against venues that outlive them."""

    def __init__(self, tmp: Path, venues_yaml: str, make_venues):
        self.tmp, self.make_venues, self.n = tmp, make_venues, 0
        self.path = tmp / "pipeline.yaml"
        self.path.write_text(f"state_dir: {tmp / 'state'}\nvenues:\n{venues_yaml}stages:\n{KELLY_AND_EXECUTE}")
        self.p = parse(self.path.read_text(), self.path, {})

    def run(self, entries: list[dict]):
        self.n += 1
        venues = self.make_venues()
        try:
            return run_entries(self.tmp, self.p, entries, f"run{self.n}.jsonl", venues=venues)
        finally:
            for v in {id(v): v for v in venues.values()}.values():
                getattr(v, "close", lambda: None)()

    def rows(self, sql: str, *args) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.tmp / 'state' / 'ledger.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def closes(self, sid: str) -> list[tuple]:
        return self.rows("SELECT attempt, client_order_id, status, quantity, price, limit_px FROM executions"
                         " WHERE signal_id = ? AND kind = 'close' ORDER BY attempt", sid)

    def said(self, client_order_id: str) -> str:
        """What the venue said of an order it refused (the ledger keeps it as its order id)."""
        return self.rows("SELECT COALESCE(order_id, '') FROM executions WHERE client_order_id = ?",
                         client_order_id)[0][0]

    def open_trades(self):
        ledger = Ledger(self.tmp / "state" / "ledger.sqlite")
        try:
            return ledger.open_trades()
        finally:
            ledger.close()


def _okx_runs(tmp: Path, url: str) -> Runs:
    def venues():
        okx = okx_venue(url)
        okx.instruments()
        return {"okx": okx, "ibkr": PaperVenue(tmp / "paper.sqlite")}

    return Runs(tmp, f"  okx: {{kind: okx, url: '{url}', market: spot, ask_after_s: 0.2}}\n", venues)


def _said(col, sid: str) -> list[tuple[str, str]]:
    return [(o.outcome, o.reason) for o in col.by_signal(sid) if o.stream_id == ""]


@pytest.mark.parametrize("answer_lost", [False, True])
def test_a_hard_stop_not_marketable_at_okx_stays_open_and_closes_at_the_next_tick_under_close_1(tmp_path,
                                                                                                 answer_lost):
    """``answer_lost``: OKX took the close but its answer never came; asked after it, OKX says
    it ended with nothing filled, and that is the same cut at its limit."""
    with okx_running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        runs = _okx_runs(tmp_path, server.url)
        runs.run([_signal(T0, "s1", "okx", "BTC-USDT", BTC)])
        (trade,) = runs.open_trades()
        server.set_price("BTC-USDT", BTC * 0.90)  # the venue falls further than the book has seen
        if answer_lost:
            server.arm("drop", times=1, accept=True)
        col = runs.run([_tick(T0 + 60_000, "BTC-USDT", BTC * 0.94)])  # the stop fires at 94
        [(outcome, reason)] = _said(col, "s1")
        assert outcome == "price_protection", reason
        assert reason.startswith("reference 94, limit 93.") and reason.endswith("venue price 90")
        assert [t.quantity for t in runs.open_trades()] == [trade.quantity]  # still open, whole
        [(n, cid, status, _, _, limit)] = runs.closes("s1")
        assert (n, cid) == (0, close_id("s1")) and 93.0 < limit < 94
        # its end as OKX's event says it, or as OKX says it when asked after the order
        assert status in ("cancelled", "rejected") and cut(status, runs.said(cid))
        # a new run (a restart between the attempts): the next tick's price is the next reference
        col = runs.run([_tick(T0 + 120_000, "BTC-USDT", BTC * 0.90)])
        assert _said(col, "s1") == [("closed", "hard_stop")]
        assert runs.open_trades() == []
        first, second = runs.closes("s1")
        assert second[:3] == (1, close_id("s1", 1), "filled")
        assert second[3] == pytest.approx(trade.quantity) and 89.0 < second[5] < 90
        placed = json.loads(urllib.request.urlopen(f"{server.url}/sim/placements", timeout=10).read())
        assert placed and set(placed.values()) == {1}, placed  # no client order id ever went twice
    # `apex audit` shows each attempt: the one cut at its limit, then the one that closed it
    res = subprocess.run([APEX, "audit", "s1", "--state-dir", str(tmp_path / "state"), "--format", "jsonl"],
                         capture_output=True, text=True, timeout=120, env=clean_env())
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    sent = [e for e in events if e["stage"] == "EXECUTION_ATTEMPT" and e["details"].get("kind") == "close"]
    assert [(e["details"]["client_order_id"], e["details"].get("attempt")) for e in sent] == \
        [(close_id("s1"), None), (close_id("s1", 1), 1)]
    confirmed = [e["outcome"] for e in events if e["stage"] == "EXECUTION_CONFIRMED" and e["stream_id"] != events[0]
                 ["stream_id"] and e["outcome"] != "accepted"]
    assert confirmed == ["price_protection", "filled"]


@pytest.mark.parametrize("answer_lost", [False, True])
def test_a_close_filled_in_part_leaves_the_rest_open_and_the_next_tick_closes_it(tmp_path, answer_lost):
    """``answer_lost``: the close's end is learnt by asking OKX after it (its record says
    filled, with half the quantity); the next run (a restart) still knows the rest is open."""
    with okx_running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        runs = _okx_runs(tmp_path, server.url)
        runs.run([_signal(T0, "s1", "okx", "BTC-USDT", BTC)])
        (trade,) = runs.open_trades()
        server.set_fill_ratio(0.5)
        if answer_lost:
            server.arm("drop", times=1, accept=True)
        col = runs.run([_tick(T0 + 60_000, "BTC-USDT", BTC * 0.94)])
        [(outcome, reason)] = _said(col, "s1")
        assert outcome == "price_protection" and "the rest was cancelled" in reason
        (rest,) = runs.open_trades()
        assert rest.quantity == pytest.approx(trade.quantity / 2)
        [(_, _, status, qty, _, _)] = runs.closes("s1")
        # the rest cancelled: as OKX's event says it, or as OKX's record says it when asked after
        assert status in ("cancelled", "filled") and qty == pytest.approx(trade.quantity / 2)
        server.set_fill_ratio(1.0)
        col = runs.run([_tick(T0 + 120_000, "BTC-USDT", BTC * 0.95)])
        assert _said(col, "s1") == [("closed", "hard_stop")]
        assert runs.open_trades() == []
        assert [r[:2] for r in runs.closes("s1")] == [(0, close_id("s1")), (1, close_id("s1", 1))]
        assert runs.closes("s1")[1][2:4] == ("filled", pytest.approx(trade.quantity / 2))
        held = {sym: q for (_, sym), q in okx_venue(server.url).positions().items()}
        assert held.get("BTC-USDT", 0.0) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("left_at_venue", [False, True])
def test_an_attempts_intent_a_crash_left_is_asked_of_the_venue_and_never_sent_twice(tmp_path, left_at_venue):
    """A crash between attempt 1's intent and its outcome: the next start asks OKX about
    ``close:1`` and sends it only if OKX never had it; either way it is placed once."""
    from operators.closes import close_order
    from operators.protection import limit_price

    with okx_running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        runs = _okx_runs(tmp_path, server.url)
        runs.run([_signal(T0, "s1", "okx", "BTC-USDT", BTC)])
        server.set_price("BTC-USDT", BTC * 0.90)
        runs.run([_tick(T0 + 60_000, "BTC-USDT", BTC * 0.94)])
        (trade,) = runs.open_trades()
        order = close_order(trade, 1, "hard_stop", 90.0, T0 + 120_000, 50.0, 0.1)
        assert order.limit == limit_price("sell", 90.0, 50.0, 0.1)
        ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
        try:
            ledger.record_intent(order, "hard_stop")  # committed: the crash came right after
        finally:
            ledger.close()
        if left_at_venue:  # ...or after it left
            venue = okx_venue(server.url)
            try:
                venue.place_many([order])
            finally:
                venue.close()
        runs.run([_tick(T0 + 180_000, "ETH-USDT", PRICES["ETH-USDT"])])
        assert runs.open_trades() == []
        assert [r[:2] for r in runs.closes("s1")] == [(0, close_id("s1")), (1, close_id("s1", 1))]
        assert runs.closes("s1")[1][2] == "filled"
        placed = json.loads(urllib.request.urlopen(f"{server.url}/sim/placements", timeout=10).read())
        assert placed[close_id("s1", 1)] == 1


def test_a_kill_after_a_cut_close_sends_a_market_close_under_the_next_id(tmp_path, monkeypatch):
    from dataflows import kill as switch
    from okx_fixtures import KEY, PASSPHRASE, SECRET

    for k, v in {"APEX_ENV": "paper", "OKX_API_KEY": KEY, "OKX_API_SECRET": SECRET,
                 "OKX_API_PASSPHRASE": PASSPHRASE}.items():
        monkeypatch.setenv(k, v)
    with okx_running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        runs = _okx_runs(tmp_path, server.url)
        runs.run([_signal(T0, "s1", "okx", "BTC-USDT", BTC)])
        server.set_price("BTC-USDT", BTC * 0.90)
        runs.run([_tick(T0 + 60_000, "BTC-USDT", BTC * 0.94)])
        assert len(runs.open_trades()) == 1
        report = switch.kill(runs.path, None, reason="test")
        assert report.venues["okx"].closed, report
        assert runs.open_trades() == []
        first, second = runs.closes("s1")
        assert first[2] in ("cancelled", "rejected")
        assert second[:3] == (1, close_id("s1", 1), "filled") and not second[5]  # no limit: a market order


def test_a_hard_stop_not_marketable_at_ibkr_closes_at_the_next_tick(tmp_path):
    ib_prices = {"AAPL": 100.0}
    with ibkr_running(orders_log=tmp_path / "ibkr.jsonl", cash=100_000.0, prices=ib_prices) as gw:
        def venues():
            ib = IbkrVenue("127.0.0.1", gw.port, 7, "DU1234567", connect_timeout=2.0, request_timeout=2.0,
                           fill_timeout=2.0, backoff=(0.02, 0.2))
            ib.instrument("ibkr", "AAPL")  # qualified, as start-up leaves it: the signal need not wait
            return {"ibkr": ib, "okx": PaperVenue(tmp_path / "paper.sqlite")}

        runs = Runs(tmp_path, f"  ibkr: {{kind: ibkr, port: {gw.port}, account: DU1234567}}\n", venues)
        runs.run([_signal(T0, "s1", "ibkr", "AAPL", 100.0)])
        (trade,) = runs.open_trades()
        gw.set_price("AAPL", 90.0)
        col = runs.run([_tick(T0 + 60_000, "AAPL", 94.0)])
        [(outcome, reason)] = _said(col, "s1")
        assert outcome == "price_protection" and reason.startswith("reference 94, limit 93.53")
        assert len(runs.open_trades()) == 1
        col = runs.run([_tick(T0 + 120_000, "AAPL", 90.0)])
        assert _said(col, "s1") == [("closed", "hard_stop")]
        assert [r[:2] for r in runs.closes("s1")] == [(0, close_id("s1")), (1, close_id("s1", 1))]
        assert runs.closes("s1")[1][2] == "filled"
        assert runs.closes("s1")[1][3] == pytest.approx(trade.quantity)


@pytest.mark.parametrize("venue_at, closed", [(1.0, True), (0.4, False)])
def test_a_close_cut_at_a_stale_mark_goes_again_at_the_venues_price_if_the_book_believes_it(tmp_path, venue_at,
                                                                                            closed):
    """The invariant test's end: a tick put the book's price 2% above the venue's, no tick for
    the symbol came for a day, and the maximum holding fires at that stale mark. Cut, the
    close goes again at once at the price OKX named, unless the book would not believe it as
    a reference (``limits.price_band`` around the mark): then it waits for the market."""
    with okx_running(orders_log=tmp_path / "okx.jsonl", prices=PRICES) as server:
        runs = _okx_runs(tmp_path, server.url)
        runs.run([_signal(T0, "s1", "okx", "BTC-USDT", BTC)])
        server.set_price("BTC-USDT", BTC * venue_at)
        col = runs.run([_tick(T0 + 60_000, "BTC-USDT", BTC * 1.02),
                        _tick(T0 + 24 * 3_600_000, "ETH-USDT", PRICES["ETH-USDT"])])
        said = _said(col, "s1")
        assert said[0][0] == "price_protection" and said[0][1].startswith("reference 102, limit 101.49")
        if closed:
            assert said[1:] == [("closed", "max_holding")] and runs.open_trades() == []
            assert [r[:2] for r in runs.closes("s1")] == [(0, close_id("s1")), (1, close_id("s1", 1))]
            assert runs.closes("s1")[1][4] == pytest.approx(BTC, rel=1e-3)  # filled at the venue's price
        else:
            assert said[1:] == [] and len(runs.open_trades()) == 1
            assert [r[:2] for r in runs.closes("s1")] == [(0, close_id("s1"))]
