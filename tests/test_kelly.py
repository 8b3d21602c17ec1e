"""Kelly sizing, the KellyTracker, and the judge's sizing-related drops."""

from __future__ import annotations

from dataclasses import fields

import pytest

from helpers import DROP, model
from operators.audit import Chain
from operators.decide import EarlyDrop, audit_verdict, drop_row, is_expired, judge
from operators.filters import Filter, confidence
from operators.kelly import KellyParams, KellyTracker, Sizing, TrackerParams, efficiency, round_quantity, size
from operators.fill import Fill
from operators.portfolio import Portfolio

SEED = KellyParams()
LOTS = {"okx": 1e-8, "ibkr": 1.0}  # as the paper venue lists its markets' instruments


def _size(signal, *, nav=1_000_000.0, vol=0.0, drawdown=0.0, mult=1.0, price=100.0, params=SEED):
    return size(signal, nav=nav, vol=vol, drawdown=drawdown, tracker_multiplier=mult, price=price, params=params,
                lot_size=LOTS[signal.venue])


def test_seed_kelly_parameters():
    assert (SEED.vol_threshold, SEED.vol_haircut, SEED.drawdown_threshold, SEED.drawdown_haircut) == (0.15, 0.30, 0.10, 0.50)
    assert (SEED.tracker.window, SEED.tracker.min_trades, SEED.tracker.bounds) == (20, 5, (0.5, 1.5))


def test_no_haircut_size_is_nav_times_suggested_kelly():
    s = _size(model(suggested_kelly=0.02, max_position_usd=1_000_000.0))
    assert (s.vol_factor, s.drawdown_factor, s.tracker_multiplier) == (1.0, 1.0, 1.0)
    assert s.kelly == pytest.approx(0.02)
    assert s.size_usd == pytest.approx(20_000.0)


@pytest.mark.parametrize("vol, factor", [(0.0, 1.0), (0.15, 1.0), (0.1501, 0.7), (0.5, 0.7)])
def test_vol_haircut_only_above_threshold(vol, factor):
    s = _size(model(suggested_kelly=0.02, max_position_usd=1_000_000.0), vol=vol)
    assert s.vol_factor == pytest.approx(factor)
    assert s.size_usd == pytest.approx(20_000.0 * factor)


@pytest.mark.parametrize("dd, factor", [(0.0, 1.0), (0.10, 1.0), (0.1001, 0.5), (0.3, 0.5)])
def test_drawdown_haircut_only_above_threshold(dd, factor):
    s = _size(model(suggested_kelly=0.02, max_position_usd=1_000_000.0), drawdown=dd)
    assert s.drawdown_factor == pytest.approx(factor)
    assert s.size_usd == pytest.approx(20_000.0 * factor)


def test_both_haircuts_and_tracker_multiply():
    s = _size(model(suggested_kelly=0.02, max_position_usd=1_000_000.0), vol=0.2, drawdown=0.2, mult=1.03)
    assert s.kelly == pytest.approx(0.02 * 0.7 * 0.5 * 1.03)
    assert s.size_usd == pytest.approx(7_210.0)


def test_custom_haircuts_from_params():
    params = KellyParams(vol_threshold=0.5, vol_haircut=0.5, drawdown_threshold=0.2, drawdown_haircut=0.25)
    s = _size(model(suggested_kelly=0.02, max_position_usd=1_000_000.0), vol=0.4, drawdown=0.21, params=params)
    assert (s.vol_factor, s.drawdown_factor) == (1.0, 0.75)
    assert s.size_usd == pytest.approx(15_000.0)


def test_size_is_capped_at_max_position_usd():
    s = _size(model(suggested_kelly=0.02, max_position_usd=5_000.0))
    assert s.size_usd == 5_000.0
    assert s.cap_usd == 5_000.0
    assert s.quantity == 50.0


def test_factors_exclude_size_usd_and_name_every_input():
    s = _size(model(suggested_kelly=0.02, max_position_usd=5_000.0), vol=0.2, drawdown=0.05, mult=0.9)
    assert s.factors() == {
        "suggested_kelly": 0.02, "vol": 0.2, "vol_factor": pytest.approx(0.7), "drawdown": 0.05,
        "drawdown_factor": 1.0, "tracker_multiplier": 0.9, "kelly": pytest.approx(0.0126),
        "nav": 1_000_000.0, "cap_usd": 5_000.0, "price": 100.0, "quantity": 50.0,
    }
    assert set(s.factors()) == {f.name for f in fields(Sizing)} - {"size_usd"}  # a new field is audited too


