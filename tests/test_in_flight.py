"""A batch's opening orders leave together: decided one by one with each expected fill
reserved in the book, their intents committed once, then sent. What that must not change:
what a decision sees, what a refusal or a crash leaves behind, and that a replay decides
the same whatever its batches were."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import connectors.recording
from connectors.venues import Rejected
from dataflows.config import load
from helpers import FakeVenue, entry, make_pipeline, model, paper_orders, run_entries, run_flow
from operators.exits import terms_for
from operators.kelly import KellyParams
from operators.orders import Order, client_order_id, expected_fill
from operators.fill import Fill
from operators.portfolio import Portfolio

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recordings" / "argus-sample.jsonl"
CONCENTRATED = "  - filter: concentration\n    max_nav_fraction: 0.008\n"  # room for one 5,000 USD position


def _order(signal_id: str, price: float = 100.0) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "okx", "BTC-USDT", "buy", 50.0, price,
                 1767261600000)


def _state(book: Portfolio) -> tuple:
    return (round(book.cash, 6), {k: round(v, 9) for k, v in book.positions.items() if v}, round(book.nav, 6),
            dict(book.marks), sorted(book.open_trades), book.fills)


def test_release_undoes_a_reservation_and_settle_leaves_the_book_as_the_actual_fill_would():
    book = Portfolio(1_000_000, KellyParams())
    book.on_price("BTC-USDT", 100.0, 1767261600000)
    before = _state(book)
    sig = model("sig-a")
    expected = expected_fill(_order("sig-a"), slippage_bps=10, fee_bps=5)
    assert (expected.price, expected.fee_usd) == pytest.approx((100.1, 50 * 100.1 * 0.0005))
    book.reserve(expected, terms_for(sig, expected))
    assert book.positions[("okx", "BTC-USDT")] == 50.0 and "sig-a" in book.open_trades
    book.release(expected)
    assert _state(book) == before

    unmarked = Portfolio(1_000_000, KellyParams())
    unmarked.reserve(expected, terms_for(sig, expected))
    unmarked.release(expected)
    assert unmarked.marks == {} and unmarked.nav == 1_000_000

    actual = Fill("sig-a", expected.client_order_id, "x-1", "okx", "BTC-USDT", "buy", 50.0, 100.3, 1.0,
                  expected.ts_ms + 1000)
    direct = Portfolio(1_000_000, KellyParams())
    direct.on_price("BTC-USDT", 100.0, 1767261600000)
    direct.apply_fill(actual)
    direct.open(terms_for(sig, actual))
    book.reserve(expected, terms_for(sig, expected))
    book.settle(expected, actual, terms_for(sig, actual))
    assert _state(book) == _state(direct)
    assert book.open_trades["sig-a"] == direct.open_trades["sig-a"]
    # the deadline moved with the fill: only the new one closes the trade, and only once
    assert book.due(expected.ts_ms + 8 * 3_600_000) == []
    assert [t.signal_id for t in book.due(actual.ts_ms + 8 * 3_600_000)] == ["sig-a"]


@pytest.mark.parametrize("first", ["sig-a", "sig-b"])
def test_two_orders_in_flight_on_an_unmarked_symbol_both_released_leave_no_position_and_no_trade(first):
    """Two buys of a symbol no price has come for, both refused (an IOC beyond its band, say):
    the first release once unmarked the symbol under the second, whose release then raised
    a KeyError in the book's step."""
    book = Portfolio(1_000_000, KellyParams())
    fills = {sid: expected_fill(_order(sid, 95_000.0), slippage_bps=0, fee_bps=0) for sid in ("sig-a", "sig-b")}
    for sid, f in fills.items():
        book.reserve(f, terms_for(model(sid), f))
    book.release(fills[first])
    assert book.marks == {"BTC-USDT": 95_000.0}  # still held by the other order's reservation
    book.release(fills["sig-b" if first == "sig-a" else "sig-a"])
    assert book.open_trades == {} and not book.positions.get(("okx", "BTC-USDT"))
    assert book.nav == pytest.approx(1_000_000)


def test_a_later_signal_in_the_batch_sees_the_exposure_of_an_order_still_in_flight(tmp_path):
    p = make_pipeline(tmp_path, CONCENTRATED)
    col = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-1"),
                                    entry("1767261601000-1", signal_id="sig-2")])
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("sig-1", "filled", ""), ("sig-2", "dropped", "concentration")]
    assert paper_orders(p) == (1, 0)


