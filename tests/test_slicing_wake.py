"""A sliced order's children on a quiet stream: the book's step wakes itself when the next
child falls due (``notify_at``) and sends it as a command after its intent is committed,
with no entry to bring it. Driven by entries and a test's wall clock: nothing is sent."""

from __future__ import annotations

import time

from connectors.entry import Entry
from connectors.sender import SUBMIT
from dataflows.config import parse
from dataflows.portfolio_logic import PortfolioLogic
from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import validator
from helpers import KELLY_AND_EXECUTE, STREAM, payload, sig
from operators.orders import client_order_id
from operators.slicing import child_order_id
from operators.trading_state import HALTED
from test_order_events import PRICES, RemotePaper, _row, _split

T0 = 1767261600000


def _logic(tmp_path):
    text = (f"state_dir: {tmp_path / 'state'}\nstages:\n  - filter: confidence\n{KELLY_AND_EXECUTE}"
            "      slicing: {max_volume_share: 0.05, window_s: 300}\n")
    p = parse(text, tmp_path / "pipeline.yaml", {})
    venue = RemotePaper(tmp_path / "venue.sqlite")
    step = PortfolioStep(p, lambda: {"okx": venue, "ibkr": venue})
    wall = [1_900_000_000.0]
    step.wall = lambda: wall[0]
    return p, step, PortfolioLogic({"": step}, None), wall


def _entry(p, stream: str, ms: int, fields: dict):
    return validator(frozenset({p.prices.stream}), p.limits)(Entry(stream, f"{ms}-0", fields, ms,
                                                                   time.perf_counter_ns()))


def test_a_quiet_book_wakes_for_each_child_and_sends_it_once(tmp_path):
    p, step, logic, wall = _logic(tmp_path)
    ticks = [_entry(p, PRICES, T0 - 50_000 + i * 10_000, {"symbol": "BTC-USDT", "price": "100", "volume": "40"})
             for i in range(5)]  # 200 in the minute: 5 % is 10
    doc = sig("sig-1", timestamp="2026-01-01T10:00:00.000Z", suggested_kelly=0.05, max_position_usd=3000.0)
    outs, cmds = _split(logic.on_batch([*ticks, _entry(p, STREAM, T0, {"payload": payload(doc)})])[0])
    parent = client_order_id("sig-1")
    (own,) = [o for o in outs if o.signal_id == "sig-1"]
    assert (own.outcome, own.reason) == ("sliced", "3 children over 200 s")  # 30 BTC in children of 10
    assert [(c.action, c.order.client_order_id, c.order.quantity) for c in cmds] == [
        (SUBMIT, child_order_id(parent, 0), 10.0)]
    assert _row(p, "sig-1#0")[0] == "intent"  # committed before its command was handed on

    assert step.slicing_wake() == wall[0] + 100  # the next child's time, on the stream's clock
    assert logic.on_notify()[0] == []  # woken early (the heartbeat): nothing is due yet
    wall[0] += 100
    (child,), (cmd,) = _split(logic.on_notify()[0])
    assert (child.signal_id, child.outcome, child.stream_id) == ("sig-1#1", "sent", "")  # no entry to ack
    assert (cmd.action, cmd.order.client_order_id, cmd.order.signal_id) == (SUBMIT, child_order_id(parent, 1),
                                                                             "sig-1#1")
    assert _row(p, "sig-1#1")[0] == "intent"
    assert logic.on_notify()[0] == []  # never twice
    wall[0] += 100
    _, (cmd,) = _split(logic.on_notify()[0])
    assert cmd.order.client_order_id == child_order_id(parent, 2)
    assert step.slicing_wake() is None  # the plan is done
    assert logic.notify_at() is not None  # the heartbeat's wake-up goes on


def test_an_order_too_large_for_a_halted_book_is_refused_not_sliced(tmp_path):
    p, step, logic, wall = _logic(tmp_path)
    ticks = [_entry(p, PRICES, T0 - 50_000 + i * 10_000, {"symbol": "BTC-USDT", "price": "100", "volume": "40"})
             for i in range(5)]
    logic.on_batch(ticks)
    step.desk.executor.trading = HALTED
    doc = sig("sig-1", timestamp="2026-01-01T10:00:00.000Z", suggested_kelly=0.05, max_position_usd=3000.0)
    outs, cmds = _split(logic.on_batch([_entry(p, STREAM, T0, {"payload": payload(doc)})])[0])
    assert [(o.outcome, o.reason) for o in outs if o.signal_id == "sig-1"] == [("dropped", "halted")]
    assert cmds == [] and step.slicing_wake() is None


def test_a_kill_gives_back_the_room_the_unsent_children_held(tmp_path):
    """The children not sent yet count in the book's exposure; the kill (a control command in
    the book's step) stops them, and the book no longer counts them."""
    from connectors.control import Control

    p, step, logic, wall = _logic(tmp_path)
    ticks = [_entry(p, PRICES, T0 - 50_000 + i * 10_000, {"symbol": "BTC-USDT", "price": "100", "volume": "40"})
             for i in range(5)]
    doc = sig("sig-1", timestamp="2026-01-01T10:00:00.000Z", suggested_kelly=0.05, max_position_usd=3000.0)
    logic.on_batch([*ticks, _entry(p, STREAM, T0, {"payload": payload(doc)})])
    book = logic.book
    assert book.unsent == {("okx", "BTC-USDT"): (20.0, 100.0)}  # two children of 10 still to go
    assert book.view(0.0).position_value("okx", "BTC-USDT") == 3000.0  # 10 held (in flight) and 20 to come
    logic.on_batch([Control("", "k-1", "kill", "test", "test")])
    logic.on_batch([_entry(p, PRICES, T0 + 1000, {"symbol": "BTC-USDT", "price": "100", "volume": "40"})])
    assert book.unsent == {}
    assert step.slicing_wake() is None  # nothing left to send
