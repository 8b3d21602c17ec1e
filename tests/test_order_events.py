"""The book's step with a remote venue: it decides and commits, emits orders as commands
after its commit, and learns every fate from venue events, applied through the order
state machine. Driven here by entries and events alone: nothing is sent, no thread runs."""

from __future__ import annotations

import sqlite3
import time

import pytest

from bytewax.dataflow import Dataflow
import bytewax.operators as op
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.entry import Entry
from connectors.sender import CHECK, SUBMIT, Command
from connectors.venues.paper import PaperVenue
from dataflows.portfolio_logic import PortfolioLogic
from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import validator
from helpers import STREAM, make_pipeline, payload, sig
from operators.audit import Outcome
from operators.fill import Fill
from operators.order_fsm import VenueEvent
from operators.orders import client_order_id
from operators.protection import not_marketable

T0 = 1767261600000
PRICES = "argus:prices:stream"


class RemotePaper(PaperVenue):
    """The paper venue's instrument rules, declared across a network: the step must never
    call it for an order (its fates come only as the events a test hands in)."""

    name = "okx"
    asynchronous = True

    def place_many(self, orders):
        raise AssertionError("a remote venue is never called from the step")

    def lookup(self, order):
        raise AssertionError("a remote venue is never asked from the step")


def _item(p, n: int, **overrides):
    ms = T0 + n * 1000
    doc = sig(f"sig-{n}", **{"timestamp": f"2026-01-01T10:00:{n:02d}.000Z", "suggested_kelly": 0.05,
                              "max_position_usd": 8000.0, **overrides})
    entry = Entry(STREAM, f"{ms}-0", {"payload": payload(doc)}, ms, time.perf_counter_ns())
    return validator(frozenset({p.prices.stream}), p.limits)(entry)


def _tick(p, n: int, price: float, symbol: str = "BTC-USDT"):
    ms = T0 + n * 1000
    entry = Entry(PRICES, f"{ms}-0", {"symbol": symbol, "price": str(price)}, ms, time.perf_counter_ns())
    return validator(frozenset({p.prices.stream}), p.limits)(entry)


def _logic(tmp_path, limit: float = 0.01):
    p = make_pipeline(tmp_path, f"  - filter: concentration\n    max_nav_fraction: {limit}\n")
    venue = RemotePaper(tmp_path / "venue.sqlite")
    step = PortfolioStep(p, lambda: {"okx": venue, "ibkr": venue})
    return p, PortfolioLogic({"": step}, None)


def _split(items):
    return ([i for i in items if isinstance(i, Outcome)], [i for i in items if isinstance(i, Command)])


def _row(p, signal_id: str, kind: str = "open"):
    db = sqlite3.connect(p.ledger_path)
    try:
        return db.execute("SELECT status, quantity, price FROM executions WHERE signal_id = ? AND kind = ?",
                          (signal_id, kind)).fetchone()
    finally:
        db.close()


def _fill(cmd: Command, qty: float, price: float, fee: float = 0.0) -> Fill:
    o = cmd.order
    return Fill(o.signal_id, o.client_order_id, "x-" + o.client_order_id[-6:], o.venue, o.symbol, o.side, qty,
                price, fee, o.ts_ms + 50)


def _ev(cmd: Command, status: str, fill: Fill | None = None, fill_id: str = "", reason: str = "") -> VenueEvent:
    return VenueEvent("", cmd.order.client_order_id, status, fill, fill_id, reason)


