"""Slicing through the real dataflow on the paper venue: an order over 5 % of its symbol's
last-minute volume (from the price stream's ``volume``) leaves as children when due, on the
stream's clock; they sum to the parent and none is over the share; a restart resumes the
schedule without sending a child twice; the kill switch stops the children not sent yet."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from bytewax.testing import run_main

from dataflows import kill as switch
from dataflows.apex import wire
from dataflows.config import parse
from helpers import Collector, audit_query
from operators.orders import client_order_id
from operators.slicing import child_order_id
from test_exits import PRICES, signal

T0 = 1_767_312_000_000
MIN = 60_000
PIPELINE = """
state_dir: {state}
stages:
  - filter: confidence
  - size: kelly
  - execute:
      venue: paper
      initial_nav_usd: 1000000
      slicing: {{max_volume_share: 0.05, window_s: 300}}
"""


def _pipeline(tmp_path: Path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(state=tmp_path / "state"))
    return path, parse(path.read_text(), path)


def _run(tmp_path: Path, name: str, entries: list[dict]) -> Collector:
    rec = tmp_path / f"{name}.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    _, p = _pipeline(tmp_path)
    seen = Collector()
    flow, _ = wire(p, source=f"recording:{rec}", observer=seen)
    run_main(flow)
    return seen


def tick(ms, symbol, price, volume, seq=0):
    return {"stream": PRICES, "id": f"{ms}-{seq}", "fields": {"symbol": symbol, "price": str(price),
                                                               "volume": str(volume)}}


def _orders(p) -> list[tuple[str, str, float, str]]:
    db = sqlite3.connect(p.ledger_path)
    try:
        return db.execute("SELECT client_order_id, signal_id, quantity, status FROM executions"
                          " WHERE kind = 'open' ORDER BY intent_ms, signal_id").fetchall()
    finally:
        db.close()


def _fates(p, places: int = 6) -> list[tuple[int, str, float]]:
    """Each child's fate and quantity (rounded: in whole lots of the paper venue's)."""
    db = sqlite3.connect(p.ledger_path)
    try:
        rows = db.execute("SELECT idx, fate, quantity FROM slices ORDER BY idx").fetchall()
        return [(i, f, round(q, places)) for i, f, q in rows]
    finally:
        db.close()


def _market(until_ms: int, start_ms: int = T0 - MIN + 1):
    """BTC trading 400 a minute (5 %: 20), ETH 10 000 (5 %: 500), a tick every 10 s."""
    out = []
    for i, ms in enumerate(range(start_ms, until_ms + 1, 10_000)):
        out += [tick(ms, "BTC-USDT", 100.0, 400 / 6), tick(ms, "ETH-USDT", 10.0, 10_000 / 6, 1)]
    return out


def test_a_large_order_leaves_as_children_summing_to_it_and_a_small_one_whole(tmp_path):
    path, p = _pipeline(tmp_path)
    # kelly 0.005 of 1 000 000 at 100: 50 BTC, over 20 (5 % of the minute's 400): 3 children
    # ETH: 5 000 at 10: 500, exactly 5 % of its 10 000: sent whole
    entries = (_market(T0 - 1) + [signal(1, T0, "BTC-USDT", "buy", 100.0, kelly=0.005),
                                  signal(2, T0, "ETH-USDT", "buy", 10.0, kelly=0.005)]
               + _market(T0 + 6 * MIN, T0 + 1))
    entries.sort(key=lambda e: int(e["id"].split("-")[0]))
    seen = _run(tmp_path, "a", entries)
    parent = [o for o in seen.outcomes if o.signal_id == "t1" and o.stream_id]
    assert [(o.outcome, o.reason) for o in parent] == [("sliced", "3 children over 200 s")]
    assert [(o.outcome) for o in seen.outcomes if o.signal_id == "t2" and o.stream_id] == ["filled"]
    orders = _orders(p)
    kids = [o for o in orders if o[1].startswith("t1#")]
    parent_id = client_order_id("t1")
    assert [k[0] for k in kids] == [child_order_id(parent_id, i) for i in range(3)]
    assert [k[3] for k in kids] == ["filled"] * 3
    assert math.isclose(sum(k[2] for k in kids), 50.0)
    assert all(k[2] <= 0.05 * 400 + 1e-9 for k in kids)
    assert [o for o in orders if o[1] == "t2"][0][2] == 500.0
    # each child left when due on the stream's clock: its trade opened at its own time
    opened = audit_query(p, "SELECT signal_id, ts_ms FROM audit_events FINAL WHERE stage = 'TRADE_OPEN'"
                            " AND signal_id LIKE 't1#%' ORDER BY signal_id")
    assert [sid for sid, _ in opened] == ["t1#0", "t1#1", "t1#2"]
    assert all(ts >= T0 + i * 100_000 for i, (_, ts) in enumerate(opened))


def test_a_restart_resumes_the_schedule_and_a_kill_stops_what_remains(tmp_path):
    path, p = _pipeline(tmp_path)
    first = _market(T0 - 1) + [signal(1, T0, "BTC-USDT", "buy", 100.0, kelly=0.005)] + _market(T0 + 110_000, T0 + 1)
    first.sort(key=lambda e: int(e["id"].split("-")[0]))
    _run(tmp_path, "a", first)  # children 0 (at T0) and 1 (at T0 + 100 s) leave
    assert [o[1] for o in _orders(p)] == ["t1#0", "t1#1"]
    _run(tmp_path, "a", first)  # the same entries again, redelivered: nothing new leaves
    assert [o[1] for o in _orders(p)] == ["t1#0", "t1#1"]
    result = switch.kill(path, None, reason="test")  # no worker holds the state dir: the kill acts here
    assert result.ok
    assert [(i, f) for i, f, _ in _fates(p)] == [(0, "send"), (1, "send"), (2, "halted")]  # at the kill  # at the kill
    _run(tmp_path, "b", _market(T0 + 10 * MIN, T0 + 110_001))  # child 2's time comes: never sent
    assert [o[1] for o in _orders(p)] == ["t1#0", "t1#1"]
    left = _fates(p, places=12)[2][2]
    stopped = audit_query(p, "SELECT signal_id, reason, details FROM audit_events FINAL"
                             " WHERE stage = 'TRADING_STATE' AND outcome = 'halted'")
    assert [(sid, why, json.loads(d)) for sid, why, d in stopped] == [
        ("t1", "kill", {"unsent_children_quantity": pytest.approx(left)})]


def test_a_child_waits_while_the_market_is_thin_and_is_not_sent_past_its_bound(tmp_path):
    path, p = _pipeline(tmp_path)
    thin = [tick(ms, "BTC-USDT", 100.0, 40 / 6) for ms in range(T0 + 10_000, T0 + 12 * MIN, 10_000)]  # 5 %: 2
    entries = _market(T0 - 1) + [signal(1, T0, "BTC-USDT", "buy", 100.0, kelly=0.005)] + thin
    entries.sort(key=lambda e: int(e["id"].split("-")[0]))
    _run(tmp_path, "a", entries)
    assert [o[1] for o in _orders(p)] == ["t1#0"]  # the rest never over the thinner market's share
    assert [(i, f) for i, f, _ in _fates(p)] == [(0, "send"), (1, "volume"), (2, "volume")]
    unsent = audit_query(p, "SELECT signal_id, reason, details FROM audit_events FINAL"
                            " WHERE stage = 'EXECUTION_ATTEMPT' AND outcome = 'not_sent' ORDER BY ts_ms")
    assert [(sid, why, json.loads(d)["child"]) for sid, why, d in unsent] == [("t1", "volume", 1), ("t1", "volume", 2)]


ROOM = """
state_dir: {state}
stages:
  - filter: confidence
  - filter: concentration
    max_nav_fraction: 0.008
  - filter: gross_exposure
    max_gross: 0.012
  - size: kelly
  - execute:
      venue: paper
      initial_nav_usd: 1000000
      slicing: {{max_volume_share: 0.05, window_s: 300}}
