"""The venue invariant, over random signal sequences, through the real ccxt client against
the OKX simulator: whenever every order's fate is in, the venue holds of each instrument
exactly what the books hold there; no order leaves that the venue must refuse for want
of holdings; and every open trade's exit can be executed (the last phase executes them
all, and each fills).

Each market mode is a parameter (``MARKETS``): the rules of spot here; a swap mode adds
its own mode and its expectation of a sell (``SELL_OPENS``)."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from connectors.ledger import Ledger
from connectors.sims.okx import running
from connectors.sims.okx.state import MIN_SIZE
from connectors.venues.paper import PaperVenue
from dataflows.config import parse
from helpers import KELLY_AND_EXECUTE, payload, run_entries, sig
from okx_fixtures import PRICES, okx_venue

SIGNALS, TICKS = "argus:signals:stream", "argus:prices:stream"
START_MS = 1_767_261_600_000  # 2026-01-01T10:00:00Z
HOUR_MS = 3_600_000
SYMBOLS = ("BTC-USDT", "LTC-USDT", "SOL-USDT")
MARKETS = ("spot",)
SELL_OPENS = {"spot": False}  # whether a sell signal may open a trade in the mode
DUST = 1e-7  # what float sums of lot-rounded coins may differ by


BOOKS = {"macro": "macro", "rest": "trend_following"}  # book -> the source of its signals here


def pipeline(tmp: Path, url: str, market: str, on_long: str):
    """Two books on one OKX account: the venue holds the sum of theirs."""
    rule = f", sell_on_long: {on_long}" if market == "spot" else ""
    text = (f"state_dir: {tmp / 'state'}\n"
            f"venues:\n  okx: {{kind: okx, url: '{url}', market: {market}{rule}, ask_after_s: 0.2}}\n"
            "books:\n  macro: {takes: {source: macro}}\n  rest: {}\n"
            f"stages:\n{KELLY_AND_EXECUTE}")
    return parse(text, tmp / "pipeline.yaml", {})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signal(ms: int, n: int, symbol: str, side: str, kelly: float = 0.01, hold_h: float = 8,
           book: str = "macro", cap_usd: float = 5000.0) -> dict:
    doc = sig(f"s{ms}-{n}", timestamp=_iso(ms), symbol=symbol, side=side, reference_price=PRICES[symbol],
              suggested_kelly=kelly, max_position_usd=cap_usd, source=BOOKS[book])
    doc["exit_rules"]["max_holding_hours"] = hold_h
    return {"stream": SIGNALS, "id": f"{ms}-0", "fields": {"payload": payload(doc)}}


def tick(ms: int, symbol: str, price: float) -> dict:
    return {"stream": TICKS, "id": f"{ms}-0", "fields": {"symbol": symbol, "price": str(price)}}


def sim_post(url: str, what: str, body: dict) -> None:
    """One of the simulator's /sim controls, as a test or an operator sends it."""
    req = urllib.request.Request(f"{url}/sim/{what}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        assert res.status == 200


class Account:
    """One run after another against one simulator and one state dir: each run's entries
    replayed through the real dataflow, every order's fate in before it ends."""

    def __init__(self, tmp: Path, url: str, market: str, on_long: str):
        self.tmp, self.url, self.p = tmp, url, pipeline(tmp, url, market, on_long)
        self.ms, self.runs = START_MS, 0

    def run(self, entries: list[dict]):
        self.runs += 1
        venue = okx_venue(self.url)
        venue.instruments()  # its lots known, as start-up leaves them: no signal waits for them
        try:
            return run_entries(self.tmp, self.p, entries, f"run{self.runs}.jsonl",
                               venues={"okx": venue, "ibkr": PaperVenue(self.tmp / "paper.sqlite")})
        finally:
            venue.close()

    def venue_holds(self) -> dict[str, float]:
        venue = okx_venue(self.url)
        try:
            return {sym: q for (_, sym), q in venue.positions().items()}
        finally:
            venue.close()

    def ledgers(self) -> list[Ledger]:
        return [Ledger(b.ledger_path) for b in self.p.each_book()]

    def rows(self, sql: str) -> list[tuple]:
        """``sql`` asked of every book's ledger, the rows together."""
        out = []
        for ledger in self.ledgers():
            try:
                out += ledger.db.execute(sql).fetchall()
            finally:
                ledger.close()
        return out

    def open_trades(self) -> list:
        out = []
        for ledger in self.ledgers():
            try:
                out += ledger.open_trades()
            finally:
                ledger.close()
        return out

    def books_hold(self) -> dict[str, float]:
        """The sum of every book's positions, by instrument."""
        held: dict[str, float] = {}
        for ledger in self.ledgers():
            try:
                for f in ledger.fills():
                    held[f.symbol] = held.get(f.symbol, 0.0) + f.signed_qty
            finally:
                ledger.close()
        return held


def check_invariant(acc: Account, mode: str) -> None:
    """The venue holds what the book holds; nothing was refused; every open trade's exit
    sells no more than the venue holds."""
    rows = acc.rows("SELECT kind, side, status, reason FROM executions")
    live = [r for r in rows if r[2] in ("intent", "submitted", "accepted", "partially_filled", "unknown")]
    assert not live, f"orders whose fate never came: {live}"
    refused = [r for r in rows if r[2] == "rejected"]
    assert not refused, f"the venue refused: {refused}"
    book, venue = acc.books_hold(), acc.venue_holds()
    for sym in set(book) | set(venue):
        assert abs(book.get(sym, 0.0) - venue.get(sym, 0.0)) <= DUST, (sym, book.get(sym), venue.get(sym))
    trades = acc.open_trades()
    if not SELL_OPENS[mode]:
        assert [t.signal_id for t in trades if not t.long] == []
    to_sell: dict[str, float] = {}
    for t in trades:
        if t.long:
            to_sell[t.symbol] = to_sell.get(t.symbol, 0.0) + t.quantity
    for sym, qty in to_sell.items():
        assert qty <= venue.get(sym, 0.0) + DUST, (sym, qty, venue.get(sym))


# one operation of a random sequence: a buy, a buy near the venue's minimum size (its cap a
# multiple of the minimum's worth), a sell, a price move (a hard stop may fire), time passing
# (maximum holding may fire)
OPS = st.one_of(
    st.tuples(st.just("buy"), st.sampled_from(SYMBOLS), st.sampled_from([0.002, 0.01, 0.03]),
              st.sampled_from(sorted(BOOKS))),
    st.tuples(st.just("tiny"), st.sampled_from(SYMBOLS), st.sampled_from([1.0, 1.001, 1.01, 3.0]),
              st.sampled_from(sorted(BOOKS))),
    st.tuples(st.just("sell"), st.sampled_from(SYMBOLS), st.just(0.01), st.sampled_from(sorted(BOOKS))),
    st.tuples(st.just("move"), st.sampled_from(SYMBOLS), st.sampled_from([0.9, 1.0, 1.02]), st.just("")),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([1, 5]), st.just("")),
)
PHASES = st.lists(st.tuples(st.sampled_from([1.0, 0.5, 0.3]), st.lists(OPS, min_size=1, max_size=6)),
                  min_size=1, max_size=3)