def test_an_entry_is_done_once_its_intent_is_durable_and_its_order_leaves_as_a_command(tmp_path):
    p, logic = _logic(tmp_path)
    (out,), (cmd,) = _split(logic.on_batch([_item(p, 1)])[0])
    assert (out.outcome, out.reason, out.terminal, out.late) == ("sent", "sent to okx", True, False)
    assert (cmd.action, cmd.order.client_order_id, cmd.book) == (SUBMIT, client_order_id("sig-1"), "")
    assert cmd.deadline is not None and cmd.deadline > time.time()  # what is left of its TTL
    assert _row(p, "sig-1")[0] == "intent"  # committed before the command was handed on

    # the same symbol again while the first order is out: its reservation counts
    (second,), cmds = _split(logic.on_batch([_item(p, 2)])[0])
    assert (second.outcome, second.reason, cmds) == ("dropped", "concentration", [])

    outs, _ = _split(logic.on_batch([_ev(cmd, "accepted")])[0])
    assert outs == [] and _row(p, "sig-1")[0] == "accepted"
    (late,), _ = _split(logic.on_batch([_ev(cmd, "filled", _fill(cmd, cmd.order.quantity, 100.5), "t1")])[0])
    assert (late.stream_id, late.outcome, late.late) == (out.stream_id, "filled", True)
    assert [(e.stage, e.outcome) for e in late.events[-3:]] == [
        ("EXECUTION_CONFIRMED", "accepted"), ("EXECUTION_CONFIRMED", "filled"), ("TRADE_OPEN", "opened")]
    assert _row(p, "sig-1") == ("filled", cmd.order.quantity, 100.5)
    assert logic.book.positions[("okx", "BTC-USDT")] == cmd.order.quantity
    # the trade is in the book: the next signal for the symbol still sees its exposure
    (third,), _ = _split(logic.on_batch([_item(p, 3)])[0])
    assert (third.outcome, third.reason) == ("dropped", "concentration")


def test_a_partial_fill_moves_the_book_by_what_filled_and_a_cancel_releases_the_rest(tmp_path):
    p, logic = _logic(tmp_path)
    _, (cmd,) = _split(logic.on_batch([_item(p, 1)])[0])
    q = cmd.order.quantity
    cash0 = logic.book.cash
    logic.on_batch([_ev(cmd, "partially_filled", _fill(cmd, q / 4, 99.0, 0.1), "t1")])
    assert _row(p, "sig-1")[0] == "partially_filled"
    # a quarter at 99 really, three quarters still as expected (100, no slippage nor fee here)
    assert logic.book.cash == pytest.approx(cash0 + q / 4 * (100.0 - 99.0) - 0.1)
    assert logic.book.positions[("okx", "BTC-USDT")] == q
    (late,), _ = _split(logic.on_batch([_ev(cmd, "cancelled", _fill(cmd, q / 4, 99.0, 0.1), "t1", "rest cancelled")])[0])
    assert (late.outcome, _row(p, "sig-1")) == ("filled", ("cancelled", q / 4, 99.0))
    assert logic.book.positions[("okx", "BTC-USDT")] == q / 4
    assert logic.book.open_trades["sig-1"].quantity == q / 4
    # 2,000 USD held, the rest's reservation released: another order fits the limit now
    (more,), _ = _split(logic.on_batch([_item(p, 2, max_position_usd=5000.0)])[0])
    assert more.outcome == "sent"


def test_a_fill_told_twice_is_booked_once_and_an_illegal_change_is_refused(tmp_path):
    p, logic = _logic(tmp_path)
    _, (cmd,) = _split(logic.on_batch([_item(p, 1)])[0])
    q = cmd.order.quantity
    half = _ev(cmd, "partially_filled", _fill(cmd, q / 2, 100.0), "t1")
    logic.on_batch([half, half])
    logic.on_batch([half])
    db = sqlite3.connect(p.ledger_path)
    assert db.execute("SELECT COUNT(*), SUM(quantity) FROM fills").fetchone() == (1, q / 2)
    done = _ev(cmd, "filled", _fill(cmd, q, 100.0), "t2")
    (late,), _ = _split(logic.on_batch([done, done, half])[0])
    assert late.outcome == "filled" and db.execute("SELECT COUNT(*) FROM fills").fetchone() == (2,)
    # a venue's refusal after the fill: refused by the state machine, the ledger untouched
    outs, _ = _split(logic.on_batch([_ev(cmd, "rejected", reason="late nonsense")])[0])
    assert outs == [] and _row(p, "sig-1")[0] == "filled"
    assert logic.step.illegal[("filled", "rejected")] == 1
    assert logic.book.positions[("okx", "BTC-USDT")] == q


