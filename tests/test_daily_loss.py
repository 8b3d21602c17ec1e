"""The day's loss (operators/daily_loss.py): the UTC day boundary to the millisecond, the
day's opening NAV, the breach at exactly its limit and one cent past it, its hold until the
next day or a resume, and what the book keeps of it across a restart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.daily_loss import DAY_MS, DayLoss, breach
from operators.fill import Fill
from operators.filters import Filter
from operators.kelly import KellyParams
from operators.portfolio import Portfolio
from operators.risk_filters import daily_loss, daily_loss_breach

DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NAV = 1_000_000.0


def day_at(*navs: float, start: int = DAY0 + 3_600_000) -> DayLoss:
    d = DayLoss(NAV)
    for i, nav in enumerate(navs):
        d.observe(start + i, nav)
    return d


@pytest.mark.parametrize("low, breached", [(970_000.0, False), (969_999.99, True), (1_100_000.0, False)])
def test_the_breach_is_one_cent_past_the_limit(low, breached):
    assert day_at(NAV, low).breached(0.03) is breached


def test_the_breach_holds_when_prices_come_back():
    d = day_at(NAV, 960_000.0, 1_000_000.0)
    assert d.breached(0.03)
    assert d.loss == pytest.approx(0.04)


def test_the_first_nav_ever_seen_opens_the_day_at_the_books_nav_before_it():
    d = DayLoss(NAV)
    d.observe(DAY0 + 5, 969_999.99)  # a fall on the first price the book ever sees
    assert d.open_nav == NAV and d.breached(0.03)


@pytest.mark.parametrize("clock, new_day", [(DAY0 + DAY_MS - 1, False), (DAY0 + DAY_MS, True)])
def test_the_day_turns_at_midnight_utc_to_the_millisecond(clock, new_day):
    d = day_at(NAV, 960_000.0, 950_000.0)
    d.observe(clock, 955_000.0)
    assert d.breached(0.03) is not new_day
    # a new day opens at the NAV held over midnight (950,000), not at its own first one
    assert d.open_nav == (950_000.0 if new_day else NAV)


def test_a_new_day_measures_from_its_opening_nav():
    d = day_at(NAV, 960_000.0)
    d.observe(DAY0 + DAY_MS + 1, 960_000.0)
    d.observe(DAY0 + DAY_MS + 2, 931_200.0)  # exactly 3% of 960,000
    assert not d.breached(0.03)
    d.observe(DAY0 + DAY_MS + 3, 931_199.99)
    assert d.breached(0.03)


def test_a_clock_that_goes_back_does_not_turn_the_day_back():
    d = day_at(NAV, 960_000.0)
    d.observe(DAY0 - 1, 960_000.0)
    assert d.day == DAY0 // DAY_MS and d.breached(0.03)


def test_resume_starts_the_days_budget_again_from_the_nav_it_finds():
    d = day_at(NAV, 960_000.0)
    d.resume(960_000.0)
    assert not d.breached(0.03)
    d.observe(DAY0 + 3_700_000, 931_200.0)
    assert not d.breached(0.03)
    d.observe(DAY0 + 3_700_001, 931_199.99)
    assert d.breached(0.03)


def test_the_breach_says_what_to_do_and_why():
    b = breach(day_at(NAV, 960_000.0), 0.03, "reduce")
    assert b is not None and b.state == "REDUCING" and b.loss == pytest.approx(0.04)
    assert b.reason() == ("daily_loss: the day's loss 4.00% passed 3.00% of its opening NAV 1,000,000.00 "
                          "(lowest NAV 960,000.00)")
    assert breach(day_at(NAV, 960_000.0), 0.03, "halt").state == "HALTED"
    assert breach(day_at(NAV, 970_000.0), 0.03, "halt") is None


def test_a_books_breach_is_read_through_its_configured_filter():
    f = Filter("daily_loss", daily_loss, {"max_loss": 0.05, "on_breach": "reduce"}, True)
    d = day_at(NAV, 960_000.0)
    assert daily_loss_breach(d, [f]) is None  # 4% < 5%
    d.observe(DAY0 + 3_600_005, 949_999.99)
    b = daily_loss_breach(d, [f])
    assert b is not None and (b.max_loss, b.state) == (0.05, "REDUCING")
    assert daily_loss_breach(d, []) is None  # no daily_loss filter: no rule to breach


# --- in the book ------------------------------------------------------------------------------------

FILL = Fill("s1", "c1", "o1", "okx", "BTC-USDT", "buy", 5000.0, 100.0, 0.0, DAY0 + 1000)


def test_the_book_feeds_its_navs_to_the_day_and_keeps_it_across_a_restart():
    book = Portfolio(NAV, KellyParams())
    book.apply_fill(FILL)
    book.on_price("BTC-USDT", 93.99, DAY0 + 2000)  # 500,000 × 6.01% = 30,050 lost
    assert book.day_loss.breached(0.03)
    state = book.market_state()
    again = Portfolio(NAV, KellyParams())
    again.apply_fill(FILL)
    again.restore_market(state)
    assert again.day_loss.state() == book.day_loss.state()
    assert again.day_loss.breached(0.03)
    # a state written before the day was kept: the day starts again at the book's NAV
    old = {k: v for k, v in state.items() if k != "day"}
    older = Portfolio(NAV, KellyParams())
    older.restore_market(old)
    assert older.day_loss.day is None and not older.day_loss.breached(0.03)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(navs=st.lists(st.floats(min_value=1.0, max_value=3e6), min_size=1, max_size=40),
       max_loss=st.floats(min_value=0.001, max_value=0.5))
def test_within_a_day_a_breach_never_clears_and_comes_exactly_when_the_low_passes_the_limit(navs, max_loss):
    d = DayLoss(NAV)
    seen = False
    for i, nav in enumerate(navs):
        d.observe(DAY0 + i, nav)
        now = d.breached(max_loss)
        assert now or not seen, "a breach cleared within its day"
        assert now == (NAV - min(navs[: i + 1]) > max_loss * NAV)
        seen = now
