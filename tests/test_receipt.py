"""Receipt semantics through the real dataflow: duplicates, TTL on the stream clock, redelivery."""

from __future__ import annotations

import pytest

from helpers import audit_query, entry, make_pipeline, paper_orders, payload, run_entries, sig

FILTERS = "  - filter: confidence\n"

SIX_STAGES = ["SIGNAL_RECEIVED", "FILTER_CHECK", "POSITION_SIZING", "EXECUTION_ATTEMPT", "EXECUTION_CONFIRMED",
              "TRADE_OPEN"]


def _trail(pipeline, signal_id: str) -> list[tuple[str, str, str]]:
    """The signal's audit events in ClickHouse: (stream_id, stage, outcome) in order."""
    return audit_query(pipeline, "SELECT stream_id, stage, outcome FROM audit_events FINAL"
                                 " WHERE signal_id = {s:String} ORDER BY stream_id, seq", {"s": signal_id})


@pytest.fixture
def pipeline(tmp_path):
    return make_pipeline(tmp_path, FILTERS)


def test_same_signal_id_under_a_new_stream_id_is_a_duplicate_and_not_executed_twice(tmp_path, pipeline):
    fields = {"payload": payload(sig("sig-dup"))}
    col = run_entries(tmp_path, pipeline, [
        entry("1767261601000-0", fields),
        entry("1767261602000-0", fields),
        entry("1767261603000-0", {"payload": payload(sig("sig-dup", symbol="ETH-USDT", reference_price=2000.0))}),
    ])
    assert [(o.stream_id, o.outcome) for o in col.outcomes] == [
        ("1767261601000-0", "filled"), ("1767261602000-0", "duplicate"), ("1767261603000-0", "duplicate")]
    assert col.outcomes[1].reason == "signal_id decided at 1767261601000-0 as filled"
    assert [e.stage for e in col.outcomes[1].events] == ["SIGNAL_RECEIVED"]
    assert col.outcomes[1].events[0].outcome == "duplicate"
    assert paper_orders(pipeline) == (1, 0)


@pytest.mark.parametrize(
    "first, first_outcome, first_reason",
    [
        ({"confidence": 0.1}, "dropped", "confidence"),
        ({"ttl_seconds": 1}, "expired", "ttl"),
        ({"venue": "ibkr", "symbol": "SPY", "reference_price": 10000.0}, "dropped", "min_size"),
    ],
)
def test_any_terminal_decision_makes_later_copies_duplicates(tmp_path, pipeline, first, first_outcome, first_reason):
    col = run_entries(tmp_path, pipeline, [
        entry("1767261605000-0", {"payload": payload(sig("sig-x", **first))}),
        entry("1767261606000-0", {"payload": payload(sig("sig-x"))}),  # a good copy: still a duplicate
    ])
    assert [(o.outcome, o.reason) for o in col.outcomes] == [
        (first_outcome, first_reason),
        ("duplicate", f"signal_id decided at 1767261605000-0 as {first_outcome}"),
    ]
    assert paper_orders(pipeline) == (0, 0)


def test_duplicates_survive_a_restart(tmp_path, pipeline):
    fields = {"payload": payload(sig("sig-r"))}
    run_entries(tmp_path, pipeline, [entry("1767261601000-0", fields)], name="one.jsonl")
    col = run_entries(tmp_path, pipeline, [entry("1767261609000-0", fields)], name="two.jsonl")
    assert [(o.outcome, o.reason) for o in col.outcomes] == [
        ("duplicate", "signal_id decided at 1767261601000-0 as filled")]
    assert paper_orders(pipeline) == (1, 0)


