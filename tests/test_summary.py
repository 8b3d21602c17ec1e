"""The run summary's latency reservoirs: bounded, and fed a batch at a time."""

from __future__ import annotations

from apex.summary import Reservoir, RunStats
from operators.audit import Outcome


def test_a_batch_extends_the_reservoir_as_adding_its_values_one_by_one_would():
    one, batch = Reservoir(size=10), Reservoir(size=10)
    values = [float(v) for v in range(37)]
    for v in values:
        one.add(v)
    for part in (values[:4], values[4:15], values[15:15], values[15:]):  # room, then past the size
        batch.extend(part)
    assert batch.seen == one.seen == 37
    assert batch.values == one.values and len(batch.values) == 10


def test_the_reservoir_keeps_every_value_while_it_has_room():
    r = Reservoir(size=5)
    r.extend([1.0, 2.0, 3.0])
    assert (r.seen, r.values) == (3, [1.0, 2.0, 3.0])
    assert r.percentiles() == {"p50": 2.0, "p99": 3.0, "p999": 3.0, "max": 3.0}


# --- entries, not deliveries (issue 16, item 12) -------------------------------------------------

def _o(sid: str, outcome: str, reason: str = "", resumed: bool = False, stream: str = "s") -> Outcome:
    return Outcome(stream, sid, "sig", outcome, reason, terminal=outcome != "error", resumed=resumed)


def test_an_entry_delivered_again_counts_once_with_its_last_outcome():
    stats = RunStats()
    stats.observe([_o("1-0", "error", "boom"), _o("2-0", "dropped", "confidence")], 0)
    stats.observe([_o("1-0", "filled"), _o("2-0", "dropped", "confidence", resumed=True)], 0)
    s = stats.as_dict()
    assert (s["entries"], s["outcomes"], s["decided_now"], s["already_decided"]) == (
        2, {"filled": 1, "dropped": 1}, 2, {})
    assert (s["fills"], s["errors"], s["first_error"], s["filter_drop_rate"]) == (1, 0, "boom", {"confidence": 0.5})


def test_decisions_found_in_the_ledger_are_already_decided_not_fills():
    stats = RunStats()
    stats.observe([_o("1-0", "filled", resumed=True), _o("2-0", "dropped", "margin", resumed=True),
                   _o("3-0", "duplicate"), _o("1-0", "tick", stream="prices")], 0)
    s = stats.as_dict()
    assert (s["entries"], s["decided_now"], s["already_decided"], s["fills"], s["market_entries"]) == (
        4, 1, {"filled": 1, "dropped": 1}, 0, 1)
    assert s["filter_drop_rate"] == {}


def test_the_entries_remembered_for_redeliveries_are_bounded():
    stats = RunStats(remember=2)
    stats.observe([_o(f"{i}-0", "dropped", "confidence") for i in range(5)], 0)
    assert list(stats.seen) == [("s", "3-0"), ("s", "4-0")]
    assert stats.entries == 5
