"""Trading states on the paper venue, through the real dataflow and `dataflows/kill.py`:
HALTED refuses every new order, REDUCING refuses an open (from flat too) and lets a close
out, the state is the ledger's (a new run finds it), `resume` says what it found, and a
kill closes every trade once, however often it is run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from connectors import trading_state_store
from dataflows import kill as switch
from dataflows.config import parse
from helpers import Collector, audit_query, paper_orders
from operators.orders import Order
from operators.trading_state import ACTIVE, HALTED, KILL, REDUCING, reduces, refusal
from test_exits import PIPELINE, signal, tick

T0 = 1_767_312_000_000
MIN = 60_000


def _pipeline(tmp_path: Path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(state=tmp_path / "state", fee=0, alert="false"))
    return path, parse(path.read_text(), path)


def _run(tmp_path: Path, name: str, entries: list[dict]) -> Collector:
    from bytewax.testing import run_main

    from dataflows.apex import wire

    rec = tmp_path / f"{name}.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    _, p = _pipeline(tmp_path)
    seen = Collector()
    flow, _ = wire(p, source=f"recording:{rec}", observer=seen)
    run_main(flow)
    return seen


def _open_trades(p) -> list[str]:
    db = sqlite3.connect(p.ledger_path)
    try:
        return [sid for (sid,) in db.execute("SELECT signal_id FROM trades WHERE status = 'open' ORDER BY 1")]
    finally:
        db.close()


def _outcome(seen: Collector, signal_id: str) -> tuple[str, str]:
    (o,) = [o for o in seen.outcomes if o.signal_id == signal_id and o.stream_id]
    return o.outcome, o.reason


def test_halted_refuses_every_order_and_the_refusal_is_recorded_and_acknowledged(tmp_path):
    path, p = _pipeline(tmp_path)
    opened = _run(tmp_path, "a", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
    assert _outcome(opened, "t1")[0] == "filled"
    # HALTED with a trade still open (as a kill leaves a book whose close a venue refused)
    db = sqlite3.connect(p.ledger_path, isolation_level=None)
    trading_state_store.ensure(db)
    trading_state_store.write(db, trading_state_store.TradingState(HALTED, "operator", "cli", "c1", T0))
    db.close()
    sent = paper_orders(p)
    # an open from flat, an open that would reduce, an exit's close (t1's stop): none goes
    seen = _run(tmp_path, "b", [signal(2, T0 + MIN, "ETH-USDT", "buy", 10.0),
                                signal(3, T0 + 2 * MIN, "BTC-USDT", "sell", 100.0),
                                tick(T0 + 3 * MIN, "BTC-USDT", 90.0)])
    assert _outcome(seen, "t2") == ("dropped", "halted")
    assert _outcome(seen, "t3") == ("dropped", "halted")
    stopped = [(o.outcome, o.reason) for o in seen.outcomes if o.signal_id == "t1"]
    assert stopped == [("rejected", "halted")] and _open_trades(p) == ["t1"]
    assert all(o.terminal for o in seen.outcomes)  # acknowledged: recorded, not left pending
    assert paper_orders(p) == sent
    drops = audit_query(p, "SELECT signal_id, filter FROM filter_drops WHERE filter = 'halted' ORDER BY 1")
    assert drops == [("t2", "halted"), ("t3", "halted")]


def test_reducing_refuses_an_open_from_flat_and_an_add_but_lets_a_close_out(tmp_path):
    path, p = _pipeline(tmp_path)
    _run(tmp_path, "a", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
    assert _open_trades(p) == ["t1"]
    switch.reduce(path, None, reason="drawdown")
    # a new run: the state is the ledger's, not the process's
    seen = _run(tmp_path, "b", [signal(2, T0 + MIN, "ETH-USDT", "buy", 10.0),  # from flat
                                signal(3, T0 + 2 * MIN, "BTC-USDT", "buy", 100.0),  # adds
                                tick(T0 + 3 * MIN, "BTC-USDT", 90.0)])  # the stop of t1: a close
    assert _outcome(seen, "t2") == ("dropped", "reducing")
    assert _outcome(seen, "t3") == ("dropped", "reducing")
    closes = [o for o in seen.outcomes if o.signal_id == "t1" and o.outcome == "closed"]
    assert len(closes) == 1 and closes[0].reason == "hard_stop"
    assert _open_trades(p) == []


def test_resume_says_what_it_found_and_trading_goes_on(tmp_path):
    path, p = _pipeline(tmp_path)
    switch.kill(path, None, reason="fat finger", by="watchdog")
    report = switch.resume(path, None)
    assert report.before[""].state == HALTED and report.after == {"": ACTIVE}
    line = next(line for line in report.lines() if line.startswith("book"))
    assert "was HALTED" in line and "watchdog" in line and "fat finger" in line and "now ACTIVE" in line
    seen = _run(tmp_path, "a", [signal(1, T0, "BTC-USDT", "buy", 100.0)])
    assert _outcome(seen, "t1")[0] == "filled"


def test_a_kill_closes_every_trade_once_and_a_second_kill_does_nothing(tmp_path):
    path, p = _pipeline(tmp_path)
    _run(tmp_path, "a", [signal(1, T0, "BTC-USDT", "buy", 100.0), signal(2, T0 + MIN, "ETH-USDT", "sell", 10.0)])
    assert _open_trades(p) == ["t1", "t2"]
    first = switch.kill(path, None, reason="test")
    assert first.ok and _open_trades(p) == []
    closed = sorted(c for v in first.venues.values() for c in v.closed)
    assert len(closed) == 2 and closed[0].startswith("BTC-USDT sell") and closed[1].startswith("ETH-USDT buy")
    sent = paper_orders(p)
    second = switch.kill(path, None, reason="test")
    assert second.ok and not any(v.closed or v.cancelled for v in second.venues.values())
    assert all("nothing to cancel or close" in line for line in second.lines() if line.startswith("paper"))
    assert paper_orders(p) == sent
    # one audit event per action: the state set once, each close attempted once with the kill's reason
    states = audit_query(p, "SELECT outcome FROM audit_events FINAL WHERE stage = 'TRADING_STATE'")
    assert states == [(HALTED,)]
    attempts = audit_query(p, "SELECT signal_id FROM audit_events FINAL WHERE stage = 'EXECUTION_ATTEMPT'"
                              " AND reason = {r:String} ORDER BY 1", {"r": KILL})
    assert attempts == [("t1",), ("t2",)]
    db = sqlite3.connect(p.ledger_path)
    assert trading_state_store.read(db).state == HALTED
    db.close()


def test_kill_names_an_unknown_book(tmp_path):
    path, _ = _pipeline(tmp_path)
    with pytest.raises(ValueError, match="no book 'nope'"):
        switch.kill(path, None, book="nope")


def _order(kind: str, side: str, qty: float) -> Order:
    return Order("ax1", "s", kind, "okx", "BTC-USDT", side, qty, 100.0, 0)


@given(side=st.sampled_from(["buy", "sell"]), qty=st.floats(0.001, 1e6), held=st.floats(-1e6, 1e6))
def test_reducing_lets_out_exactly_what_brings_the_position_toward_zero(side, qty, held):
    signed = qty if side == "buy" else -qty
    after = held + signed
    toward_zero = held != 0 and abs(after) < abs(held) and after * held >= 0
    assert (refusal(REDUCING, _order("open", side, qty), held) is None) == reduces(side, qty, held)
    if reduces(side, qty, held):
        assert toward_zero or abs(abs(after)) < 1e-6 * abs(held)
    else:
        assert not toward_zero or held == 0
    assert refusal(REDUCING, _order("close", side, qty), held) is None
    assert refusal(HALTED, _order("open", side, qty), held) == "halted"
    assert refusal(HALTED, _order("close", side, qty), held, "hard_stop") == "halted"
    assert refusal(HALTED, _order("close", side, qty), held, KILL) is None
    assert refusal(ACTIVE, _order("open", side, qty), held) is None


def test_a_kill_read_from_the_control_stream_halts_the_egress_before_the_book_carries_it_out(tmp_path,
                                                                                          redis_server):
    """A book whose step is held up when a kill arrives: what it decides once it moves again
    is refused at the egress, though its step has not carried the kill out yet."""
    from connectors.control import _Reader
    from connectors.execution import Executor, TradingRefused
    from connectors.ledger import Ledger
    from connectors.sender import Gateway
    from connectors.venues.paper import PaperVenue
    from helpers import until

    gateway = Gateway()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    executor = Executor(ledger, PaperVenue(tmp_path / "paper.sqlite", cash_usd=1e6), gateway)
    reader = _Reader(redis_server.url, "apex:control", [""], gateway.commanded)
    r = redis_server.client()
    try:
        r.xadd("apex:control", {"id": "c1", "command": "kill", "book": "", "reason": "t", "by": "cli"})
        assert until(lambda: gateway.commanded == {"": HALTED}, 10)
        assert executor.trading == ACTIVE  # the book's own state: the step has not carried it out
        opening = Order("ax1", "s1", "open", "okx", "BTC-USDT", "buy", 1.0, 100.0, T0)
        ledger.begin()
        with pytest.raises(TradingRefused, match="halted"):
            executor.prepare(opening)
        closing = Order("ax2", "s0", "close", "okx", "BTC-USDT", "sell", 1.0, 100.0, T0)
        assert executor.prepare(closing, KILL) is None  # the kill's own close still goes
        r.xadd("apex:control", {"id": "c2", "command": "resume", "book": "", "reason": "t", "by": "cli"})
        assert until(lambda: gateway.commanded == {"": ACTIVE}, 10)
        assert executor.prepare(opening) is None
        ledger.commit()
    finally:
        reader.stop()
        ledger.close()