def entries_of(acc: Account, ops: list[tuple]) -> list[dict]:
    out = []
    for n, (kind, symbol, x, book) in enumerate(ops):
        acc.ms += 60_000
        if kind in ("buy", "sell"):
            out.append(signal(acc.ms, n, symbol, kind, kelly=x, hold_h=2, book=book))
        elif kind == "tiny":
            cap = float(MIN_SIZE) * PRICES[symbol] * x
            out.append(signal(acc.ms, n, symbol, "buy", kelly=0.03, hold_h=2, book=book, cap_usd=cap))
        elif kind == "move":
            out.append(tick(acc.ms, symbol, PRICES[symbol] * x))
        else:
            acc.ms += x * HOUR_MS
            out.append(tick(acc.ms, SYMBOLS[0], PRICES[SYMBOLS[0]]))
    return out


@pytest.mark.parametrize("mode", MARKETS)
@pytest.mark.parametrize("on_long", ["keep", "close"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phases=PHASES)
def test_the_venue_holds_what_the_books_hold_and_every_exit_can_be_executed(tmp_path_factory, mode, on_long,
                                                                              phases):
    tmp = tmp_path_factory.mktemp("inv")
    with running(orders_log=tmp / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp, server.url, mode, on_long)
        for ratio, ops in phases:
            sim_post(server.url, "fill-ratio", {"ratio": ratio})
            acc.run(entries_of(acc, ops))
            check_invariant(acc, mode)
        # every trade still open reaches its maximum holding: each exit is executed, and fills whole
        sim_post(server.url, "fill-ratio", {"ratio": 1.0})
        acc.ms += 24 * HOUR_MS
        acc.run([tick(acc.ms, SYMBOLS[0], PRICES[SYMBOLS[0]])])
        check_invariant(acc, mode)
        assert acc.open_trades() == []


def _outcomes(col, signal_id: str) -> list[tuple[str, str]]:
    return [(o.outcome, o.reason) for o in col.by_signal(signal_id)]


@pytest.mark.parametrize("on_long", ["keep", "close"])
def test_a_sell_where_another_book_holds_the_coin_is_dropped_and_the_long_keeps_its_coins(tmp_path, on_long):
    """The issue's LTC: one book's long, another book's sell. The account holds coins, but
    they are the long's: the sell is dropped, whatever sell_on_long says, and the long's
    exit later sells exactly what it bought, less OKX's fee."""
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp_path, server.url, "spot", on_long)
        acc.ms += 60_000
        buy = signal(acc.ms, 0, "LTC-USDT", "buy", book="rest")
        acc.ms += 60_000
        sell = signal(acc.ms, 1, "LTC-USDT", "sell", book="macro")
        col = acc.run([buy, sell])
        assert _outcomes(col, f"s{acc.ms}-1") == [("dropped", "spot_cannot_short")]
        (long,) = acc.open_trades()
        assert long.long and long.symbol == "LTC-USDT"
        assert acc.venue_holds() == {"LTC-USDT": pytest.approx(long.quantity, abs=DUST)}
        check_invariant(acc, "spot")
        acc.ms += 24 * HOUR_MS
        col = acc.run([tick(acc.ms, "LTC-USDT", PRICES["LTC-USDT"])])
        assert [(o.outcome, o.reason) for o in col.outcomes if o.signal_id == long.signal_id] == \
            [("closed", "max_holding")]
        assert acc.open_trades() == [] and acc.venue_holds() == {}
        check_invariant(acc, "spot")


