"""The day's loss sets the book's trading state, through the real dataflow (recording source,
paper venue, ledger, embedded ClickHouse): a price fall past the limit puts the book in the
state ``on_breach`` names, in its ledger and its audit trail; a restart keeps it; ``apex
resume`` restarts the day's budget so signals pass again; a later UTC day ends a state the
day's loss set, and only such a state."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors import metrics, trading_state_store
from dataflows import kill as switch
from dataflows.config import parse
from helpers import audit_query, pipeline_yaml, run_entries
from operators.daily_loss import DAY_MS
from operators.trading_state import ACTIVE, HALTED, REDUCING
from tests.test_exits import T0, signal, tick

MIN = 60_000
SMALL = dict(kelly=0.001, cap=1000.0)


def _pipeline(tmp_path: Path, on_breach: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(pipeline_yaml(tmp_path / "state", "  - filter: confidence\n  - filter: daily_loss\n"
                                                      f"    max_loss: 0.03\n    on_breach: {on_breach}\n"))
    return path, parse(path.read_text(), path)


def _state(p) -> trading_state_store.TradingState:
    return trading_state_store.read_file(p.ledger_path) or trading_state_store.TradingState()


def _outcome(col, signal_id: str) -> tuple[str, str]:
    [o] = [o for o in col.outcomes if o.signal_id == signal_id and o.stream_id]
    return o.outcome, o.reason


def _breach(tmp_path: Path, p) -> None:
    """5,000 BTC bought at 100, then a fall to 93.99: 30,050 lost, past 3% of 1,000,000."""
    col = run_entries(tmp_path, p, [
        signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.5, kelly=0.5, cap=500_000.0),
        tick(T0 + MIN, "BTC-USDT", 94.0),  # exactly 3%: not past it
        signal(2, T0 + MIN + 1000, "ETH-USDT", "buy", 100.0, **SMALL),
        tick(T0 + 2 * MIN, "BTC-USDT", 93.99),
        signal(3, T0 + 2 * MIN + 1000, "ETH-USDT", "buy", 100.0, **SMALL),
    ], name="breach.jsonl")
    assert _outcome(col, "t1")[0] == "filled" and _outcome(col, "t2")[0] == "filled"
    assert _outcome(col, "t3") == ("dropped", "daily_loss")


@pytest.mark.parametrize("on_breach, state", [("halt", HALTED), ("reduce", REDUCING)])
def test_a_fall_past_the_limit_sets_the_state_a_restart_keeps_and_resume_lifts(tmp_path, on_breach, state):
    path, p = _pipeline(tmp_path, on_breach)
    _breach(tmp_path, p)
    s = _state(p)
    assert (s.state, s.by) == (state, "daily_loss") and "passed 3.00%" in s.reason
    assert metrics.TRADING_STATE.labels(book=p.book, state=state)._value.get() == 1
    events = audit_query(p, "SELECT outcome, reason, details FROM audit_events FINAL WHERE stage = 'TRADING_STATE'")
    assert [(o, r) for o, r, _ in events] == [(state, s.reason)]  # said once, though ticks went on
    assert '"by":"daily_loss"' in events[0][2] and f'"was":"{ACTIVE}"' in events[0][2]

    # a restart finds the state and the day's loss as they were
    col = run_entries(tmp_path, p, [tick(T0 + 3 * MIN, "BTC-USDT", 100.0),
                                    signal(4, T0 + 3 * MIN + 1000, "ETH-USDT", "buy", 100.0, **SMALL)],
                      name="restart.jsonl")
    assert _outcome(col, "t4") == ("dropped", "daily_loss")
    assert _state(p).state == state

    report = switch.resume(path, None, reason="looked at it")
    assert report.before[""].state == state and report.after == {"": ACTIVE}
    col = run_entries(tmp_path, p, [signal(5, T0 + 4 * MIN, "ETH-USDT", "buy", 100.0, **SMALL)], name="resumed.jsonl")
    assert _outcome(col, "t5") == ("filled", "")
    # the budget restarted from the NAV resume found: the same book, one more restart, trades on
    col = run_entries(tmp_path, p, [signal(6, T0 + 5 * MIN, "ETH-USDT", "buy", 100.0, **SMALL)], name="again.jsonl")
    assert _outcome(col, "t6") == ("filled", "") and _state(p).state == ACTIVE


def test_the_next_utc_day_ends_a_state_the_days_loss_set(tmp_path):
    path, p = _pipeline(tmp_path, "halt")
    _breach(tmp_path, p)
    col = run_entries(tmp_path, p, [signal(4, T0 + DAY_MS - 1000, "SOL-USDT", "buy", 100.0, **SMALL),
                                    signal(5, T0 + DAY_MS + 1000, "SOL-USDT", "buy", 100.0, **SMALL)],
                      name="next-day.jsonl")
    assert _outcome(col, "t4") == ("dropped", "daily_loss")
    assert _outcome(col, "t5") == ("filled", "")
    s = _state(p)
    assert (s.state, s.by) == (ACTIVE, "daily_loss")


def test_the_next_utc_day_leaves_an_operators_halt_alone(tmp_path):
    path, p = _pipeline(tmp_path, "halt")
    _breach(tmp_path, p)
    switch.kill(path, None, reason="looking into the loss")
    col = run_entries(tmp_path, p, [signal(4, T0 + DAY_MS + 1000, "SOL-USDT", "buy", 100.0, **SMALL)],
                      name="next-day.jsonl")
    assert _outcome(col, "t4") == ("dropped", "halted")
    assert _state(p).state == HALTED


def test_a_breach_tightens_an_operators_reducing_and_the_next_day_gives_it_back(tmp_path):
    path, p = _pipeline(tmp_path, "halt")
    col = run_entries(tmp_path, p, [
        signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.5, kelly=0.5, cap=500_000.0)], name="open.jsonl")
    assert _outcome(col, "t1") == ("filled", "")
    switch.reduce(path, None, reason="venue maintenance")
    col = run_entries(tmp_path, p, [tick(T0 + 2 * MIN, "BTC-USDT", 93.99)], name="fall.jsonl")
    s = _state(p)
    assert (s.state, s.by) == (HALTED, "daily_loss")
    col = run_entries(tmp_path, p, [signal(5, T0 + DAY_MS + 1000, "SOL-USDT", "buy", 100.0, **SMALL)],
                      name="next-day.jsonl")
    assert _outcome(col, "t5") == ("dropped", "reducing")
    s = _state(p)
    assert (s.state, s.by) == (REDUCING, "cli") and "venue maintenance" in s.reason


def test_a_resume_through_a_running_worker_restarts_the_days_budget(tmp_path, redis_server):
    """The worker's own path (the control stream, carried out in the book's step), where the
    day's budget is restarted in the book and kept with its state at the batch's commit."""
    from helpers import until
    from test_kill_worker import _decided, _publish, _stop, _worker

    path, p = _pipeline(tmp_path, "halt")
    ledger = p.ledger_path
    worker = _worker(tmp_path, path, redis_server.url, "worker")
    try:
        _publish(tmp_path, redis_server.url, "open", [
            signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.5, kelly=0.5, cap=500_000.0)])
        assert until(lambda: "t1" in _decided(ledger), 120), (tmp_path / "worker.log").read_text()[-2000:]
        # signals and prices are two streams: the fall is published once the trade is open
        _publish(tmp_path, redis_server.url, "fall", [tick(T0 + MIN, "BTC-USDT", 93.99)])
        assert until(lambda: _state(p).state == HALTED, 60), (tmp_path / "worker.log").read_text()[-2000:]
        _publish(tmp_path, redis_server.url, "after", [signal(2, T0 + MIN + 1000, "ETH-USDT", "buy", 100.0, **SMALL)])
        assert until(lambda: "t2" in _decided(ledger), 60), (tmp_path / "worker.log").read_text()[-2000:]
        assert _decided(ledger)["t2"] == ("dropped", "daily_loss") and _state(p).state == HALTED
        resumed = switch.resume(path, None, reason="looked at it")
        assert resumed.via == "worker" and resumed.after == {"": ACTIVE}
        _publish(tmp_path, redis_server.url, "resumed", [signal(3, T0 + 2 * MIN, "ETH-USDT", "buy", 100.0, **SMALL)])
        assert until(lambda: "t3" in _decided(ledger), 60), (tmp_path / "worker.log").read_text()[-2000:]
        assert _decided(ledger)["t3"] == ("filled", "")
    finally:
        _stop(worker)