@pytest.mark.parametrize(
    "size_usd, price, qty",
    [
        (1000.0, 3.0, 333.33333333),  # floored to 1e-8
        (2000.0, 3.0, 666.66666666),  # floored, not rounded (rounding gives ...67)
        (5000.0, 95000.0, 0.05263157),
        (1000.0, 0.25, 4000.0),
        (0.0000001, 100.0, 0.0),
    ],
)
def test_okx_quantity_floored_to_1e_8(size_usd, price, qty):
    got = round_quantity(1e-8, size_usd, price)
    assert got == pytest.approx(qty, abs=1e-12)
    assert got <= size_usd / price


@pytest.mark.parametrize(
    "size_usd, price, qty",
    [(1000.0, 300.0, 3.0), (999.99, 100.0, 9.0), (1000.0, 100.0, 10.0), (5000.0, 10000.0, 0.0)],
)
def test_ibkr_quantity_whole_shares_floored(size_usd, price, qty):
    assert round_quantity(1.0, size_usd, price) == qty


@pytest.mark.parametrize(
    "lot, size_usd, price, qty",
    [(100.0, 25_000.0, 10.0, 2_500.0), (100.0, 24_990.0, 10.0, 2_400.0), (0.001, 1000.0, 3.0, 333.333),
     (0.0, 1000.0, 3.0, 0.0)],  # lot 0: the venue does not trade it
)
def test_quantity_is_a_whole_number_of_the_lots_the_venue_lists(lot, size_usd, price, qty):
    assert round_quantity(lot, size_usd, price) == pytest.approx(qty, abs=1e-12)


def test_an_instrument_its_venue_does_not_trade_is_dropped_as_not_listed():
    v = judge(model(), clock_ms=1767261600000, already_decided=False, book=_book(), filters=[], early=None,
              kelly=SEED, lot_size=0.0)
    assert (v.outcome, v.reason, v.details) == ("dropped", "not_listed",
                                                {"why": "okx BTC-USDT: its venue does not list it"})


def test_an_instrument_whose_lots_are_not_known_yet_is_dropped_as_pending_not_unlisted():
    v = judge(model(), clock_ms=1767261600000, already_decided=False, book=_book(), filters=[], early=None,
              kelly=SEED, lot_size=None)
    assert (v.outcome, v.reason) == ("dropped", "instrument_pending")


def test_sizing_uses_venue_lot_rules():
    assert _size(model(venue="ibkr", symbol="AAPL", max_position_usd=1000.0), price=300.0).quantity == 3.0
    assert _size(model(venue="okx", max_position_usd=1000.0), price=3.0).quantity == pytest.approx(333.33333333, abs=1e-12)


# --- the judge: duplicate, TTL, min_size, no_price -----------------------------------------------

def _book(nav: float = 1_000_000.0) -> Portfolio:
    return Portfolio(nav, SEED)


def _judge(signal, *, clock_ms=1767261600000, decided=False, book=None, filters=(), early=None):
    return judge(signal, clock_ms=clock_ms, already_decided=decided, book=book or _book(),
                 filters=list(filters), early=early, kelly=SEED, lot_size=LOTS[signal.venue])


def test_zero_quantity_is_dropped_with_min_size():
    v = _judge(model(venue="ibkr", symbol="SPY", reference_price=10_000.0, max_position_usd=5_000.0))
    assert (v.outcome, v.reason) == ("dropped", "min_size")
    assert v.sizing.size_usd == 5_000.0
    assert v.sizing.quantity == 0.0


def test_okx_dust_is_dropped_with_min_size():
    v = _judge(model(max_position_usd=0.0000001, reference_price=100.0))
    assert (v.outcome, v.reason) == ("dropped", "min_size")


def test_one_share_is_enough():
    v = _judge(model(venue="ibkr", symbol="SPY", reference_price=5_000.0, max_position_usd=5_000.0))
    assert v.outcome == "order"
    assert v.sizing.quantity == 1.0


def test_no_reference_price_and_no_mark_is_dropped_with_no_price():
    v = _judge(model(venue="ibkr", symbol="MSFT", reference_price=DROP))
    assert (v.outcome, v.reason) == ("dropped", "no_price")


def test_no_reference_price_uses_the_books_mark():
    book = _book()
    book.apply_fill(Fill("s0", "c0", "o0", "okx", "BTC-USDT", "buy", 1.0, 250.0, 0.0, 1767261600000))
    v = _judge(model(reference_price=DROP, max_position_usd=5_000.0), book=book)
    assert v.outcome == "order"
    assert v.sizing.price == 250.0
    assert v.sizing.quantity == 20.0