def test_every_intent_of_a_batch_is_committed_before_its_orders_leave(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    seen: list[tuple[int, list[str]]] = []

    def place_many(orders, place):
        # what another process (a restart) would find right now
        with sqlite3.connect(p.ledger_path) as other:
            statuses = [other.execute("SELECT status FROM executions WHERE client_order_id = ?",
                                      (o.client_order_id,)).fetchone()[0] for o in orders]
        seen.append((len(orders), statuses))
        return place(orders)

    entries = [entry(f"1767261601000-{i}", signal_id=f"sig-{i}", symbol=sym)
               for i, sym in enumerate(["BTC-USDT", "ETH-USDT", "SOL-USDT"])]
    col = run_entries(tmp_path, p, entries, venues=FakeVenue(p, place_many))
    assert [o.outcome for o in col.outcomes] == ["filled"] * 3
    assert seen == [(3, ["intent"] * 3)]  # one send for the batch, every intent already durable


def test_a_refused_order_releases_its_reservation_and_the_rest_of_the_batch_fills(tmp_path):
    p = make_pipeline(tmp_path, CONCENTRATED)
    refused = client_order_id("sig-1")

    def place_many(orders, place):
        out = place([o for o in orders if o.client_order_id != refused])
        return [Rejected("insufficient margin") if o.client_order_id == refused else out.pop(0) for o in orders]

    col = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="sig-1"),
                                    entry("1767261601000-1", signal_id="sig-2", symbol="ETH-USDT")],
                      venues=FakeVenue(p, place_many))
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("sig-1", "rejected", "insufficient margin"), ("sig-2", "filled", "")]
    ledger = sqlite3.connect(p.ledger_path)
    assert ledger.execute("SELECT status FROM executions WHERE client_order_id = ?", (refused,)).fetchone() == (
        "rejected",)
    assert ledger.execute("SELECT signal_id FROM trades").fetchall() == [("sig-2",)]
    # the refused order's reservation is gone: the next batch has room on BTC again
    again = run_entries(tmp_path, p, [entry("1767261602000-0", signal_id="sig-3")], name="later.jsonl")
    assert [(o.signal_id, o.outcome) for o in again.outcomes] == [("sig-3", "filled")]


def test_a_crash_while_a_batch_is_sent_leaves_every_entry_pending_and_the_retry_sends_none_twice(tmp_path):
    def accept_then_die(orders, place):
        fills = place(orders[:2])  # the venue took two of the three, then the connection died
        if len(venue.calls) == 1:
            raise ConnectionError("venue connection lost")
        return fills + place(orders[2:])

    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    venue = FakeVenue(p, accept_then_die)
    entries = [entry(f"1767261601000-{i}", signal_id=f"sig-{i}", symbol=sym)
               for i, sym in enumerate(["BTC-USDT", "ETH-USDT", "SOL-USDT"])]
    col = run_entries(tmp_path, p, entries + entries, venues=venue)  # the same three delivered again
    first, again = col.outcomes[:3], col.outcomes[3:]
    assert [(o.outcome, o.terminal, o.reason) for o in first] == [
        ("error", False, "ConnectionError: venue connection lost")] * 3
    assert [(o.outcome, o.terminal) for o in again] == [("filled", True)] * 3
    resolved = [o.events[0].details["resolved_without_send"] for o in again]  # resumed after the attempt
    assert resolved == [True, True, False]  # two asked of the venue, the third sent now
    assert venue.calls == [[client_order_id(f"sig-{i}") for i in range(3)], [client_order_id("sig-2")]]
    assert paper_orders(p) == (3, 0)


def _replay(tmp_path: Path, monkeypatch, batch: int) -> tuple[list, list]:
    monkeypatch.setattr(connectors.recording, "BATCH", batch)
    pipeline = load(REPO / "pipeline.yaml", env={"APEX_STATE_DIR": str(tmp_path / f"batch-{batch}")})
    col = run_flow(pipeline, SAMPLE)
    chains = [(o.stream_id, o.signal_id, o.outcome, o.reason,
               [(e.stage, e.outcome, e.reason, e.ts_ms, e.details) for e in o.events]) for o in col.outcomes]
    fills = sqlite3.connect(pipeline.ledger_path).execute(
        "SELECT client_order_id, price, fee_usd, quantity FROM executions WHERE status = 'filled' ORDER BY seq"
    ).fetchall()
    return chains, fills


def test_a_replay_decides_the_same_whatever_its_batches(tmp_path, monkeypatch):
    """The shipped pipeline (slippage and fees on) over the bundled recording, in batches
    of 512 and of 7: every chain, detail and fill the same."""
    big = _replay(tmp_path, monkeypatch, 512)
    small = _replay(tmp_path, monkeypatch, 7)
    assert len(big[1]) > 900
    assert small == big


def test_an_exit_in_the_same_batch_reaches_the_venue_after_the_open_it_closes(tmp_path):
    """The hard stop fires on a price read in the same batch as the signal, while the
    opening order is still reserved: the open leaves first, then the close."""
    from test_exits import T0, replay, signal, tick

    seen, *_ = replay(tmp_path, [signal(1, T0, "BTC-USDT", "buy", 100.0), tick(T0 + 1000, "BTC-USDT", 94.0)])
    assert [(o.signal_id, o.outcome, o.reason) for o in seen if o.signal_id] == [
        ("t1", "filled", ""), ("t1", "closed", "hard_stop")]
    venue = sqlite3.connect(tmp_path / "state" / "paper-venue.sqlite")
    assert venue.execute("SELECT client_order_id FROM orders ORDER BY rowid").fetchall() == [
        (client_order_id("t1"),), (client_order_id("t1", "close"),)]
