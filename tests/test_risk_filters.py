"""The risk gate's filters (operators/risk_filters.py) at their boundaries, on PortfolioView
literals: a value exactly at a limit passes and one cent (of an order, or of a loss) beyond
it drops; and gross exposure, as a property, never passes its limit whatever is accepted."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import model
from operators.correlation import ReturnsEstimator, combined_risk
from operators.daily_loss import DayLoss
from operators.exits import TradeTerms
from operators.filters import BUILTINS, PortfolioView
from operators.risk_filters import (
    correlation_budget,
    daily_loss,
    gross_exposure,
    order_risk,
    position_risk,
    sector_exposure,
    trade_risk,
)

NAV = 1_000_000.0
SETTINGS = dict(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def view(proposed: float = 0.0, positions: dict | None = None, trades: list[TradeTerms] = (), marks=None,
         day: DayLoss | None = None, returns: ReturnsEstimator | None = None, nav: float = NAV) -> PortfolioView:
    return PortfolioView(nav=nav, position_values=positions or {}, proposed_usd=proposed,
                         open_trades={t.signal_id: t for t in trades}, marks=marks or {}, day=day, returns=returns)


def trade(sid: str, symbol: str = "BTC-USDT", side: str = "buy", qty: float = 10.0, entry: float = 1000.0,
          stop: float | None = 0.1, venue: str = "okx") -> TradeTerms:
    return TradeTerms(sid, "macro", venue, symbol, side, qty, entry, 0, 0.0, "trending_up", stop, (), 0, False, 0.6)


def test_every_risk_filter_is_a_builtin_that_reads_the_book():
    for name in ("position_risk", "gross_exposure", "sector_exposure", "daily_loss", "correlation_budget"):
        assert BUILTINS[name].needs_portfolio, name


# --- a trade's risk to its stop ------------------------------------------------------------------

@pytest.mark.parametrize("side, mark, risk", [
    ("buy", 1000.0, 1000.0),  # 10 × (1000 − 900)
    ("buy", 950.0, 500.0),  # nearer its stop: less to lose
    ("buy", 1100.0, 2000.0),  # a gain is at risk too
    ("buy", 880.0, 0.0),  # past its stop (the exit is on its way): nothing more to lose, not a negative risk
    ("sell", 1000.0, -1000.0),  # a short's stop is above: 10 × (1100 − 1000), signed short
    ("sell", 1050.0, -500.0),
    ("sell", 1200.0, 0.0),
])
def test_a_trades_risk_is_what_it_loses_from_its_mark_to_its_stop(side, mark, risk):
    assert trade_risk(trade("t", side=side), mark, 1.0) == risk


def test_a_trade_without_a_mark_is_held_at_its_entry_and_one_without_a_stop_at_the_assumed_one():
    assert trade_risk(trade("t"), None, 1.0) == 1000.0
    assert trade_risk(trade("t", stop=None), 1000.0, 1.0) == 10_000.0  # all of it
    assert trade_risk(trade("t", stop=None), 1000.0, 0.25) == 2500.0


def test_the_orders_risk_is_its_size_times_its_stop_signed_by_side():
    assert order_risk(model(), view(200_000.0), 1.0) == 10_000.0  # the base signal's stop: 5%
    assert order_risk(model(side="sell"), view(200_000.0), 1.0) == -10_000.0


# --- position_risk: the position's loss to its stops ≤ max_risk × NAV --------------------------------

@pytest.mark.parametrize("proposed, passes", [(200_000.0, True), (200_000.01, False), (0.0, True)])
def test_position_risk_boundary_of_the_order_alone(proposed, passes):
    # 5% stop: 200,000 risks 10,000, 1% of NAV
    assert position_risk(model(), view(proposed), max_risk=0.01, assumed_stop_pct=1.0) is passes


@pytest.mark.parametrize("mark, proposed, passes", [
    (1000.0, 180_000.0, True),  # 1,000 held + 9,000 = 10,000
    (1000.0, 180_000.01, False),
    (950.0, 190_000.0, True),  # the trade is nearer its stop: 500 held + 9,500
    (950.0, 190_000.01, False),
])
def test_position_risk_counts_the_trades_already_open_in_the_instrument(mark, proposed, passes):
    v = view(proposed, trades=[trade("t1")], marks={"BTC-USDT": mark})
    assert position_risk(model(), v, max_risk=0.01, assumed_stop_pct=1.0) is passes


def test_position_risk_counts_a_short_by_its_size_and_leaves_other_instruments_out():
    short = trade("t1", side="sell")
    v = view(180_000.01, trades=[short], marks={"BTC-USDT": 1000.0})
    assert position_risk(model(), v, max_risk=0.01, assumed_stop_pct=1.0) is False  # signed, −1,000 would let it pass
    others = [trade("t2", symbol="ETH-USDT"), trade("t3", venue="ibkr")]
    v = view(200_000.0, trades=others, marks={"BTC-USDT": 1000.0, "ETH-USDT": 1000.0})
    assert position_risk(model(), v, max_risk=0.01, assumed_stop_pct=1.0) is True


@pytest.mark.parametrize("assumed, proposed, passes", [(1.0, 10_000.0, True), (1.0, 10_000.01, False),
                                                       (0.5, 20_000.0, True), (0.5, 20_000.01, False)])
def test_a_signal_without_a_hard_stop_risks_the_assumed_share(assumed, proposed, passes):
    s = model(exit_rules={"description": "no stop"})
    assert position_risk(s, view(proposed), max_risk=0.01, assumed_stop_pct=assumed) is passes


# --- gross_exposure: Σ |positions| + the order ≤ max_gross × NAV ------------------------------------

BOOK = {("okx", "BTC-USDT"): 300_000.0, ("ibkr", "AAPL"): -200_000.0}


@pytest.mark.parametrize("proposed, max_gross, passes", [
    (500_000.0, 1.0, True), (500_000.01, 1.0, False),
    (1_500_000.0, 2.0, True), (1_500_000.01, 2.0, False),  # leverage
])
def test_gross_exposure_boundary(proposed, max_gross, passes):
    assert gross_exposure(model(), view(proposed, BOOK), max_gross=max_gross) is passes


def test_gross_exposure_counts_a_short_as_exposure_and_a_sell_order_too():
    # signed, the book would be 100,000 and 800,000 more would pass
    assert gross_exposure(model(), view(800_000.0, BOOK), max_gross=1.0) is False
    assert gross_exposure(model(side="sell"), view(500_000.01, BOOK), max_gross=1.0) is False


@settings(max_examples=150, **SETTINGS)
@given(orders=st.lists(st.tuples(st.sampled_from(["BTC-USDT", "ETH-USDT", "AAPL"]), st.sampled_from(["buy", "sell"]),
                                 st.floats(min_value=0, max_value=600_000, allow_nan=False)), max_size=30),
       max_gross=st.floats(min_value=0.1, max_value=3.0))
def test_gross_exposure_never_passes_its_limit_after_any_accepted_sequence(orders, max_gross):
    positions: dict[tuple[str, str], float] = {}
    for symbol, side, usd in orders:
        if gross_exposure(model(symbol=symbol, side=side), view(usd, positions), max_gross=max_gross):
            key = ("okx", symbol)
            positions[key] = positions.get(key, 0.0) + (usd if side == "buy" else -usd)
        # an accepted order that reduced a position lowers gross: the limit is never passed either way
        assert sum(abs(v) for v in positions.values()) <= max_gross * NAV * (1 + 1e-12)


# --- sector_exposure: |net exposure of the signal's sector| ≤ its limit × NAV --------------------------

SECTORS = {"BTC-USDT": "crypto", "ETH-USDT": "crypto", "AAPL": "tech", "MSFT": "tech"}
HELD = {("okx", "BTC-USDT"): 100_000.0, ("okx", "ETH-USDT"): 50_000.0, ("ibkr", "AAPL"): 200_000.0}


def sector(signal, v, **kw):
    params = {"sectors": SECTORS, "max_net": 0.25, "limits": {}, "unknown_symbol": "drop"} | kw
    return sector_exposure(signal, v, **params)


@pytest.mark.parametrize("symbol, side, proposed, passes", [
    ("ETH-USDT", "buy", 100_000.0, True),  # crypto 150,000 + 100,000 = 250,000
    ("ETH-USDT", "buy", 100_000.01, False),
    ("MSFT", "buy", 50_000.0, True),  # tech 200,000 + 50,000
    ("MSFT", "buy", 50_000.01, False),
    ("MSFT", "sell", 450_000.0, True),  # tech 200,000 − 450,000 = −250,000: net short, at its limit
    ("MSFT", "sell", 450_000.01, False),  # and past it
])
def test_sector_exposure_boundary_long_and_short(symbol, side, proposed, passes):
    assert sector(model(symbol=symbol, side=side), view(proposed, HELD)) is passes


@pytest.mark.parametrize("proposed, passes", [(50_000.0, True), (50_000.01, False)])
def test_a_sectors_own_limit_replaces_max_net(proposed, passes):
    assert sector(model(symbol="ETH-USDT"), view(proposed, HELD), limits={"crypto": 0.2}) is passes
    # the other sector keeps max_net
    assert sector(model(symbol="MSFT"), view(50_000.0, HELD), limits={"crypto": 0.2}) is True


def test_an_order_bringing_a_sector_over_its_limit_nearer_flat_passes():
    over = {("okx", "BTC-USDT"): 300_000.0}  # over 250,000 (the market moved)
    assert sector(model(symbol="ETH-USDT", side="sell"), view(10_000.0, over)) is True
    assert sector(model(symbol="ETH-USDT", side="buy"), view(0.01, over)) is False
    assert sector(model(symbol="ETH-USDT", side="sell"), view(600_000.0, over)) is False  # as far on the other side


@pytest.mark.parametrize("policy, passes", [("drop", False), ("pass", True)])
def test_a_symbol_the_sector_file_does_not_name(policy, passes):
    assert sector(model(symbol="DOGE-USDT"), view(1.0, HELD), unknown_symbol=policy) is passes


# --- daily_loss: no new trade once the day's loss passed max_loss of its opening NAV ---------------------

DAY0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize("low, passes", [(970_000.0, True), (969_999.99, False)])
def test_daily_loss_boundary(low, passes):
    day = DayLoss(NAV)
    day.observe(DAY0 + 1, NAV)
    day.observe(DAY0 + 2, low)
    assert daily_loss(model(), view(1.0, day=day), max_loss=0.03, on_breach="halt") is passes


def test_daily_loss_passes_a_book_that_has_seen_no_day():
    assert daily_loss(model(), view(1.0), max_loss=0.03, on_breach="halt") is True


# --- correlation_budget: sqrt(wᵀ C w) of the open trades and the order ≤ max_combined × NAV --------------

CORR = {"max_combined": 0.06, "window_minutes": 60, "min_returns": 30, "assumed_stop_pct": 1.0}
HELD_TRADE = trade("t1", qty=50.0, entry=1000.0, stop=0.1)  # risks 5,000 at its entry


@pytest.mark.parametrize("proposed, passes", [(110_000.0, True), (110_000.02, False)])
def test_without_history_risks_add_up(proposed, passes):
    # no correlation known: 5,000 + 110,000 × 50% = 60,000, 6% of NAV
    s = model(symbol="ETH-USDT", exit_rules={"description": "", "hard_stop_pct": 0.5})
    v = view(proposed, trades=[HELD_TRADE], marks={"BTC-USDT": 1000.0}, returns=ReturnsEstimator(60))
    assert correlation_budget(s, v, **CORR) is passes


def test_without_history_a_long_and_a_short_are_not_a_hedge():
    s = model(symbol="ETH-USDT", side="sell", exit_rules={"description": "", "hard_stop_pct": 0.5})
    v = view(110_000.02, trades=[HELD_TRADE], marks={"BTC-USDT": 1000.0}, returns=ReturnsEstimator(60))
    assert correlation_budget(s, v, **CORR) is False  # perfectly correlated, it would be 50,000: a pass


@pytest.mark.parametrize("rho, total", [(0.0, 60_000.0), (1.0, 84_000.0), (-1.0, 12_000.0), (None, 84_000.0)])
def test_combined_risk_is_sqrt_of_w_c_w(rho, total):
    assert combined_risk({"A": 36_000.0, "B": 48_000.0}, lambda a, b: rho) == total
    # a short's risk is signed: an unknown correlation adds magnitudes still
    assert combined_risk({"A": 36_000.0, "B": -48_000.0}, lambda a, b: None) == 84_000.0


@settings(max_examples=200, **SETTINGS)
@given(risks=st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=8),
       rho=st.floats(min_value=-1.0, max_value=1.0))
def test_combined_risk_is_never_more_than_the_risks_added_and_exactly_that_when_nothing_is_known(risks, rho):
    w = {f"S{i}": r for i, r in enumerate(risks)}
    added = sum(abs(r) for r in risks)
    assert combined_risk(w, lambda a, b: None) == pytest.approx(added, rel=1e-9, abs=1e-6)
    assert 0.0 <= combined_risk(w, lambda a, b: rho) <= added * (1 + 1e-9) + 1e-6


def _walk(est: ReturnsEstimator, minutes: int, moves: dict[str, list[int]], start: int = DAY0) -> None:
    """One tick a minute per symbol, each a step of +1% or −1% by its pattern (repeated)."""
    price = {s: 100.0 for s in moves}
    for m in range(minutes):
        for s, pattern in moves.items():
            price[s] *= math.exp(0.01 * pattern[m % len(pattern)])
            est.observe(s, price[s], start + m * 60_000)


def test_anti_correlated_history_lets_a_second_long_through_as_a_hedge():
    est = ReturnsEstimator(60)
    _walk(est, 62, {"BTC-USDT": [1, -1], "ETH-USDT": [-1, 1]})
    assert est.correlation("BTC-USDT", "ETH-USDT", 60, 30) == pytest.approx(-1.0)
    s = model(symbol="ETH-USDT", exit_rules={"description": "", "hard_stop_pct": 0.5})
    held = trade("t1", qty=50.0, entry=1000.0, stop=0.1)
    v = view(110_000.02, trades=[held], marks={"BTC-USDT": 1000.0}, returns=est)
    assert correlation_budget(s, v, **CORR) is True  # |5,000 − 55,000| = 50,000
    assert correlation_budget(s, view(110_000.02, trades=[held], marks={"BTC-USDT": 1000.0},
                                      returns=ReturnsEstimator(60)), **CORR) is False


def test_the_books_price_history_survives_a_restart_and_decides_as_before():
    """The book keeps its minutes' closes with its market state: restored from it, the
    correlations, and so the budget's decision, are the uninterrupted book's."""
    from operators.kelly import KellyParams
    from operators.portfolio import Portfolio

    book = Portfolio(NAV, KellyParams(), correlation_minutes=60)
    _walk(book.returns, 62, {"BTC-USDT": [1, -1], "ETH-USDT": [-1, 1]})
    again = Portfolio(NAV, KellyParams(), correlation_minutes=60)
    again.restore_market(book.market_state())
    assert again.returns.correlation("BTC-USDT", "ETH-USDT", 60, 30) == pytest.approx(-1.0)
    s = model(symbol="ETH-USDT", exit_rules={"description": "", "hard_stop_pct": 0.5})
    held = trade("t1", qty=50.0, entry=1000.0, stop=0.1)
    v = view(110_000.02, trades=[held], marks={"BTC-USDT": 1000.0}, returns=again.returns)
    assert correlation_budget(s, v, **CORR) is True  # as the uninterrupted book decides (above)
    # a narrower window after the restart keeps the latest closes that fit it
    narrow = Portfolio(NAV, KellyParams(), correlation_minutes=30)
    narrow.restore_market(book.market_state())
    assert narrow.returns.correlation("BTC-USDT", "ETH-USDT", 30, 10) == pytest.approx(-1.0)
    # no filter asks for correlations: nothing kept; a state from before the history was kept: none
    assert "corr" not in Portfolio(NAV, KellyParams()).market_state()
    old = {k: v for k, v in book.market_state().items() if k != "corr"}
    older = Portfolio(NAV, KellyParams(), correlation_minutes=60)
    older.restore_market(old)
    assert older.returns.correlation("BTC-USDT", "ETH-USDT", 60, 30) is None


# --- the estimator ---------------------------------------------------------------------------------

def test_correlation_of_moves_together_and_apart():
    est = ReturnsEstimator(80)
    _walk(est, 40, {"A": [1, -1, 1, 1], "B": [1, -1, 1, 1], "C": [-1, 1, -1, -1], "D": [1, 1, -1, -1]})
    assert est.correlation("A", "B", 30, 10) == pytest.approx(1.0)
    assert est.correlation("A", "C", 30, 10) == pytest.approx(-1.0)
    assert est.correlation("B", "A", 30, 10) == est.correlation("A", "B", 30, 10)
    assert est.correlation("A", "A", 30, 10) == 1.0


@pytest.mark.parametrize("minutes, known", [(31, False), (32, True)])
def test_too_little_history_is_unknown(minutes, known):
    """min_returns 30 needs 30 returns of both in completed minutes: 31 closes before the
    minute in which the latest tick came."""
    est = ReturnsEstimator(80)
    _walk(est, minutes, {"A": [1, -1], "B": [1, -1]})
    assert (est.correlation("A", "B", 60, 30) is not None) is known


def test_a_symbol_that_never_moved_has_no_correlation():
    est = ReturnsEstimator(80)
    _walk(est, 40, {"A": [1, -1], "B": [0]})
    assert est.correlation("A", "B", 30, 10) is None


def test_the_window_forgets_what_came_before_it():
    est = ReturnsEstimator(80)
    _walk(est, 40, {"A": [1, -1], "B": [1, -1]})  # together for 40 minutes
    _walk(est, 40, {"A": [1, -1], "B": [-1, 1]}, start=DAY0 + 40 * 60_000)  # then apart
    assert est.correlation("A", "B", 30, 10) == pytest.approx(-1.0)
    assert -1.0 < est.correlation("A", "B", 79, 10) < 0.5


def test_the_last_price_of_a_minute_counts_and_a_quiet_minute_carries_it_forward():
    est = ReturnsEstimator(80)
    for m in range(12):
        est.observe("A", 100.0 * (1.01 if m % 2 else 1.0), DAY0 + m * 60_000)
        est.observe("A", 100.0, DAY0 + m * 60_000 + 1000)  # the minute's last price: it never moves
        if m % 3 == 0:  # B ticks only every third minute, up each time
            est.observe("B", 100.0 * 1.01 ** m, DAY0 + m * 60_000)
    assert est.correlation("A", "B", 10, 2) is None  # A's minutes closed flat


def test_the_estimator_keeps_exactly_what_its_window_needs():
    """A window of 30 minutes is 30 returns: 31 closes before the latest minute, all kept."""
    est = ReturnsEstimator(30)
    _walk(est, 200, {"A": [1, -1, 1], "B": [1, -1, 1]})
    assert est.correlation("A", "B", 30, 30) == pytest.approx(1.0)


def test_without_a_window_asked_for_nothing_is_kept():
    est = ReturnsEstimator()
    _walk(est, 40, {"A": [1, -1], "B": [1, -1]})
    assert est.correlation("A", "B", 30, 10) is None


def test_the_book_keeps_the_longest_window_its_correlation_budgets_ask_for():
    from operators.filters import Filter
    from operators.risk_filters import correlation_minutes

    def budget(name: str, window: int) -> Filter:
        return Filter(name, correlation_budget, dict(CORR, window_minutes=window), True)

    assert correlation_minutes([budget("a", 60), budget("b", 240)]) == 240
    assert correlation_minutes([Filter("g", gross_exposure, {"max_gross": 1.0}, True)]) == 0
