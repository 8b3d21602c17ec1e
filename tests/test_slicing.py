"""Slicing's pure parts (operators/slicing.py): the volume share rule at its boundary, the
plan's children (sum, share, ids, times), the check a due child passes, the parent's
outcome, the rolling minute volume; the tick's ``volume`` field; the configuration."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflows.config import ConfigError, parse
from operators.limits import Limits
from operators.market import parse_tick
from operators.orders import client_order_id
from operators.signal import Invalid
from operators.slicing import (HALTED, LATE, MAX_CHILDREN, MINUTE_MS, SEND, WAIT, MinuteVolume, SlicingParams, TooThin,
                               check, child_order_id, needs_slicing, parent_outcome, plan)

P = SlicingParams()  # 5 % of the minute, over 300 s
PARENT = client_order_id("sig-1")


# --- the volume share rule ----------------------------------------------------------------

def test_exactly_the_share_is_not_sliced_one_unit_more_is():
    assert not needs_slicing(5.0, 100.0, 0.05)
    assert needs_slicing(6.0, 100.0, 0.05)
    assert not needs_slicing(50.0, 1000.0, 0.05)
    assert needs_slicing(51.0, 1000.0, 0.05)


def test_without_a_known_volume_nothing_is_sliced():
    assert not needs_slicing(1e9, None, 0.05)
    assert not needs_slicing(1e9, 0.0, 0.05)


# --- the plan -----------------------------------------------------------------------------

def test_one_unit_over_the_share_makes_two_children_within_it():
    pl = plan(PARENT, 6.0, 100.0, 100.0, 1_000, P, lot_size=1.0)
    assert [c.quantity for c in pl.children] == [3.0, 3.0]
    assert [c.due_ms for c in pl.children] == [1_000, 1_000 + 150_000]  # over the 300 s window


def test_children_are_never_less_than_a_minute_apart():
    pl = plan(PARENT, 100.0, 1.0, 100.0, 0, P)  # 20 children of 5: the window stretches to 20 minutes
    assert len(pl.children) == 20
    assert [c.due_ms for c in pl.children] == [i * MINUTE_MS for i in range(20)]


def test_child_ids_are_derived_from_the_parent_in_its_shape():
    pl = plan(PARENT, 12.0, 1.0, 100.0, 0, P, lot_size=1.0)
    ids = [c.client_order_id for c in pl.children]
    assert ids == [child_order_id(PARENT, i) for i in range(3)]
    assert all(len(i) == len(PARENT) and i.isalnum() for i in ids)
    assert PARENT not in ids


def test_a_share_under_one_lot_is_too_thin():
    with pytest.raises(TooThin, match="less than a lot"):
        plan(PARENT, 10.0, 1.0, 10.0, 0, P, lot_size=1.0)  # 0.5 of a lot a minute


def test_more_than_a_day_of_children_is_too_thin():
    with pytest.raises(TooThin, match="1441 children"):
        plan(PARENT, 1441 * 5.0, 1.0, 100.0, 0, P)


def test_children_under_min_child_usd_are_refused():
    p = SlicingParams(min_child_usd=400)
    assert len(plan(PARENT, 12.0, 100.0, 100.0, 0, p, lot_size=1.0).children) == 3  # 3 × 4 at 100: 400 each
    with pytest.raises(TooThin, match="min_child_usd"):
        plan(PARENT, 12.0, 99.0, 100.0, 0, p, lot_size=1.0)


@settings(max_examples=300, deadline=None)
@given(lots=st.integers(1, 5_000), lot=st.sampled_from([0.0, 0.001, 0.01, 1.0, 100.0]),
       volume=st.floats(0.01, 1e6), share=st.floats(0.001, 1.0), window_s=st.integers(60, 3_600),
       start=st.integers(0, 2**40))
def test_property_children_sum_to_the_parent_within_the_share_ids_unique_and_stable(
        lots, lot, volume, share, window_s, start):
    qty = lots * (lot or 0.37)
    p = SlicingParams(max_volume_share=share, window_s=window_s)
    try:
        pl = plan(PARENT, qty, 10.0, volume, start, p, lot_size=lot)
    except TooThin:
        # only when the share holds less than a lot, or a day of minutes could not take the order
        per = math.floor(share * volume / lot + 1e-9) if lot else share * volume  # the most one child holds
        assert per == 0 or (lots if lot else qty) / per > MAX_CHILDREN * (1 - 1e-9)
        return
    kids = pl.children
    assert math.isclose(math.fsum(c.quantity for c in kids), qty, rel_tol=1e-12, abs_tol=1e-12)
    cap = share * volume
    assert all(0 < c.quantity <= cap * (1 + 1e-9) for c in kids)
    # a child falls due with the plan's volume: it is sent as it is
    assert all(check(c, c.due_ms, volume, share, False, pl) == SEND for c in kids)
    ids = [c.client_order_id for c in kids]
    assert len(set(ids)) == len(ids)
    assert plan(PARENT, qty, 10.0, volume, start, p, lot_size=lot).children == kids  # stable
    assert [c.due_ms for c in kids] == sorted(c.due_ms for c in kids)
    assert all(b.due_ms - a.due_ms >= MINUTE_MS for a, b in zip(kids, kids[1:]))
    assert kids[0].due_ms == start


# --- a due child --------------------------------------------------------------------------

def test_a_due_child_waits_for_volume_then_gives_up_and_a_halt_stops_it():
    pl = plan(PARENT, 10.0, 1.0, 100.0, 0, P)  # two children of 5
    c = pl.children[1]
    assert check(c, c.due_ms, 100.0, 0.05, False, pl) == SEND
    assert check(c, c.due_ms, 99.0, 0.05, False, pl) == WAIT  # 5 > 4.95: never over the share
    assert check(c, c.due_ms + 300_000, 99.0, 0.05, False, pl) == LATE
    assert check(c, c.due_ms, 100.0, 0.05, True, pl) == HALTED


def test_the_parent_outcome_is_the_sum_of_its_children():
    pl = plan(PARENT, 15.0, 1.0, 100.0, 0, P)  # three children of 5
    out = parent_outcome(pl, {0: SEND, 1: SEND, 2: HALTED}, {0: 5.0, 1: 4.0})
    assert (out.sent, out.filled, out.not_sent, out.reasons) == (10.0, 9.0, 5.0, ("halted",))
    assert out.sent + out.not_sent == pl.quantity


# --- the minute's volume ------------------------------------------------------------------

def test_minute_volume_counts_the_last_minute_of_ticks():
    v = MinuteVolume()
    assert v.last_minute("BTC-USDT") is None
    v.add("BTC-USDT", 0, 10.0)
    v.add("BTC-USDT", 30_000, 5.0)
    assert v.last_minute("BTC-USDT") == 15.0
    v.add("BTC-USDT", 60_000, 1.0)  # the tick at 0 is a minute old: out
    assert v.last_minute("BTC-USDT") == 6.0
    v.add("BTC-USDT", 45_000, 2.0)  # late, still inside the minute
    assert v.last_minute("BTC-USDT") == 8.0
    assert v.last_minute("ETH-USDT") is None


# --- the tick's volume --------------------------------------------------------------------

def test_a_tick_carries_an_optional_volume():
    assert parse_tick({"symbol": "BTC-USDT", "price": "100", "volume": "2.5"}, Limits()).volume == 2.5
    assert parse_tick({"symbol": "BTC-USDT", "price": "100"}, Limits()).volume is None


@pytest.mark.parametrize("fields, why", [
    ({"symbol": "BTC-USDT", "price": "100", "volume": "lots"}, "volume: not a number"),
    ({"symbol": "BTC-USDT", "price": "100", "volume": "-1"}, "volume: must be a finite number"),
    ({"symbol": "BTC-USDT", "price": "100", "volume": "nan"}, "volume: must be a finite number"),
    ({"symbol": "BTC-USDT", "price": "100", "volume": "inf"}, "volume: must be a finite number"),
    ({"regime": "risk_on", "volume": "3"}, "volume: a volume travels with a price"),
])
def test_a_bad_volume_is_refused_with_its_reason(fields, why):
    with pytest.raises(Invalid, match=why):
        parse_tick(fields, Limits())


# --- configuration ------------------------------------------------------------------------

def _pipeline(tmp_path, execute: str):
    text = (f"state_dir: {tmp_path}/state\nstages:\n  - filter: confidence\n    min: 0.5\n"
            f"  - size: kelly\n  - execute:\n{execute}")
    return parse(text, tmp_path / "pipeline.yaml", {})


def test_slicing_is_off_when_absent_and_read_when_present(tmp_path):
    assert _pipeline(tmp_path, "      venue: paper\n").execute.slicing is None
    p = _pipeline(tmp_path, "      slicing: {max_volume_share: 0.1, window_s: 600, min_child_usd: 50}\n")
    assert p.execute.slicing == SlicingParams(max_volume_share=0.1, window_s=600, min_child_usd=50)


def test_slicing_errors_are_reported_together_with_their_paths(tmp_path):
    with pytest.raises(ConfigError) as info:
        _pipeline(tmp_path, "      slicing: {max_volume_share: 0, window_s: 10, min_child_usd: -1, twap: 1}\n")
    assert sorted(info.value.errors) == sorted([
        "stages[2].execute.slicing.max_volume_share: input should be greater than 0",
        "stages[2].execute.slicing.window_s: input should be greater than or equal to 60",
        "stages[2].execute.slicing.min_child_usd: input should be greater than or equal to 0",
        "stages[2].execute.slicing.twap: extra inputs are not permitted",
    ])


# --- the plans kept in the ledger (connectors/slicing_plans.py, a real SQLite ledger) --------

def _store(path):
    from connectors.ledger import Ledger
    from connectors.slicing_plans import SlicePlans

    ledger = Ledger(path)
    return ledger, SlicePlans(ledger.db)


def _run_schedule(plans, ledger, until_ms, volume, halted_from=None):
    """Wake the book every 10 s of the run's clock up to ``until_ms``; each wake one batch
    (one transaction). Returns every child handed out, in order."""
    sent = []
    for now in range(0, until_ms + 1, 10_000):
        ledger.begin()
        halted = halted_from is not None and now >= halted_from
        sent += [(now, c) for _, c, fate in plans.release(now, lambda s: volume, 0.05, halted) if fate == SEND]
        ledger.commit()
    return sent


def test_the_schedule_sends_each_child_once_when_due_and_sums_to_the_parent(tmp_path):
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    pl = plan(PARENT, 20.0, 1.0, 100.0, 0, P, lot_size=1.0)  # 4 children of 5, 75 s apart
    ledger.begin()
    plans.record(pl, "BTC-USDT")
    plans.record(pl, "BTC-USDT")  # its entry again: nothing changes
    ledger.commit()
    sent = _run_schedule(plans, ledger, 600_000, 100.0)
    assert [c.client_order_id for _, c in sent] == [c.client_order_id for c in pl.children]
    assert all(now >= c.due_ms for now, c in sent)
    assert math.fsum(c.quantity for _, c in sent) == 20.0
    assert all(c.quantity <= 0.05 * 100.0 for _, c in sent)
    assert plans.next_due_ms() is None
    out = plans.outcome(PARENT)
    assert (out.sent, out.not_sent) == (20.0, 0.0)


def test_a_restart_resumes_the_schedule_and_never_hands_a_child_out_twice(tmp_path):
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    pl = plan(PARENT, 20.0, 1.0, 100.0, 0, P, lot_size=1.0)
    ledger.begin()
    plans.record(pl, "BTC-USDT")
    ledger.commit()
    first = _run_schedule(plans, ledger, 80_000, 100.0)  # children 0 and 1 are out
    ledger.begin()
    lost = plans.release(200_000, lambda s: 100.0, 0.05, False)  # child 2, then a crash before the commit
    assert [(c.index, fate) for _, c, fate in lost] == [(2, SEND)]
    ledger.close()  # the transaction is rolled back: child 2 never left (its intent was not written either)
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    rest = _run_schedule(plans, ledger, 600_000, 100.0)
    ids = [c.client_order_id for _, c in first + rest]
    assert ids == [c.client_order_id for c in pl.children]  # each once, none lost


def test_a_child_over_the_share_waits_for_volume_then_is_not_sent(tmp_path):
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    pl = plan(PARENT, 10.0, 1.0, 100.0, 0, P)  # two children of 5
    ledger.begin()
    plans.record(pl, "BTC-USDT")
    ledger.commit()
    sent = _run_schedule(plans, ledger, 900_000, 60.0)  # the market thinned: 5 % is 3 now
    assert sent == []
    out = plans.outcome(PARENT)
    assert (out.sent, out.not_sent, out.reasons) == (0.0, 10.0, ("volume",))


def test_the_kill_switch_stops_the_unsent_children(tmp_path):
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    pl = plan(PARENT, 20.0, 1.0, 100.0, 0, P, lot_size=1.0)  # due at 0, 75, 150, 225 s
    other = plan(client_order_id("sig-2"), 10.0, 1.0, 100.0, 0, P)
    ledger.begin()
    plans.record(pl, "BTC-USDT")
    plans.record(other, "ETH-USDT")
    ledger.commit()
    sent = _run_schedule(plans, ledger, 100_000, 100.0)
    ledger.begin()
    assert plans.halt(PARENT) == {PARENT: 10.0}  # the two children not sent yet
    ledger.commit()
    sent += _run_schedule(plans, ledger, 600_000, 100.0)
    assert [c.client_order_id for _, c in sent if c.client_order_id in {k.client_order_id for k in pl.children}] \
        == [pl.children[0].client_order_id, pl.children[1].client_order_id]
    out = plans.outcome(PARENT)
    assert (out.sent, out.not_sent, out.reasons) == (10.0, 10.0, ("halted",))
    assert plans.outcome(other.parent_id).sent == 10.0  # another parent's schedule goes on


def test_children_due_while_the_book_is_halted_are_not_sent(tmp_path):
    ledger, plans = _store(tmp_path / "ledger.sqlite")
    pl = plan(PARENT, 20.0, 1.0, 100.0, 0, P, lot_size=1.0)
    ledger.begin()
    plans.record(pl, "BTC-USDT")
    ledger.commit()
    sent = _run_schedule(plans, ledger, 600_000, 100.0, halted_from=100_000)
    assert [c.index for _, c in sent] == [0, 1]
    out = plans.outcome(PARENT)
    assert (out.sent, out.not_sent, out.reasons) == (10.0, 10.0, ("halted",))
