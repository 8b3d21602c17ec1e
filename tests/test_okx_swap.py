"""Shorts on OKX perpetual swaps (``venues.okx.market: swap``), through the real ccxt client
against the simulator: swaps listed as OKX lists them, a short opened and closed in contracts
in isolated margin, leverage set, margin refused for want of USDT, funding read as payments,
reconciliation from positions, a whole run through ``apex run`` then ``apex reconcile``, and
the invariant (the venue's position per instrument is the sum of the books' there, no order
refused for want of holdings, every open trade's exit executable) as a hypothesis property."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import ccxt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.funding import FundingReader
from connectors.ledger import Ledger
from connectors.reconcile import reconcile
from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import running
from connectors.venues import FILLED, Rejected
from connectors.venues import okx_swap as swaps
from connectors.venues.settings import OkxSettings
from dataflows.config import parse
from helpers import KELLY_AND_EXECUTE, audit_query, entry, outbox_events, run_flow, sig, until, write_recording
from ibkr_fixtures import PRICES as IBKR_PRICES
from okx_fixtures import logged, okx_venue, order, raw
from operators import funding
from operators.fill import Fill
from operators.orders import Order
from operators.reconcile import POSITION_MISMATCH
from test_holdings import apex_run, reconcile as apex_reconcile

PRICES = {"BTC-USDT": 100.0, "ETH-USDT": 50.0}


@pytest.fixture
def swap_sim(tmp_path):
    """The simulator (its order log ``okx-orders.jsonl`` in tmp_path) and a venue trading its
    swaps at leverage 2."""
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES) as server:
        venue = okx_venue(server.url, swap=True, leverage=2)
        yield server, venue
        venue.close()


def sent(tmp_path: Path) -> list[dict]:
    """The orders the simulator took, from its order log."""
    return logged(tmp_path / "okx-orders.jsonl")


def position(server, inst: str) -> dict | None:
    got = [p for p in server.sim.swaps.position_records() if p["instId"] == inst]
    return got[0] if got else None


# --- the simulator as OKX ------------------------------------------------------------------------


def test_swaps_are_listed_and_read_by_ccxt_as_okx_lists_them(swap_sim):
    server, _ = swap_sim
    status, doc = raw(server.url, "GET", "/api/v5/public/instruments?instType=SWAP")
    assert status == 200 and doc["code"] == "0"
    btc = next(i for i in doc["data"] if i["instId"] == "BTC-USDT-SWAP")
    assert {k: btc[k] for k in ("instType", "ctVal", "ctMult", "ctValCcy", "settleCcy", "lotSz", "minSz",
                                "tickSz", "ctType")} == {
        "instType": "SWAP", "ctVal": "0.01", "ctMult": "1", "ctValCcy": "BTC", "settleCcy": "USDT",
        "lotSz": "0.01", "minSz": "0.01", "tickSz": "0.1", "ctType": "linear"}
    assert isinstance(btc["instIdCode"], int)
    _, config = raw(server.url, "GET", "/api/v5/account/config")
    assert config["data"][0]["posMode"] == "net_mode"
    ex = ccxt.okx({"apiKey": "k", "secret": "s", "password": "p"})
    ex.urls["api"]["rest"] = server.url
    ex.options["fetchMarkets"] = {"types": ["swap"]}
    ex.has["fetchCurrencies"] = False
    market = ex.load_markets()["BTC/USDT:USDT"]
    assert (market["id"], market["swap"], market["linear"], market["contractSize"], market["settle"]) == (
        "BTC-USDT-SWAP", True, True, 0.01, "USDT")
    assert ex.fetch_funding_rate("BTC/USDT:USDT")["fundingRate"] == pytest.approx(0.0001)


def test_the_book_sees_the_swap_in_coins_under_the_signals_name(swap_sim):
    _, venue = swap_sim
    btc = venue.instrument("okx", "BTC-USDT")
    # a lot of 0.01 contracts of 0.01 BTC each: the book sizes in coins, as on spot
    assert (btc.symbol, btc.lot_size, btc.min_size) == ("BTC-USDT", pytest.approx(0.0001), pytest.approx(0.0001))
    # the swap's own name is no signal's: one position, one name in books and reconciliation
    assert venue.instrument("okx", "BTC-USDT-SWAP") is None
    assert venue.price("okx", "BTC-USDT") == 100.0


# --- a short, opened and closed -------------------------------------------------------------------


def test_a_short_opens_and_closes_in_contracts_in_isolated_margin(swap_sim, tmp_path):
    server, venue = swap_sim
    [opened] = venue.place_many([order("short-1", side="sell", quantity=0.03)])
    assert isinstance(opened, Fill) and (opened.symbol, opened.side, opened.quantity) == ("BTC-USDT", "sell", 0.03)
    assert opened.fee_usd == pytest.approx(0.03 * 100 * 0.0005)  # in USDT on the notional
    [first] = sent(tmp_path)
    assert (first["instId"], first["sz"], first["side"]) == ("BTC-USDT-SWAP", "3", "sell")  # 0.03 BTC = 3 contracts
    pos = position(server, "BTC-USDT-SWAP")
    assert (pos["pos"], pos["mgnMode"], pos["posSide"], pos["lever"]) == ("-3", "isolated", "net", "2")
    assert Decimal(pos["margin"]) == Decimal("1.5")  # 3 USDT of notional at leverage 2
    assert venue.positions() == {("okx", "BTC-USDT"): pytest.approx(-0.03)}
    order_record = next(iter(server.sim.book.orders.values()))
    assert (order_record["tdMode"], order_record["posSide"]) == ("isolated", "net")

    [closed] = venue.place_many([order("short-1-close", side="buy", quantity=0.03)])
    assert isinstance(closed, Fill) and closed.quantity == pytest.approx(0.03)
    assert position(server, "BTC-USDT-SWAP") is None and venue.positions() == {}
    # the margin came back; only the two fees are gone
    assert float(server.sim.book.balances["USDT"]) == pytest.approx(1_000_000 - 2 * 0.0015)


def test_swap_fates_are_pushed_on_the_orders_channel(swap_sim):
    server, venue = swap_sim
    venue.listen()
    assert until(lambda: venue.streaming, 10)
    [ack] = venue.submit([order("ws-1", side="sell", quantity=0.02)])
    assert ack.accepted
    got: list = []
    assert until(lambda: got.extend(venue.updates()) or any(u.status == FILLED for u in got), 10)
    [filled] = [u for u in got if u.status == FILLED]
    assert (filled.fill.side, filled.fill.quantity) == ("sell", pytest.approx(0.02))  # 2 contracts, in coins
    assert filled.fill_id  # OKX's tradeId, from the push
    assert "GET trade/order" not in server.stats()["requests"]  # learnt from the push, never asked


def test_open_orders_are_listed_in_coins(swap_sim):
    server, venue = swap_sim
    server.set_fill_ratio(0.0)  # nothing fills: the order rests
    [ack] = venue.submit([order("rest-1", symbol="ETH-USDT", side="sell", quantity=0.3)])
    assert ack.accepted
    [o] = venue.open_orders()
    assert (o.symbol, o.side, o.quantity) == ("ETH-USDT", "sell", pytest.approx(0.3))


def test_a_sell_beyond_a_long_turns_it_short(swap_sim):
    server, venue = swap_sim
    venue.place_many([order("long-1", symbol="ETH-USDT", side="buy", quantity=0.5)])
    venue.place_many([order("flip-1", symbol="ETH-USDT", side="sell", quantity=0.8)])
    assert position(server, "ETH-USDT-SWAP")["pos"] == "-3"  # 0.3 ETH at 0.1 a contract
    assert venue.positions() == {("okx", "ETH-USDT"): pytest.approx(-0.3)}


def test_a_restarted_simulator_still_holds_its_positions(tmp_path):
    state = tmp_path / "okx-state.json"
    with running(prices=PRICES, state_file=state) as server:
        venue = okx_venue(server.url, swap=True, leverage=2)
        try:
            venue.place_many([order("kept-1", side="sell", quantity=0.05)])
            server.fund(0.001)
        finally:
            venue.close()
    with running(prices=PRICES, state_file=state) as server:
        venue = okx_venue(server.url, swap=True, leverage=2)
        try:
            assert venue.positions() == {("okx", "BTC-USDT"): pytest.approx(-0.05)}
            assert [p.symbol for p in venue.funding()] == ["BTC-USDT"]
            assert position(server, "BTC-USDT-SWAP")["lever"] == "2"
        finally:
            venue.close()


def test_an_order_below_the_smallest_contract_is_refused_before_it_leaves(swap_sim):
    server, venue = swap_sim
    [got] = venue.place_many([order("tiny-1", symbol="ETH-USDT", side="sell", quantity=0.0005)])
    assert isinstance(got, Rejected) and "smallest order" in str(got) and "contracts" in str(got)
    assert server.placements() == {}


def test_margin_short_of_usdt_is_refused_with_51008(swap_sim):
    server, venue = swap_sim
    server.set_balance("USDT", 1.0)
    [got] = venue.place_many([order("big-1", side="sell", quantity=1.0)])  # 100 USDT notional, 50 margin
    assert isinstance(got, Rejected) and "51008" in str(got)
    assert position(server, "BTC-USDT-SWAP") is None


def test_leverage_is_set_once_per_instrument_before_its_first_order(swap_sim):
    server, venue = swap_sim
    venue.place_many([order("lev-1", side="sell", quantity=0.01)])
    venue.place_many([order("lev-2", side="sell", quantity=0.01)])
    assert server.stats()["requests"].get("POST account/set-leverage") == 1
    assert server.sim.swaps.lever_of("BTC-USDT-SWAP") == 2


# --- funding -------------------------------------------------------------------------------------


def test_funding_is_read_as_payments_by_the_signals_name(swap_sim):
    server, venue = swap_sim
    venue.place_many([order("f-short", side="sell", quantity=0.03),
                      order("f-long", symbol="ETH-USDT", side="buy", quantity=0.2)])
    bills = server.fund(0.001)
    assert [b["type"] for b in bills] == ["8", "8"]
    got = venue.funding()
    # a positive rate: the short receives 0.03 × 100 × 0.001, the long pays 0.2 × 50 × 0.001
    assert [(p.symbol, p.amount_usd) for p in got] == [("BTC-USDT", pytest.approx(0.003)),
                                                        ("ETH-USDT", pytest.approx(-0.01))]
    assert len({p.bill_id for p in got}) == 2
    assert venue.funding(since_ms=max(p.ts_ms for p in got) + 1) == []


def test_funding_is_read_page_after_page(swap_sim):
    server, venue = swap_sim
    venue.place_many([order("many", side="sell", quantity=0.01)])
    bills = [b for _ in range(130) for b in server.fund(0.0001)]  # more than OKX's page of 100
    got = venue.funding()
    assert sorted(p.bill_id for p in got) == sorted(b["billId"] for b in bills)


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields,error", [
    ({"market": "swap", "leverage": 0}, "greater than or equal to 1"),
    ({"market": "swap", "leverage": 500}, "less than or equal to 100"),
    ({"leverage": 2}, "leverage applies to market: swap only"),
])
def test_leverage_is_validated(fields, error):
    with pytest.raises(ValidationError, match=error):
        OkxSettings(kind="okx", **fields)


def test_leverage_defaults_to_one():
    assert OkxSettings(kind="okx", market="swap").leverage == 1


@given(coins=st.decimals(min_value=0, max_value=1000, places=6),
       ct_val=st.sampled_from([Decimal("0.01"), Decimal("0.1"), Decimal("1"), Decimal("10")]),
       lot=st.sampled_from([Decimal("0.01"), Decimal("0.1"), Decimal("1")]))
def test_contracts_are_the_coins_rounded_down_to_the_lot(coins, ct_val, lot):
    c = swaps.Contract(ct_val, lot, lot)
    n = swaps.contracts(float(coins), c)
    assert n % lot == 0 and n >= 0
    assert n * ct_val <= coins + Decimal("1e-9") * ct_val * lot
    assert coins - n * ct_val < lot * ct_val


# --- reconciliation ------------------------------------------------------------------------------


def test_reconciliation_reads_swap_positions_not_balances(swap_sim):
    server, venue = swap_sim
    [f] = venue.place_many([order("r-short", side="sell", quantity=0.05)])
    report = reconcile({"okx": venue}, {("okx", "BTC-USDT"): -0.05}, {f.client_order_id})
    assert not report.differences
    wrong = reconcile({"okx": venue}, {}, {f.client_order_id})
    assert [(d.reason, d.symbol, d.venue_qty) for d in wrong.differences] == [
        (POSITION_MISMATCH, "BTC-USDT", pytest.approx(-0.05))]


# --- the whole path: apex run, then apex reconcile ---------------------------------------------


def _pipeline(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{url}', market: swap, "
                    f"leverage: 2}}\nstages:\n{KELLY_AND_EXECUTE}")
    return path


def test_apex_run_shorts_the_swap_and_reconciles_clean(swap_sim, tmp_path):
    server, _ = swap_sim
    rec = write_recording(tmp_path / "rec.jsonl", [
        entry("1767261600000-0", signal_id="short-btc", symbol="BTC-USDT", side="sell", reference_price=100.0),
        entry("1767261600001-0", signal_id="long-eth", symbol="ETH-USDT", side="buy", reference_price=50.0)])
    path = _pipeline(tmp_path, server.url)
    res = apex_run(path, rec)
    assert res.returncode == 0, res.stderr
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        held = dict(db.execute("SELECT symbol, SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) "
                               "FROM executions WHERE status IN ('filled', 'partially_filled', 'cancelled') "
                               "GROUP BY symbol").fetchall())
    finally:
        db.close()
    orders = {o["instId"]: o for o in sent(tmp_path)}
    assert set(orders) == {"BTC-USDT-SWAP", "ETH-USDT-SWAP"}
    assert orders["BTC-USDT-SWAP"]["side"] == "sell"
    at_venue = {p["instId"]: float(p["pos"]) for p in server.sim.swaps.position_records()}
    assert held["BTC-USDT"] < 0 and held["ETH-USDT"] > 0
    assert at_venue["BTC-USDT-SWAP"] * 0.01 == pytest.approx(held["BTC-USDT"])
    assert at_venue["ETH-USDT-SWAP"] * 0.1 == pytest.approx(held["ETH-USDT"])
    again = apex_reconcile(path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "position_mismatch" not in again.stdout + again.stderr


# --- the invariant --------------------------------------------------------------------------------

BOOKS = ("alpha", "beta")
SYMBOLS = ("BTC-USDT", "ETH-USDT")
step = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(BOOKS), st.sampled_from(SYMBOLS), st.sampled_from(["buy", "sell"]),
              st.integers(1, 40), st.sampled_from([1.0, 1.0, 0.5, 0.3])),
    st.tuples(st.just("exit"), st.sampled_from(BOOKS), st.sampled_from(SYMBOLS)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_the_venue_holds_the_sum_of_the_books_and_every_exit_executes(tmp_path_factory, steps):
    """Books alpha and beta share the account; each opens (a buy or a sell, a whole or a part
    filled) and exits its own position. After every step the venue's net position per
    instrument is the sum of the books'; no order is refused for want of holdings (a sell
    with nothing held opens a short); at the end every open trade's exit executes and leaves
    the account flat."""
    books: dict[tuple[str, str], float] = {}
    with running(prices=PRICES) as server:
        venue = okx_venue(server.url, swap=True)
        try:
            n = 0
            for s in steps:
                n += 1
                if s[0] == "open":
                    _, book, symbol, side, lots, ratio = s
                    server.set_fill_ratio(ratio)
                    qty = lots * venue.instrument("okx", symbol).lot_size * 10
                    got = _trade(venue, f"{book}-{n}", symbol, side, qty)
                    server.set_fill_ratio(1.0)
                else:
                    _, book, symbol = s
                    held = books.get((book, symbol), 0.0)
                    if not held:
                        continue
                    got = _trade(venue, f"{book}-x{n}", symbol, "sell" if held > 0 else "buy", abs(held))
                    assert got is not None and got.quantity == pytest.approx(abs(held))  # the exit executed whole
                if got is not None:
                    books[(book, symbol)] = books.get((book, symbol), 0.0) + got.signed_qty
                _assert_sum(venue, books)
            for (book, symbol), held in sorted(books.items()):
                if abs(held) > 1e-12:
                    got = _trade(venue, f"{book}-end-{symbol}", symbol, "sell" if held > 0 else "buy", abs(held))
                    assert got is not None and got.quantity == pytest.approx(abs(held))
            assert venue.positions() == {}
        finally:
            venue.close()


def _trade(venue, signal_id: str, symbol: str, side: str, qty: float) -> Fill | None:
    [got] = venue.place_many([order(signal_id, symbol=symbol, side=side, quantity=qty)])
    if isinstance(got, Rejected):
        assert "51008" not in str(got), got  # never refused for want of holdings
        return None
    return got


def _assert_sum(venue, books: dict[tuple[str, str], float]) -> None:
    want: dict[tuple[str, str], float] = {}
    for (_, symbol), qty in books.items():
        want[("okx", symbol)] = want.get(("okx", symbol), 0.0) + qty
    got = venue.positions()
    for key in set(want) | set(got):
        assert got.get(key, 0.0) == pytest.approx(want.get(key, 0.0), abs=1e-9), key


# --- funding, booked as a cost of the books that held the position ------------------------------


@given(amount=st.floats(-1e4, 1e4, allow_nan=False),
       held=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(-1e3, 1e3, allow_nan=False), max_size=3))
def test_funding_shares_add_up_to_the_payment_by_position(amount, held):
    shares = funding.attribute(amount, held)
    net = sum(held.values())
    if abs(net) < 1e-12:
        assert shares == {}
        return
    assert sum(shares.values()) == pytest.approx(amount, rel=1e-6, abs=1e-6 * max(1.0, *map(abs, shares.values())))
    for book, share in shares.items():
        assert share == pytest.approx(amount * held[book] / net)
    assert all(held[b] for b in shares)  # a book holding nothing pays nothing


def _funding_rows(ledger: Path) -> list[tuple]:
    db = sqlite3.connect(ledger)
    try:
        return db.execute("SELECT signal_id, symbol, quantity, fee_usd FROM executions WHERE kind='funding'"
                          " ORDER BY seq").fetchall()
    finally:
        db.close()


def _funding_events(ledger: Path) -> list[dict]:
    return [e for e in outbox_events(ledger) if e["outcome"] == funding.FUNDING]


TWO_BOOKS = "books:\n  fast: {takes: {source: [trend_following]}}\n  slow: {}\n"


def test_funding_is_booked_once_as_a_cost_of_each_book_by_its_position(swap_sim, tmp_path):
    """Two books short BTC (0.03 and 0.01 by their sizing: whatever each got), a long on ETH
    in one of them; the venue books funding on the net positions; the next start reads the
    bills before trading and books each book its share, once, with its audit event."""
    server, _ = swap_sim
    path = tmp_path / "p.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{server.url}', "
                    f"market: swap}}\n{TWO_BOOKS}stages:\n{KELLY_AND_EXECUTE}")
    rec = write_recording(tmp_path / "rec.jsonl", [
        entry("1767261600000-0", signal_id="fast-btc", source="trend_following", symbol="BTC-USDT", side="sell"),
        entry("1767261600001-0", signal_id="slow-btc", symbol="BTC-USDT", side="sell", suggested_kelly=0.005),
        entry("1767261600002-0", signal_id="slow-eth", symbol="ETH-USDT", side="buy", reference_price=50.0)])
    res = apex_run(path, rec)
    assert res.returncode == 0, res.stderr
    state = tmp_path / "state" / "books"
    held = {book: _held(state / book / "ledger.sqlite") for book in ("fast", "slow")}
    assert held["fast"]["BTC-USDT"] < 0 and held["slow"]["BTC-USDT"] < 0 and held["slow"]["ETH-USDT"] > 0
    bills = {b["instId"]: float(b["balChg"]) for b in server.fund(0.001)}
    assert bills["BTC-USDT-SWAP"] > 0 > bills["ETH-USDT-SWAP"]  # the shorts receive, the long pays

    empty = write_recording(tmp_path / "none.jsonl", [])
    for _ in range(2):  # the second start finds every bill booked already
        res = apex_run(path, empty)
        assert res.returncode == 0, res.stderr
    btc_net = held["fast"]["BTC-USDT"] + held["slow"]["BTC-USDT"]
    for book in ("fast", "slow"):
        rows = _funding_rows(state / book / "ledger.sqlite")
        want = {"BTC-USDT": bills["BTC-USDT-SWAP"] * held[book]["BTC-USDT"] / btc_net}
        if book == "slow":
            want["ETH-USDT"] = bills["ETH-USDT-SWAP"]
        # a fill of nothing whose fee is the cost: a payment received is a negative fee
        assert {sym: -fee for _, sym, _, fee in rows} == pytest.approx(want)
        assert all(qty == 0 for _, _, qty, _ in rows) and len(rows) == len(want)
    # one audit event a share, whether shipped to the audit store yet or still in a ledger's outbox
    pipeline = parse(path.read_text(), path, {})
    shipped = audit_query(pipeline, "SELECT symbol FROM audit_events WHERE outcome = 'funding'")
    waiting = [e["symbol"] for book in ("fast", "slow") for e in _funding_events(state / book / "ledger.sqlite")]
    assert sorted([s for (s,) in shipped] + waiting) == ["BTC-USDT", "BTC-USDT", "ETH-USDT"]
    # what the venue booked is what the books booked, in all
    booked = sum(-fee for book in ("fast", "slow") for *_, fee in _funding_rows(state / book / "ledger.sqlite"))
    assert booked == pytest.approx(sum(bills.values()))


def _held(ledger: Path) -> dict[str, float]:
    db = sqlite3.connect(ledger)
    try:
        return dict(db.execute("SELECT symbol, SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END)"
                               " FROM executions WHERE status='filled' GROUP BY symbol").fetchall())
    finally:
        db.close()


# --- the invariant through the dataflow: random signal sequences of two books -------------------

T0 = 1767261600000
SIGNALS_STREAM, PRICES_STREAM = "argus:signals:stream", "argus:prices:stream"
BOOKS_YAML = "books:\n  fast: {takes: {source: [trend_following]}}\n  slow: {}\n"
flow_step = st.one_of(
    st.tuples(st.just("signal"), st.sampled_from(["trend_following", "macro"]), st.sampled_from(SYMBOLS),
              st.sampled_from(["buy", "sell"]), st.sampled_from([0.002, 0.005, 0.01])),
    st.tuples(st.just("exit"), st.sampled_from(["choppy", "trending_up"])),
)


def _signal_entry(n: int, ms: int, source: str, symbol: str, side: str, kelly: float) -> dict:
    doc = sig(f"inv{n}", source=source, symbol=symbol, side=side, suggested_kelly=kelly,
              reference_price=PRICES[symbol], timestamp=_iso(ms - 5), ttl_seconds=60)
    return {"stream": SIGNALS_STREAM, "id": f"{ms}-0", "fields": {"payload": json.dumps(doc)}}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(flow_step, min_size=1, max_size=8), ratio=st.sampled_from([1.0, 0.5]))
def test_through_the_dataflow_the_venue_holds_the_sum_of_the_books(tmp_path_factory, steps, ratio):
    """Two books trade swaps on one account through the real dataflow: buys and sells (a
    sell with nothing held opens a short), regime changes that close every trade whose exit
    rules name them, every order filled whole or in part. After the run the venue's position
    per instrument is the sum of the books' (their ledgers' fills), no order was refused for
    want of holdings, and every position the books hold can be closed at the venue."""
    tmp = tmp_path_factory.mktemp("inv")
    entries = []
    for n, s in enumerate(steps):
        ms = T0 + n * 1000
        if s[0] == "signal":
            entries.append(_signal_entry(n, ms, *s[1:]))
        else:
            entries.append({"stream": PRICES_STREAM, "id": f"{ms}-0", "fields": {"regime": s[1]}})
    with running(prices=PRICES) as server:
        server.set_fill_ratio(ratio)
        venue = okx_venue(server.url, swap=True, fill_wait_s=0.2)
        try:
            venue.instruments()  # the lots known before the replay, which would outrun their loading
            path = tmp / "p.yaml"
            text = (f"state_dir: {tmp / 'state'}\nvenues:\n  okx: {{kind: okx, url: '{server.url}', market: swap}}\n"
                    f"{BOOKS_YAML}stages:\n{KELLY_AND_EXECUTE}")
            pipeline = parse(text, path, {})
            run_flow(pipeline, write_recording(tmp / "rec.jsonl", entries), venues={"okx": venue})
            venue = okx_venue(server.url, swap=True)  # the run closed its own at its end
            ledgers = {b: tmp / "state" / "books" / b / "ledger.sqlite" for b in ("fast", "slow")}
            books = {(b, sym): qty for b, path_ in ledgers.items() if path_.exists()
                     for sym, qty in _final_positions(path_).items()}
            assert not [r for p in ledgers.values() if p.exists() for r in _refusals(p) if "51008" in r]
            _assert_sum(venue, books)
            server.set_fill_ratio(1.0)
            for (book, symbol), held in sorted(books.items()):  # every exit executable, whole
                if abs(held) > 1e-12:
                    got = _trade(venue, f"{book}-close-{symbol}", symbol, "sell" if held > 0 else "buy", abs(held))
                    assert got is not None and got.quantity == pytest.approx(abs(held))
            assert venue.positions() == {}
        finally:
            venue.close()


def _final_positions(ledger: Path) -> dict[str, float]:
    db = sqlite3.connect(ledger)
    try:
        return dict(db.execute("SELECT symbol, SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END)"
                               " FROM executions WHERE status='filled' OR (status='cancelled' AND quantity > 0)"
                               " GROUP BY symbol").fetchall())
    finally:
        db.close()


def _refusals(ledger: Path) -> list[str]:
    db = sqlite3.connect(ledger)
    try:
        return [r or "" for (r,) in db.execute("SELECT reason FROM executions WHERE status='rejected'")]
    finally:
        db.close()


# --- both venues at once: a fault at OKX while IBKR trades ---------------------------------------


def test_swaps_with_a_lost_answer_at_okx_while_ibkr_trades(swap_sim, tmp_path):
    """OKX in swap mode loses its answer to the first placement (the venue took it) while
    IBKR trades beside it: the short is asked about, never sent twice, and ends booked; IBKR's
    order is untouched by it; the venue's swap positions equal the ledger's, and a reconcile
    of both venues is clean."""
    server, _ = swap_sim
    server.arm("drop", times=1)  # taken, then the connection cut before the answer
    with ibkr_running(orders_log=tmp_path / "ibkr-orders.jsonl", cash=1_000_000.0, prices=IBKR_PRICES) as ibkr:
        path = tmp_path / "p.yaml"
        path.write_text(f"state_dir: {tmp_path / 'state'}\nvenues:\n"
                        f"  okx: {{kind: okx, url: '{server.url}', market: swap}}\n"
                        f"  ibkr: {{kind: ibkr, port: {ibkr.port}, account: DU1234567}}\n"
                        f"stages:\n{KELLY_AND_EXECUTE}")
        rec = write_recording(tmp_path / "rec.jsonl", [
            entry("1767261600000-0", signal_id="short-btc", symbol="BTC-USDT", side="sell"),
            entry("1767261600001-0", signal_id="long-aapl", venue="ibkr", symbol="AAPL", side="buy"),
            entry("1767261600002-0", signal_id="short-eth", symbol="ETH-USDT", side="sell", reference_price=50.0)])
        res = apex_run(path, rec)
        assert res.returncode == 0, res.stderr
        assert sorted(server.placements().values()) == [1, 1]  # each short sent once, lost answer or not
        held = _held(tmp_path / "state" / "ledger.sqlite")
        at_okx = {p["instId"]: float(p["pos"]) for p in server.sim.swaps.position_records()}
        assert held["BTC-USDT"] < 0 and held["ETH-USDT"] < 0 and held["AAPL"] > 0
        assert at_okx["BTC-USDT-SWAP"] * 0.01 == pytest.approx(held["BTC-USDT"])
        assert at_okx["ETH-USDT-SWAP"] * 0.1 == pytest.approx(held["ETH-USDT"])
        assert [o.symbol for o in ibkr.orders()] == ["AAPL"]
        again = apex_reconcile(path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "position_mismatch" not in again.stdout + again.stderr


# --- the funding reader while a run goes on ------------------------------------------------------


def _ledger_with(path: Path, *fills: Fill) -> Path:
    ledger = Ledger(path)
    try:
        ledger.begin()
        for f in fills:
            ledger.record_intent(Order(f.client_order_id, f.signal_id, "open", f.venue, f.symbol, f.side, f.quantity,
                                       f.price, f.ts_ms))
            ledger.record_fill(f)
        ledger.commit()
    finally:
        ledger.close()
    return path


def test_the_reader_hands_each_book_its_share_as_funding_comes(swap_sim, tmp_path, caplog):
    server, venue = swap_sim
    fills = {}
    for book, qty in (("a", 0.03), ("b", 0.01)):
        [f] = venue.place_many([order(f"{book}-short", side="sell", quantity=qty)])
        fills[book] = f
    ledgers = {b: _ledger_with(tmp_path / f"{b}.sqlite", f) for b, f in fills.items()}
    got: list[funding.FundingEvent] = []
    reader = FundingReader(lambda: {"okx": venue}, ledgers, got.append, every_s=0.05).start()
    try:
        assert got == []  # nothing booked yet
        [bill] = server.fund(0.001)  # the shorts receive 0.04 × 100 × 0.001
        assert until(lambda: len(got) == 2, 10)
        assert {e.book: e.amount_usd for e in got} == pytest.approx({"a": 0.003, "b": 0.001})
        assert {e.bill_id for e in got} == {bill["billId"]} and all(e.venue_qty == pytest.approx(-0.04) for e in got)
        venue.place_many([order("nobody", symbol="ETH-USDT", side="buy", quantity=0.1)])  # no book's position
        server.fund(0.001, "ETH-USDT")
        assert until(lambda: "on no book's position" in caplog.text, 10)
        assert len(got) == 2
    finally:
        reader.stop()