@pytest.mark.parametrize("on_long, still_open", [("keep", 1), ("close", 0)])
def test_a_sell_meeting_its_own_books_long_keeps_or_closes_it_as_configured(tmp_path, on_long, still_open):
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp_path, server.url, "spot", on_long)
        acc.ms += 60_000
        buy = signal(acc.ms, 0, "BTC-USDT", "buy", book="macro")
        bought = f"s{acc.ms}-0"
        acc.ms += 60_000
        sell = signal(acc.ms, 1, "BTC-USDT", "sell", book="macro")
        col = acc.run([buy, sell])
        assert _outcomes(col, f"s{acc.ms}-1") == [("dropped", "spot_cannot_short")]
        closes = [(o.outcome, o.reason) for o in col.outcomes if o.signal_id == bought and o.outcome == "closed"]
        assert closes == ([] if still_open else [("closed", "sell_signal")])
        assert len(acc.open_trades()) == still_open
        # nothing was sold but a long's close: no order of the sell signal's own reached OKX
        sides = sorted(r[0] for r in acc.rows("SELECT kind || ':' || side FROM executions"))
        assert sides == ([] if still_open else ["close:sell"]) + ["open:buy"]
        check_invariant(acc, "spot")


def test_a_partial_fill_leaves_the_book_holding_what_the_account_holds(tmp_path):
    """Half of a buy fills (``/sim/fill-ratio``): the rest is cancelled once asked about, and
    the trade and its exit are what filled, less the fee OKX kept in the coin."""
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp_path, server.url, "spot", "keep")
        sim_post(server.url, "fill-ratio", {"ratio": 0.5})
        acc.ms += 60_000
        acc.run([signal(acc.ms, 0, "SOL-USDT", "buy", book="rest")])
        assert acc.rows("SELECT status FROM executions WHERE quantity > 0") == [("cancelled",)]
        (long,) = acc.open_trades()
        assert acc.venue_holds() == {"SOL-USDT": pytest.approx(long.quantity, abs=DUST)}
        check_invariant(acc, "spot")
        sim_post(server.url, "fill-ratio", {"ratio": 1.0})
        acc.ms += 24 * HOUR_MS
        acc.run([tick(acc.ms, "SOL-USDT", PRICES["SOL-USDT"])])
        assert acc.open_trades() == [] and acc.venue_holds() == {}
        check_invariant(acc, "spot")


def test_a_trade_below_the_minimum_order_is_closed_as_dust_and_no_order_is_sent(tmp_path):
    """Half of a buy just above the minimum fills: the coins held are fewer than OKX takes in
    an order, so its exit would be refused at every entry. Its record is closed (``dust``),
    nothing is sent, and the book and the account both hold the coins."""
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        acc = Account(tmp_path, server.url, "spot", "keep")
        sim_post(server.url, "fill-ratio", {"ratio": 0.5})
        acc.run(entries_of(acc, [("tiny", "BTC-USDT", 1.01, "macro")]))
        (trade,) = acc.open_trades()
        assert 0 < trade.quantity < float(MIN_SIZE)
        acc.ms += 24 * HOUR_MS
        col = acc.run([tick(acc.ms, "BTC-USDT", PRICES["BTC-USDT"])])
        assert [(o.outcome, o.reason) for o in col.outcomes if o.signal_id == trade.signal_id] == [("closed", "dust")]
        assert acc.open_trades() == [] and acc.rows("SELECT kind FROM executions") == [("open",)]
        assert acc.venue_holds() == {"BTC-USDT": pytest.approx(trade.quantity, abs=DUST)}
        check_invariant(acc, "spot")