def test_duplicate_wins_over_expired_and_filters():
    v = _judge(model(ttl_seconds=1), clock_ms=1767261700000, decided=True)
    assert (v.outcome, v.reason) == ("duplicate", "signal_id already decided")


def test_ttl_boundary_in_the_judge():
    s = model(ttl_seconds=30)  # emitted 1767261600000
    assert not is_expired(1767261630000 - s.emitted_ms, s.ttl_seconds)
    assert is_expired(1767261630001 - s.emitted_ms, s.ttl_seconds)
    assert _judge(s, clock_ms=1767261630000).outcome == "order"
    v = _judge(s, clock_ms=1767261630001)
    assert (v.outcome, v.reason, v.age_ms) == ("expired", "ttl", 30001)


def test_expired_is_decided_before_filters():
    f = Filter("confidence", confidence, {"min": 0.65}, False)
    v = _judge(model(ttl_seconds=30, confidence=0.1), clock_ms=1767261630001, filters=[f],
               early=EarlyDrop(0, "confidence"))
    assert v.outcome == "expired"


def test_filters_drop_before_min_size():
    f = Filter("confidence", confidence, {"min": 0.65}, False)
    s = model(venue="ibkr", symbol="SPY", reference_price=10_000.0, confidence=0.1)
    v = _judge(s, filters=[f], early=EarlyDrop(0, "confidence"))
    assert (v.outcome, v.reason) == ("dropped", "confidence")
    assert v.checked == [("confidence", False)]


# --- what a verdict leaves in the audit trail -------------------------------------------------

def _events(v, signal, decided_at=""):
    chain = Chain("1767261600000-0", signal.signal_id, 1767261600000)
    audit_verdict(v, signal, chain, decided_at)
    return [(ev.stage, ev.outcome, ev.reason) for ev in chain.events], chain.events


def test_a_filter_drop_is_received_then_dropped_by_the_filter_never_sized():
    f = Filter("confidence", confidence, {"min": 0.65}, False)
    s = model(confidence=0.1)
    v = _judge(s, filters=[f], early=EarlyDrop(0, "confidence"))
    stages, events = _events(v, s)
    assert stages == [("SIGNAL_RECEIVED", "received", ""), ("FILTER_CHECK", "dropped", "confidence")]
    assert events[1].details == {"checked": [("confidence", False)]}
    assert drop_row(v, s, "1767261600000-0", 1767261600000) == [
        s.signal_id, "1767261600000-0", "confidence", 1767261600000, s.source, s.venue, s.symbol, 0.1, s.regime]


def test_an_order_is_received_passes_the_filters_and_is_sized():
    s = model(venue="ibkr", symbol="SPY", reference_price=5_000.0, max_position_usd=5_000.0)
    v = _judge(s)
    stages, events = _events(v, s)
    assert stages == [("SIGNAL_RECEIVED", "received", ""), ("FILTER_CHECK", "passed", ""),
                      ("POSITION_SIZING", "sized", "")]
    assert events[2].size_usd == 5_000.0 and events[2].details["quantity"] == 1.0
    assert drop_row(v, s, "1767261600000-0", 1767261600000) is None  # no filter dropped it


def test_a_sizing_drop_passes_the_filters_and_names_the_sizing_reason():
    s = model(venue="ibkr", symbol="SPY", reference_price=10_000.0, max_position_usd=5_000.0)
    v = _judge(s)
    assert v.filters_passed
    stages, _ = _events(v, s)
    assert stages[1:] == [("FILTER_CHECK", "passed", ""), ("POSITION_SIZING", "dropped", "min_size")]
    assert drop_row(v, s, "1767261600000-0", 1767261600000) is None  # not a filter drop


def test_expired_and_duplicate_stop_at_receipt():
    s = model(ttl_seconds=30)
    stages, events = _events(_judge(s, clock_ms=1767261630001), s)
    assert stages == [("SIGNAL_RECEIVED", "expired", "ttl")]
    assert events[0].details == {"age_ms": 30001, "ttl_seconds": 30}
    stages, _ = _events(_judge(s, decided=True), s, "1767261500000-0 as filled")
    assert stages == [("SIGNAL_RECEIVED", "duplicate", "signal_id decided at 1767261500000-0 as filled")]


# --- KellyTracker ----------------------------------------------------------------------------

def test_efficiency_of_the_seed_is_1_03():
    assert round(efficiency(0.64, 0.62, (0.5, 1.5)), 2) == 1.03