def test_ttl_boundary_on_the_stream_clock(tmp_path, pipeline):
    # all emitted 2026-01-01T10:00:00.000Z = 1767261600000 ms, ttl 30 s
    col = run_entries(tmp_path, pipeline, [
        entry("1767261629999-0", signal_id="age-29999", ttl_seconds=30),
        entry("1767261630000-0", signal_id="age-30000", ttl_seconds=30, symbol="ETH-USDT"),
        entry("1767261630001-0", signal_id="age-30001", ttl_seconds=30, symbol="SOL-USDT"),
    ])
    assert [(o.signal_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("age-29999", "filled", ""), ("age-30000", "filled", ""), ("age-30001", "expired", "ttl")]
    expired = col.outcomes[2].events
    assert [(e.stage, e.outcome, e.reason) for e in expired] == [("SIGNAL_RECEIVED", "expired", "ttl")]
    assert expired[0].details == {"age_ms": 30001, "ttl_seconds": 30}
    assert col.outcomes[1].events[0].details["age_ms"] == 30000


def test_clock_is_the_stream_ids_ms_not_the_wall_clock(tmp_path, pipeline):
    # emitted in 2020: years before the wall clock, but only 5 s before its stream entry
    col = run_entries(tmp_path, pipeline, [
        entry("1577880005000-3", signal_id="old-but-fresh", timestamp="2020-01-01T12:00:00.000Z", ttl_seconds=10),
        entry("1577880011000-0", signal_id="old-and-stale", timestamp="2020-01-01T12:00:00.000Z", ttl_seconds=10),
    ])
    assert [(o.signal_id, o.outcome) for o in col.outcomes] == [("old-but-fresh", "filled"), ("old-and-stale", "expired")]
    for ev in col.outcomes[0].events:
        assert ev.ts_ms == 1577880005000
    assert col.outcomes[0].events[0].details["age_ms"] == 5000


def test_signal_from_the_future_is_not_expired(tmp_path, pipeline):
    # producer clock 2 s ahead of the stream: negative age, inside the ttl
    col = run_entries(tmp_path, pipeline, [entry("1767261598000-0", signal_id="future", ttl_seconds=30)])
    assert [(o.outcome, o.events[0].details["age_ms"]) for o in col.outcomes] == [("filled", -2000)]


@pytest.mark.parametrize(
    "overrides, outcome, reason, stages",
    [
        ({}, "filled", "", 6),
        ({"confidence": 0.1}, "dropped", "confidence", 2),
        ({"ttl_seconds": 1}, "expired", "ttl", 1),
        ({"venue": "ibkr", "symbol": "SPY", "reference_price": 10000.0}, "dropped", "min_size", 3),
    ],
)
def test_redelivered_entry_is_not_reexecuted_nor_its_own_duplicate(tmp_path, pipeline, overrides, outcome, reason,
                                                                   stages):
    e = entry("1767261605000-0", {"payload": payload(sig("sig-redeliver", **overrides))})
    col = run_entries(tmp_path, pipeline, [e, e])
    assert [(o.stream_id, o.outcome, o.reason) for o in col.outcomes] == [
        ("1767261605000-0", outcome, reason), ("1767261605000-0", outcome, reason)]
    assert paper_orders(pipeline) == ((1, 0) if outcome == "filled" else (0, 0))
    # the audit trail holds the decision once, not once per delivery
    assert [row[1] for row in _trail(pipeline, "sig-redeliver")] == SIX_STAGES[:stages]


def test_redelivery_after_a_restart_is_not_reexecuted(tmp_path, pipeline):
    e = entry("1767261605000-0", signal_id="sig-restart")
    assert run_entries(tmp_path, pipeline, [e], name="a.jsonl").table() == [("1767261605000-0", "filled", "")]
    again = run_entries(tmp_path, pipeline, [e], name="b.jsonl")
    assert again.table() == [("1767261605000-0", "filled", "")]
    assert paper_orders(pipeline) == (1, 0)
    assert _trail(pipeline, "sig-restart") == [("1767261605000-0", stage, outcome) for stage, outcome in zip(
        SIX_STAGES, ["received", "passed", "sized", "sent", "filled", "opened"])]


def test_invalid_entries_do_not_stop_the_pipeline(tmp_path, pipeline):
    col = run_entries(tmp_path, pipeline, [
        entry("1767261601000-0", {"payload": "{broken"}),
        entry("1767261602000-0", {"data": "no payload field"}),
        entry("1767261603000-0", signal_id="after-the-bad-ones"),
    ])
    assert [(o.outcome, o.reason.split(":")[0]) for o in col.outcomes] == [
        ("invalid", "not_json"), ("invalid", "missing payload field"), ("filled", "")]