def test_a_refusal_releases_the_reservation_and_ttl_running_out_unsent_is_named(tmp_path):
    p, logic = _logic(tmp_path)
    _, (a,) = _split(logic.on_batch([_item(p, 1)])[0])
    (late,), _ = _split(logic.on_batch([_ev(a, "rejected", reason="51008 insufficient balance")])[0])
    assert (late.outcome, late.reason, _row(p, "sig-1")[0]) == ("rejected", "51008 insufficient balance", "rejected")
    assert logic.book.positions[("okx", "BTC-USDT")] == 0 and "sig-1" not in logic.book.open_trades
    _, (b,) = _split(logic.on_batch([_item(p, 2)])[0])
    (late,), _ = _split(logic.on_batch([_ev(b, "denied", reason="not sent: its signal's TTL ran out")])[0])
    assert (late.outcome, _row(p, "sig-2")[0]) == ("expired", "denied")


def test_an_exit_waits_for_the_open_still_working_then_closes_what_it_filled(tmp_path):
    """The crash of a recording through the simulators: an exit fired for a trade whose
    opening order was still working, and the open's fill came after."""
    p, logic = _logic(tmp_path)
    _, (cmd,) = _split(logic.on_batch([_tick(p, 0, 100.0), _item(p, 1)])[0])
    q = cmd.order.quantity
    logic.on_batch([_ev(cmd, "accepted")])
    outs, cmds = _split(logic.on_batch([_tick(p, 2, 90.0)])[0])  # through its 5% stop
    assert cmds == [] and [o.outcome for o in outs] == ["tick"]
    outs, (close,) = _split(logic.on_batch([_ev(cmd, "filled", _fill(cmd, q * 0.6, 100.0), "t1")])[0])
    assert [o.outcome for o in outs] == ["filled"]
    assert (close.action, close.order.kind, close.order.side, close.order.quantity) == (SUBMIT, "close", "sell", q * 0.6)
    assert _row(p, "sig-1", "close")[0] == "intent"
    outs, cmds = _split(logic.on_batch([_tick(p, 3, 89.0)])[0])  # closing already: no second close
    assert cmds == []
    (closed,), _ = _split(logic.on_batch([_ev(close, "filled", _fill(close, q * 0.6, 89.5), "t2")])[0])
    assert (closed.outcome, closed.reason, closed.stream_id) == ("closed", "hard_stop", "")
    assert "sig-1" not in logic.book.open_trades and logic.book.positions[("okx", "BTC-USDT")] == 0
    assert _row(p, "sig-1", "close") == ("filled", q * 0.6, 89.5)


def test_one_tick_closing_ten_trades_emits_ten_commands_and_waits_for_none(tmp_path):
    p, logic = _logic(tmp_path, limit=0.5)
    items = [_tick(p, 0, 100.0)] + [_item(p, n, symbol="BTC-USDT", max_position_usd=1000.0) for n in range(1, 11)]
    _, cmds = _split(logic.on_batch(items)[0])
    assert len(cmds) == 10
    for c in cmds:
        logic.on_batch([_ev(c, "filled", _fill(c, c.order.quantity, 100.0), "t-" + c.order.signal_id)])
    outs, closes = _split(logic.on_batch([_tick(p, 20, 90.0)])[0])
    assert len(closes) == 10 and {c.order.kind for c in closes} == {"close"}
    assert [o.outcome for o in outs] == ["tick"]  # the tick's own outcome; the closes' come as events