@pytest.mark.parametrize(
    "realized, expected, mult",
    [(0.0, 0.6, 0.5), (0.2, 0.6, 0.5), (0.6, 0.6, 1.0), (0.9, 0.5, 1.5), (1.0, 0.5, 1.5), (0.33, 0.6, 0.55)],
)
def test_efficiency_is_clamped_to_bounds(realized, expected, mult):
    assert efficiency(realized, expected, (0.5, 1.5)) == pytest.approx(mult)


def test_efficiency_with_zero_expected_win_rate_is_the_low_bound():
    assert efficiency(0.5, 0.0, (0.5, 1.5)) == 0.5


def _tracker(window=20, min_trades=5, bounds=(0.5, 1.5)) -> KellyTracker:
    return KellyTracker(TrackerParams(window=window, min_trades=min_trades, bounds=bounds))


def test_tracker_is_one_below_min_trades():
    t = _tracker()
    for _ in range(4):
        t.record(False, 0.6)
    assert t.count == 4
    assert t.multiplier() == 1.0
    t.record(False, 0.6)
    assert t.multiplier() == 0.5  # fifth close: realized 0 -> clamped to the low bound


def test_tracker_at_min_trades_uses_realized_over_expected():
    t = _tracker()
    for won in (True, True, True, False, False):
        t.record(won, 0.5)
    assert t.multiplier() == pytest.approx(0.6 / 0.5)


def test_tracker_keeps_only_the_trailing_window():
    t = _tracker(window=20)
    for _ in range(10):
        t.record(True, 0.5)
    for i in range(20):
        t.record(i % 2 == 0, 0.5)
    assert t.count == 20
    # the last 20 are half wins: 0.5 / 0.5; all 30 would give (20/30) / 0.5 = 1.33
    assert t.multiplier() == pytest.approx(1.0)


def test_tracker_expected_is_the_mean_over_the_window():
    t = _tracker(window=5)
    for exp in (0.9, 0.9, 0.4, 0.4, 0.4, 0.4, 0.4):  # first two fall out of the window
        t.record(True, exp) if exp == 0.4 else t.record(False, exp)
    t.record(False, 0.4)
    # window: [T.4, T.4, T.4, T.4, F.4] -> 0.8 / 0.4 = 2.0 -> clamped 1.5
    assert t.multiplier() == 1.5


def test_tracker_clamped_high_and_low():
    hi, lo = _tracker(), _tracker()
    for _ in range(20):
        hi.record(True, 0.5)
        lo.record(False, 0.5)
    assert hi.multiplier() == 1.5
    assert lo.multiplier() == 0.5


def test_tracker_custom_bounds():
    t = _tracker(bounds=(0.8, 1.2))
    for _ in range(10):
        t.record(True, 0.5)
    assert t.multiplier() == 1.2


def test_tracker_fed_the_seeds_47_trades_gives_1_03():
    t = _tracker(window=47)
    for i in range(47):
        t.record(i < 30, 0.62)
    assert t.count == 47
    assert t.multiplier() == pytest.approx(1.03, abs=0.005)
    assert t.multiplier() == pytest.approx((30 / 47) / 0.62)


def test_tracker_params_reject_bad_bounds():
    with pytest.raises(ValueError):
        TrackerParams(bounds=(1.1, 1.5))
    with pytest.raises(ValueError):
        TrackerParams(bounds=(0.5, 0.9))


def test_the_book_keeps_each_positions_value_marked_as_fills_and_prices_arrive():
    """Values are kept symbol by symbol, not rebuilt: they must equal a rebuild at every step."""
    book = Portfolio(1_000_000, SEED)

    def rebuilt() -> dict:
        return {k: q * book.marks[k[1]] for k, q in book.positions.items() if q}

    def fill(sid, venue, symbol, side, qty, price, fee=1.0):
        book.apply_fill(Fill(sid, "c" + sid, "o" + sid, venue, symbol, side, qty, price, fee, 1))

    fill("a", "okx", "BTC-USDT", "buy", 2.0, 100.0)
    fill("b", "ibkr", "BTC-USDT", "sell", 1.0, 101.0)  # same symbol on another venue: re-marks both
    assert book.position_values() == {("okx", "BTC-USDT"): 202.0, ("ibkr", "BTC-USDT"): -101.0}
    book.on_price("BTC-USDT", 90.0, 60_000)
    assert book.position_values() == rebuilt() == {("okx", "BTC-USDT"): 180.0, ("ibkr", "BTC-USDT"): -90.0}
    fill("c", "okx", "BTC-USDT", "sell", 2.0, 95.0)  # flat on okx: no longer held
    assert book.position_values() == rebuilt() == {("ibkr", "BTC-USDT"): -95.0}
    assert book.nav == pytest.approx(1_000_000 - 200 + 101 + 190 - 3.0 - 95.0)
