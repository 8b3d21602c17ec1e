"""The order state machine: legal changes only, and fills booked exactly once whatever
order, repetition or staleness the venue's news comes in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from operators import order_fsm as fsm
from operators.fill import Fill
from operators.orders import Order

ORDER = Order("ax1", "sig-1", "open", "okx", "BTC-USDT", "buy", 10.0, 100.0, 1)


def _fill(qty: float, price: float = 100.0, fee: float = 0.0) -> Fill:
    return Fill("sig-1", "ax1", "v-1", "okx", "BTC-USDT", "buy", qty, price, fee, 2)


def _ev(status: str, qty: float | None = None, price: float = 100.0, fee: float = 0.0, fill_id: str = ""):
    return fsm.VenueEvent("", "ax1", status, _fill(qty, price, fee) if qty else None, fill_id)


@pytest.mark.parametrize("src,dst", [("filled", "rejected"), ("filled", "cancelled"), ("cancelled", "filled"),
                                     ("rejected", "accepted"), ("denied", "filled"), ("accepted", "denied"),
                                     ("partially_filled", "rejected")])
def test_an_illegal_change_is_refused_and_moves_nothing(src, dst):
    state = fsm.OrderState(ORDER, src, filled=4.0, avg_price=100.0)
    qty = 6.0 if dst in ("filled", "partially_filled") else None
    change = fsm.apply(state, _ev(dst, qty))
    assert change.illegal and (state.status, state.filled) == (src, 4.0)


def test_older_news_after_newer_is_a_repeat_not_a_change():
    state = fsm.OrderState(ORDER)
    fsm.apply(state, _ev("partially_filled", 4.0, fill_id="t1"))
    for stale in (_ev("accepted"), _ev("submitted"), _ev("partially_filled", 4.0, fill_id="t1"),
                  _ev("partially_filled", 3.0)):
        assert fsm.apply(state, stale).duplicate
    assert (state.status, state.filled) == ("partially_filled", 4.0)


def test_a_part_is_priced_so_the_average_comes_out_right():
    state = fsm.OrderState(ORDER)
    a = fsm.apply(state, _ev("partially_filled", 4.0, 100.0, 0.4, "t1")).fill
    b = fsm.apply(state, _ev("filled", 10.0, 101.2, 1.0, "t2")).fill
    assert (a.quantity, a.price, a.fee_usd) == (4.0, 100.0, 0.4)
    assert (b.quantity, b.price, b.fee_usd) == pytest.approx((6.0, 102.0, 0.6))


# a venue's news: cumulative fills growing to the whole, with its acceptance and end
_STEPS = st.lists(st.integers(1, 10), min_size=1, max_size=6, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(cums=_STEPS, end=st.sampled_from(["filled", "cancelled"]), data=st.data())
def test_fills_are_booked_once_whatever_order_and_repetition_the_news_comes_in(cums, end, data):
    prices = {c: 100.0 + c / 10 for c in cums}
    news = [_ev("accepted")] + [_ev("partially_filled", float(c), prices[c], c / 100, f"t{c}") for c in cums]
    final_qty = float(cums[-1]) if end == "cancelled" else 10.0
    final_price = prices.get(cums[-1], 101.0) if end == "cancelled" else 101.0
    news.append(_ev(end, final_qty, final_price, final_qty / 100, "tend"))
    delivered = data.draw(st.lists(st.sampled_from(news), max_size=20)) + news  # shuffled repeats, then all
    state = fsm.OrderState(ORDER)
    parts = []
    for ev in delivered:
        change = fsm.apply(state, ev)
        assert change.src == change.dst or fsm.legal(change.src, change.dst) or not change.moved
        if change.moved and change.fill is not None:
            parts.append(change.fill)
    assert state.final and state.status == end
    # what the parts add up to is what the order has booked, and never more than the venue said
    assert sum(p.quantity for p in parts) == pytest.approx(state.filled)
    assert sum(p.quantity * p.price for p in parts) == pytest.approx(state.filled * state.avg_price)
    assert sum(p.fee_usd for p in parts) == pytest.approx(state.fee_usd)
    assert state.filled <= 10.0


@given(st.lists(st.sampled_from(fsm.STATUSES), max_size=12))
def test_no_sequence_of_statuses_leaves_the_machine_in_a_state_its_table_cannot_reach(statuses):
    state = fsm.OrderState(ORDER)
    seen = [state.status]
    for s in statuses:
        change = fsm.apply(state, fsm.VenueEvent("", "ax1", s))
        if change.moved and change.dst != change.src:
            assert fsm.legal(seen[-1], change.dst)
            seen.append(change.dst)
    if seen[-1] in fsm.TERMINAL:
        assert seen.count(seen[-1]) == 1 and all(x not in fsm.TERMINAL for x in seen[:-1])


def test_an_unknown_order_the_venue_never_had_is_denied_once_its_ttl_ran_out():
    """The in-flight checker asks about an UNKNOWN order, the venue has no record of it, and
    its TTL ran out meanwhile: the sender says DENIED. Refused as illegal, it left the order
    UNKNOWN in the ledger, its reservation held, for ever (seen with IBKR dropping its socket
    under `apex run`, tests/test_venues_together.py)."""
    state = fsm.OrderState(ORDER, "unknown")
    change = fsm.apply(state, fsm.VenueEvent("", "ax1", "denied", reason="not sent: its signal's TTL ran out"))
    assert change.moved and state.final and state.status == "denied"