def test_a_restart_follows_the_orders_left_working_and_sends_nothing(tmp_path):
    p, logic = _logic(tmp_path)
    _, (cmd,) = _split(logic.on_batch([_item(p, 1)])[0])
    logic.on_batch([_ev(cmd, "accepted")])
    logic.step.ledger.close()

    _, again = _logic(tmp_path)
    outs, cmds = _split(again.on_batch([_item(p, 2)])[0])
    assert [(c.action, c.order.client_order_id) for c in cmds] == [(CHECK, cmd.order.client_order_id)]
    assert [(o.signal_id, o.outcome, o.reason) for o in outs] == [("sig-2", "dropped", "concentration")]
    (late,), _ = _split(again.on_batch([_ev(cmd, "filled", _fill(cmd, cmd.order.quantity, 100.2), "t1")])[0])
    assert (late.signal_id, late.outcome) == ("sig-1", "filled") and _row(p, "sig-1")[0] == "filled"
    assert again.book.positions[("okx", "BTC-USDT")] == cmd.order.quantity


def test_the_step_under_bytewax_fed_entries_and_venue_events(tmp_path):
    """The book step in a Bytewax flow of its own, fed by a ``TestingSource`` of an entry and
    then the venue's events about its order, as the merged stream brings them: the command
    it emits once, the entry's outcome, and the fill's late outcome."""
    p, logic = _logic(tmp_path)
    (cmd,) = _split(logic.on_batch([_item(p, 1)])[0])[1]  # the order the flow will decide, learnt aside
    p2, _ = _logic(tmp_path / "flow")
    venue = RemotePaper(tmp_path / "flow-venue.sqlite")
    steps = {"": PortfolioStep(p2, lambda: {"okx": venue, "ibkr": venue})}
    flow = Dataflow("step")
    items = [_item(p2, 1), _ev(cmd, "accepted"), _ev(cmd, "filled", _fill(cmd, cmd.order.quantity, 100.0), "t"),
             _ev(cmd, "filled", _fill(cmd, cmd.order.quantity, 100.0), "t")]  # the last told twice
    s = op.input("entries_and_answers", flow, TestingSource(items))
    keyed = op.key_on("key", s, lambda item: item.book or "portfolio")
    decided = op.stateful_batch("portfolio", keyed, lambda _: PortfolioLogic(steps, None))
    got: list = []
    op.output("out", op.map("unkey", decided, lambda kv: kv[1]), TestingSink(got))
    run_main(flow)
    outs, cmds = _split(got)
    assert [(c.action, c.order.client_order_id) for c in cmds] == [(SUBMIT, cmd.order.client_order_id)]
    assert [(o.signal_id, o.outcome, o.late) for o in outs] == [("sig-1", "sent", False), ("sig-1", "filled", True)]
    assert _row(p2, "sig-1")[0] == "filled"


def test_a_buy_still_at_the_venue_never_hides_the_exposure_of_the_sells_decided_beside_it(tmp_path):
    """The venue bench's IBKR burst: buys and sells of one symbol alternate, all decided before
    any answer; the venue cuts every buy at its limit and fills every sell. Counted as filled,
    each working buy had let the next sell through, and the book ended short past the limit."""
    p, logic = _logic(tmp_path)  # limit 10,000 USD; each order 4,000
    items = [_item(p, n, max_position_usd=4000.0, side="buy" if n % 2 else "sell") for n in range(1, 7)]
    outs, cmds = _split(logic.on_batch(items)[0])
    assert [(o.signal_id, o.outcome, o.reason) for o in outs] == [
        ("sig-1", "sent", "sent to okx"), ("sig-2", "sent", "sent to okx"), ("sig-3", "sent", "sent to okx"),
        ("sig-4", "dropped", "concentration"), ("sig-5", "dropped", "concentration"),
        ("sig-6", "dropped", "concentration")]
    for cmd in cmds:
        if cmd.order.side == "buy":
            logic.on_batch([_ev(cmd, "cancelled", reason=not_marketable(cmd.order.limit, cmd.order.limit * 1.02))])
        else:
            logic.on_batch([_ev(cmd, "filled", _fill(cmd, cmd.order.quantity, cmd.order.price), "t1")])
    held = logic.book.positions[("okx", "BTC-USDT")]
    assert held < 0 and abs(held) * logic.book.marks["BTC-USDT"] <= 0.01 * logic.book.nav