"""


@pytest.mark.parametrize("restart", [False, True])
def test_the_children_not_sent_yet_hold_their_room_in_the_books_exposure(tmp_path, restart):
    """A parent of 5 000 (50 BTC, three children 100 s apart) holds its whole room from its
    decision: between two children (held 1 667, unsent 3 333), a second BTC order of 5 000 is
    past concentration's 8 000, an ETH one of 7 100 past gross's 12 000, while one of 4 000
    fits; once every child has left nothing is counted twice (a BTC order of 2 000 fits
    beside the 5 000 held: 7 000, and 11 000 gross). Across a restart the book learns the
    unsent children from its ledger."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(ROOM.format(state=tmp_path / "state"))
    p = parse(path.read_text(), path)
    later = [signal(2, T0 + 30_000, "BTC-USDT", "buy", 100.0, kelly=0.005),
             signal(3, T0 + 31_000, "ETH-USDT", "buy", 10.0, kelly=0.0071),
             signal(4, T0 + 32_000, "ETH-USDT", "buy", 10.0, kelly=0.004),
             signal(5, T0 + 5 * MIN, "BTC-USDT", "buy", 100.0, kelly=0.002)]
    first = _market(T0 - 1) + [signal(1, T0, "BTC-USDT", "buy", 100.0, kelly=0.005)]
    rest = _market(T0 + 6 * MIN, T0 + 1) + later
    runs = [first, rest] if restart else [first + rest]
    outcomes: dict[str, tuple[str, str]] = {}
    for i, entries in enumerate(runs):
        entries.sort(key=lambda e: int(e["id"].split("-")[0]))
        rec = tmp_path / f"run{i}.jsonl"
        rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
        seen = Collector()
        flow, _ = wire(p, source=f"recording:{rec}", observer=seen)
        run_main(flow)
        outcomes.update({o.signal_id: (o.outcome, o.reason) for o in seen.outcomes if o.stream_id})
    assert outcomes["t1"] == ("sliced", "3 children over 200 s")
    assert outcomes["t2"] == ("dropped", "concentration"), outcomes
    assert outcomes["t3"] == ("dropped", "gross_exposure"), outcomes
    # past the filters (a restarted book has seen under a minute of volume: it slices it)
    assert outcomes["t4"][0] in ("filled", "sliced"), outcomes
    assert outcomes["t5"][0] == "filled", outcomes
    assert {f for _, f, _ in _fates(p)} == {"send"}
