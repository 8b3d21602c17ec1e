"""Orders in flight do not stop decisions: a venue that answers later (``asynchronous``)
is handed the orders, the entry is done once the venue has accepted its order, the book
keeps the order's expected fill reserved while the venue works it, and its fate, when it
comes, is settled in the book, the ledger and the signal's chain."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from connectors.entry import Entry
from connectors.venues import CANCELLED, FILLED, Ack, OrderUpdate
from connectors.venues.paper import PaperVenue
from dataflows.portfolio_logic import PortfolioLogic
from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import validator
from helpers import STREAM, make_pipeline, payload, sig
from operators.orders import client_order_id


class LaterVenue:
    """The paper venue's fills, told only when the test lets them go: ``release`` hands
    the fates of the orders submitted so far to the next ``updates``. ``cancel_rest``:
    each fate is a cancelled order with that share filled."""

    name = "later"
    asynchronous = True

    def __init__(self, path: Path, cancel_rest: float | None = None):
        self.paper, self.cancel_rest = PaperVenue(path), cancel_rest
        self.held: list[OrderUpdate] = []
        self.ready: list[OrderUpdate] = []
        self.submitted: list[str] = []

    def submit(self, orders):
        self.submitted += [o.client_order_id for o in orders]
        acks = []
        for order, fill in zip(orders, self.paper.place_many(orders), strict=True):
            acks.append(Ack(order.client_order_id, True))
            if self.cancel_rest is None:
                self.held.append(OrderUpdate(order.client_order_id, FILLED, fill))
            else:
                part = type(fill)(*[getattr(fill, f) for f in fill.__slots__])
                object.__setattr__(part, "quantity", fill.quantity * self.cancel_rest)
                self.held.append(OrderUpdate(order.client_order_id, CANCELLED, part, "rest cancelled"))
        return acks

    def release(self) -> None:
        self.ready, self.held = self.ready + self.held, []

    def updates(self):
        out, self.ready = self.ready, []
        return out

    def place_many(self, orders):  # closes wait for their fate
        return self.paper.place_many(orders)

    def __getattr__(self, name):
        return getattr(self.paper, name)


T0 = 1767261600000


def _item(p, n: int, **overrides):
    ms = T0 + n * 1000
    doc = sig(f"sig-{n}", timestamp=f"2026-01-01T10:00:{n:02d}.000Z", **overrides)
    entry = Entry(STREAM, f"{ms}-0", {"payload": payload(doc)}, ms, time.perf_counter_ns())
    return validator(frozenset({p.prices.stream}), p.limits)(entry)


def _logic(tmp_path, venue):
    p = make_pipeline(tmp_path, "  - filter: concentration\n    max_nav_fraction: 0.01\n")
    step = PortfolioStep(p, lambda: {"okx": venue, "ibkr": venue})
    return p, PortfolioLogic({"": step}, None)


def _status(p, signal_id: str) -> str:
    db = sqlite3.connect(p.ledger_path)
    try:
        return db.execute("SELECT status FROM executions WHERE signal_id = ?", (signal_id,)).fetchone()[0]
    finally:
        db.close()


def test_an_entry_is_done_at_acceptance_and_its_fill_settles_later(tmp_path):
    venue = LaterVenue(tmp_path / "venue.sqlite")
    p, logic = _logic(tmp_path, venue)
    # 8,000 USD of BTC on a 1,000,000 book, within its 1% limit
    (out,), _ = logic.on_batch([_item(p, 1, suggested_kelly=0.05, max_position_usd=8000.0)])
    assert (out.outcome, out.reason, out.terminal, out.late) == ("sent", "working at later", True, False)
    assert [(e.stage, e.outcome) for e in out.events][-2:] == [("EXECUTION_ATTEMPT", "sent"),
                                                              ("EXECUTION_CONFIRMED", "accepted")]
    assert _status(p, "sig-1") == "accepted"
    assert logic.notify_at() is not None  # while the venue works it, the step looks again

    # the same symbol again while the first order is working: its reservation counts
    (second,), _ = logic.on_batch([_item(p, 2, suggested_kelly=0.05, max_position_usd=8000.0)])
    assert (second.outcome, second.reason) == ("dropped", "concentration")
    assert venue.submitted == [client_order_id("sig-1")]

    venue.release()
    (late,), _ = logic.on_notify()
    assert (late.stream_id, late.outcome, late.late) == (out.stream_id, "filled", True)
    assert [(e.seq, e.stage, e.outcome) for e in late.events[-3:]] == [
        (4, "EXECUTION_CONFIRMED", "accepted"), (5, "EXECUTION_CONFIRMED", "filled"), (6, "TRADE_OPEN", "opened")]
    assert _status(p, "sig-1") == "filled"
    assert logic.notify_at() is None
    # the trade is in the book: the next signal for the symbol still sees its exposure
    (third,), _ = logic.on_batch([_item(p, 3, suggested_kelly=0.05, max_position_usd=8000.0)])
    assert (third.outcome, third.reason) == ("dropped", "concentration")


def test_a_partial_fill_is_booked_at_what_filled_and_the_rest_released(tmp_path):
    venue = LaterVenue(tmp_path / "venue.sqlite", cancel_rest=0.25)
    p, logic = _logic(tmp_path, venue)
    (out,), _ = logic.on_batch([_item(p, 1, suggested_kelly=0.05, max_position_usd=8000.0)])
    venue.release()
    (late,), _ = logic.on_notify()
    fill = [e for e in late.events if e.stage == "EXECUTION_CONFIRMED" and e.outcome == "filled"][0]
    db = sqlite3.connect(p.ledger_path)
    (qty,) = db.execute("SELECT quantity FROM executions WHERE signal_id = 'sig-1'").fetchone()
    db.close()
    assert fill.details["quantity"] == qty == out.events[2].details["quantity"] * 0.25
    # 2,000 USD held, the rest's reservation released: another 5,000 fits the 10,000 USD limit
    (more,), _ = logic.on_batch([_item(p, 2, suggested_kelly=0.05, max_position_usd=5000.0)])
    assert more.outcome == "sent"


def test_a_restart_finds_the_fate_of_an_order_left_working(tmp_path):
    """The process stopped while the venue worked the order: the next start asks the venue
    (the order is in the ledger as accepted) and books what it filled, sending nothing."""
    venue = LaterVenue(tmp_path / "venue.sqlite")
    p, logic = _logic(tmp_path, venue)
    logic.on_batch([_item(p, 1, suggested_kelly=0.05, max_position_usd=8000.0)])
    assert _status(p, "sig-1") == "accepted"
    logic.step.ledger.close()

    again = LaterVenue(tmp_path / "venue.sqlite")
    _, restarted = _logic(tmp_path, again)
    outs, _ = restarted.on_batch([_item(p, 2, suggested_kelly=0.05, max_position_usd=8000.0)])
    assert [(o.signal_id, o.outcome) for o in outs] == [("sig-1", "filled"), ("sig-2", "dropped")]
    assert _status(p, "sig-1") == "filled" and again.submitted == []
    assert outs[1].reason == "concentration"
