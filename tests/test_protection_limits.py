"""The protection limit every order carries (``operators/protection.py``): on the tick grid,
never outside the band, and what counts as a fill beyond it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.protection import (
    beyond_band,
    is_protection,
    limit_price,
    not_marketable,
    protected_reason,
    venue_price_in,
)


def test_a_buys_limit_is_the_reference_plus_the_band_on_the_tick():
    assert limit_price("buy", 100.0, 50, 0.01) == 100.5
    assert limit_price("sell", 100.0, 50, 0.01) == 99.5


@pytest.mark.parametrize("side, edge", [("buy", 95_475.0), ("sell", 94_525.0)])
def test_band_edge_plus_or_minus_one_tick(side, edge):
    """Reference 95,000, band 50 bps, tick 0.1: the edge itself is on the grid and is the
    limit; a reference one tick either way moves the limit by the band's share of a tick,
    rounded towards the reference, never past the edge."""
    tick = 0.1
    assert limit_price(side, 95_000.0, 50, tick) == edge
    up = limit_price(side, 95_000.0 + tick, 50, tick)  # edge at 95,475.1005 / 94,525.0995
    down = limit_price(side, 95_000.0 - tick, 50, tick)  # edge at 95,474.8995 / 94,524.9005
    if side == "buy":
        assert (up, down) == (95_475.1, 95_474.8)
    else:
        assert (up, down) == (94_525.1, 94_525.0)


def test_a_limit_one_tick_inside_the_edge_when_the_edge_is_off_the_grid():
    # 123.45 * 1.005 = 124.06725: a buy may pay 124.06, not 124.07 (a tick beyond the band)
    assert limit_price("buy", 123.45, 50, 0.01) == 124.06
    # 123.45 * 0.995 = 122.83275: a sell takes at least 122.84, not 122.83
    assert limit_price("sell", 123.45, 50, 0.01) == 122.84


def test_no_reference_no_limit():
    assert limit_price("buy", 0.0, 50, 0.01) == 0.0


def test_a_band_that_ends_below_one_tick_is_never_widened_to_the_tick():
    """A buy of a coin priced under the tick: the grid's first price (0.01) would pay 500x the
    reference; its limit is the edge, off the grid, which a venue refuses rather than fills."""
    assert limit_price("buy", 1.8e-5, 50, 0.01) == pytest.approx(1.8e-5 * 1.005)
    assert limit_price("sell", 100.0, 10_000, 0.01) == 0.01  # a band of 100%: the least price on the grid


def test_a_fill_beyond_the_band_either_way_is_an_alert_and_one_at_the_edge_is_not():
    assert not beyond_band("buy", 100.0, 100.5, 50)
    assert beyond_band("buy", 100.0, 100.51, 50)
    assert beyond_band("buy", 95_000.0, 100.0, 50)  # the simulator's old built-in price, 950x below
    assert not beyond_band("sell", 100.0, 99.5, 50)
    assert beyond_band("sell", 100.0, 99.49, 50)


def test_the_venue_price_travels_in_the_cancel_reason():
    said = not_marketable(3417.0, 34_000.0)
    assert is_protection(said) and venue_price_in(said) == 34_000.0
    assert venue_price_in(not_marketable(3417.0, None)) is None
    assert venue_price_in("Order Canceled - reason:IOC not marketable at limit 101.5; venue price 1000") == 1000
    assert protected_reason(3400.0, 3417.0, 34_000.0) == "reference 3400, limit 3417, venue price 34000"
    # every digit kept: the venue's price is read back from the reason
    assert venue_price_in(not_marketable(95_475.12, 95_123.456789)) == 95_123.456789


# up to 15 significant digits on the grid: what a float carries exactly to the venue
prices = st.floats(min_value=1e-4, max_value=1e6, allow_nan=False, allow_infinity=False)
bands = st.floats(min_value=0.1, max_value=5_000, allow_nan=False)
ticks = st.sampled_from([1e-8, 1e-4, 0.01, 0.05, 0.1, 1.0, 5.0])


@given(side=st.sampled_from(["buy", "sell"]), ref=prices, band=bands, tick=ticks)
def test_the_limit_never_lies_outside_the_band_and_is_on_the_grid(side, ref, band, tick):
    limit = limit_price(side, ref, band, tick)
    r, b, t, lim = (Decimal(repr(x)) for x in (ref, band, tick, limit))
    if side == "buy":
        edge = r * (1 + b / 10_000)
        assert lim <= edge  # never pays more than the band allows
        assert lim > edge - t  # the best grid price inside it: a tick more would be outside
    else:
        edge = r * (1 - b / 10_000)
        if lim > 0:
            assert lim >= edge  # never sells for less than the band allows
            assert lim < edge + t or lim == t
    if lim >= t:  # below one tick, a buy's limit is the edge itself, off the grid (the venue refuses it)
        assert (lim / t) == (lim / t).to_integral_value()  # on the tick grid


def test_the_limit_is_kept_with_the_intent_and_a_ledger_written_before_it_gains_the_column(tmp_path):
    """An order resumed after a restart leaves with its limit, never as a market order."""
    import sqlite3

    from connectors.ledger import Ledger
    from operators.orders import Order, client_order_id

    path = tmp_path / "ledger.sqlite"
    old = Ledger(path)
    old.db.execute("ALTER TABLE executions DROP COLUMN limit_px")  # as a ledger written before limits were kept
    old.db.close()
    ledger = Ledger(path)
    order = Order(client_order_id("s1"), "s1", "open", "okx", "BTC-USDT", "buy", 0.5, 95_000.0, 1, 95_475.0)
    ledger.record_intent(order)
    assert ledger.intent("s1") == order
    assert [o for o, _, _, _ in ledger.live("open")] == [order]
    ledger.db.close()
    cols = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(executions)")]
    assert cols.count("limit_px") == 1
