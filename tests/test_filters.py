"""Every built-in filter and its boundary, on PortfolioView literals."""

from __future__ import annotations

import pytest

from helpers import model
from operators.filters import (
    DEFAULT_UNIVERSE,
    Filter,
    FilterError,
    PortfolioView,
    RegimeParams,
    concentration,
    confidence,
    margin,
    regime_compatibility,
    symbol_universe,
)

EMPTY = PortfolioView(nav=1_000_000.0, position_values={}, proposed_usd=0.0)
SEED_INCOMPATIBLE = RegimeParams().incompatible


# --- confidence -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, passes", [(0.65, True), (0.6499, False), (0.651, True), (1.0, True), (0.0, False)])
def test_confidence_seed_minimum(value, passes):
    assert confidence(model(confidence=value), EMPTY, min=0.65) is passes


@pytest.mark.parametrize("value, passes", [(0.8, True), (0.7999, False), (0.9, True)])
def test_confidence_custom_minimum(value, passes):
    assert confidence(model(confidence=value), EMPTY, min=0.8) is passes


def test_confidence_minimum_zero_passes_everything():
    assert confidence(model(confidence=0.0), EMPTY, min=0.0) is True


# --- regime_compatibility ---------------------------------------------------------------------

def test_seed_incompatible_table():
    assert SEED_INCOMPATIBLE == {
        "trend_following": ["choppy"],
        "mean_reversion": ["trending_up", "trending_down"],
    }


@pytest.mark.parametrize(
    "source, regime",
    [("trend_following", "choppy"), ("mean_reversion", "trending_up"), ("mean_reversion", "trending_down")],
)
def test_each_incompatible_pair_drops(source, regime):
    s = model(source=source, regime=regime)
    assert regime_compatibility(s, EMPTY, incompatible=SEED_INCOMPATIBLE) is False


@pytest.mark.parametrize(
    "source, regime",
    [("trend_following", "trending_up"), ("trend_following", "trending_down"), ("mean_reversion", "choppy")],
)
def test_compatible_pairs_of_listed_sources_pass(source, regime):
    s = model(source=source, regime=regime)
    assert regime_compatibility(s, EMPTY, incompatible=SEED_INCOMPATIBLE) is True


@pytest.mark.parametrize("source", ["novelty_anomaly", "regime_caution", "macro", "smart_money"])
@pytest.mark.parametrize("regime", ["trending_up", "trending_down", "choppy"])
def test_unlisted_sources_are_regime_agnostic(source, regime):
    s = model(source=source, regime=regime)
    assert regime_compatibility(s, EMPTY, incompatible=SEED_INCOMPATIBLE) is True


def test_custom_incompatible_table_replaces_the_seed():
    table = {"macro": ["choppy"]}
    assert regime_compatibility(model(source="macro", regime="choppy"), EMPTY, incompatible=table) is False
    assert regime_compatibility(model(source="macro", regime="trending_up"), EMPTY, incompatible=table) is True
    # trend_following is no longer listed, so it is agnostic now
    assert regime_compatibility(model(source="trend_following", regime="choppy"), EMPTY, incompatible=table) is True


def test_regime_table_rejects_unknown_sources_and_regimes():
    with pytest.raises(ValueError, match="unknown source 'astrology'"):
        RegimeParams(incompatible={"astrology": ["choppy"]})
    with pytest.raises(ValueError, match="unknown regime 'sideways'"):
        RegimeParams(incompatible={"macro": ["sideways"]})


# --- symbol_universe --------------------------------------------------------------------------

UNIVERSE = {"okx": frozenset({"BTC-USDT", "ETH-USDT"}), "ibkr": frozenset({"AAPL"})}


@pytest.mark.parametrize(
    "venue, symbol, passes",
    [
        ("okx", "BTC-USDT", True),
        ("okx", "PEPE-USDT", False),
        ("ibkr", "AAPL", True),
        ("ibkr", "GME", False),
        ("okx", "AAPL", False),  # listed, but for the other venue
        ("ibkr", "BTC-USDT", False),
        ("okx", "btc-usdt", False),  # symbols are exact
    ],
)
def test_symbol_universe_inline(venue, symbol, passes):
    assert symbol_universe(model(venue=venue, symbol=symbol), EMPTY, universe=UNIVERSE) is passes


def test_venue_missing_from_universe_drops_all_its_signals():
    only_okx = {"okx": frozenset({"BTC-USDT"})}
    assert symbol_universe(model(venue="ibkr", symbol="AAPL"), EMPTY, universe=only_okx) is False
    assert symbol_universe(model(venue="okx", symbol="BTC-USDT"), EMPTY, universe=only_okx) is True


def test_default_universe_holds_the_seed_symbols():
    assert set(DEFAULT_UNIVERSE["okx"]) >= {
        "BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT",
        "ADA-USDT", "AVAX-USDT", "LINK-USDT", "DOT-USDT", "LTC-USDT",
    }
    assert set(DEFAULT_UNIVERSE["ibkr"]) >= {"AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "SPY", "QQQ"}


# --- concentration: |position value at mark| + proposed <= fraction x NAV ----------------------

def _view(proposed: float, positions: dict | None = None, nav: float = 1_000_000.0) -> PortfolioView:
    return PortfolioView(nav=nav, position_values=positions or {}, proposed_usd=proposed)


@pytest.mark.parametrize(
    "held, proposed, passes",
    [
        (0.0, 50_000.0, True),  # exactly 5% of NAV
        (0.0, 50_000.01, False),
        (30_000.0, 20_000.0, True),  # exactly equal with a position
        (30_000.0, 20_000.01, False),
        (-30_000.0, 20_000.0, True),  # a short counts by its absolute value
        (-30_000.0, 20_000.01, False),  # signed, -30000 + 20000.01 would pass
        (-60_000.0, 1.0, False),
    ],
)
def test_concentration_boundary(held, proposed, passes):
    view = _view(proposed, {("okx", "BTC-USDT"): held})
    assert concentration(model(venue="okx", symbol="BTC-USDT"), view, max_nav_fraction=0.05) is passes


def test_concentration_counts_only_the_signals_venue_and_symbol():
    view = _view(50_000.0, {("okx", "ETH-USDT"): 49_000.0, ("ibkr", "BTC-USDT"): 49_000.0})
    assert concentration(model(venue="okx", symbol="BTC-USDT"), view, max_nav_fraction=0.05) is True


def test_concentration_custom_fraction_scales_with_nav():
    view = _view(25_000.0, {("okx", "BTC-USDT"): 25_000.0}, nav=200_000.0)
    assert concentration(model(), view, max_nav_fraction=0.25) is True
    assert concentration(model(), view, max_nav_fraction=0.2) is False


# --- margin (ibkr only): proposed x rate <= max_util x (NAV - rate x sum|ibkr values|) ----------

BOOK = {
    ("ibkr", "AAPL"): 20_000.0,
    ("ibkr", "MSFT"): -10_000.0,  # a short holds margin by its absolute value
    ("okx", "BTC-USDT"): 50_000.0,  # okx positions hold no ibkr margin
}


def test_available_funds_uses_absolute_ibkr_values_only():
    view = _view(0.0, BOOK, nav=100_000.0)
    assert view.available_funds("ibkr", 0.5) == 85_000.0


@pytest.mark.parametrize(
    "proposed, passes",
    [
        # rate 0.5, max_util 0.5: available 85000, so proposed x 0.5 <= 42500 -> proposed <= 85000
        (85_000.0, True),
        (85_000.02, False),
        (1_000.0, True),
    ],
)
def test_margin_boundary(proposed, passes):
    view = _view(proposed, BOOK, nav=100_000.0)
    s = model(venue="ibkr", symbol="AAPL")
    assert margin(s, view, initial_margin_rate=0.5, max_utilization=0.5) is passes


def test_margin_seed_parameters_boundary():
    # rate 0.5, max_util 0.8, no positions: proposed x 0.5 <= 0.8 x 100000 -> proposed <= 160000
    s = model(venue="ibkr", symbol="AAPL")
    assert margin(s, _view(160_000.0, nav=100_000.0), initial_margin_rate=0.5, max_utilization=0.8) is True
    assert margin(s, _view(160_000.04, nav=100_000.0), initial_margin_rate=0.5, max_utilization=0.8) is False


def test_margin_short_counts_by_absolute_value():
    # signed, MSFT would free margin: available would be 95000 and 90000 would pass
    view = _view(90_000.0, BOOK, nav=100_000.0)
    assert margin(model(venue="ibkr", symbol="AAPL"), view, initial_margin_rate=0.5, max_utilization=0.5) is False


def test_margin_always_passes_okx():
    view = _view(10_000_000.0, BOOK, nav=100_000.0)
    s = model(venue="okx", symbol="BTC-USDT")
    assert margin(s, view, initial_margin_rate=1.0, max_utilization=0.01) is True


def test_margin_when_book_margin_exceeds_nav_drops_any_ibkr_order():
    view = _view(1.0, {("ibkr", "AAPL"): 300_000.0}, nav=100_000.0)
    assert margin(model(venue="ibkr"), view, initial_margin_rate=0.5, max_utilization=0.8) is False


# --- a filter that answers something other than pass or drop (issue 16, item 8) ----------------------

def _answers(value):
    def answer(signal, portfolio):
        return value

    return answer


@pytest.mark.parametrize("value", [None, "no", 0, [], 1.0])
def test_a_filter_that_does_not_return_a_bool_is_an_error_naming_it(value):
    f = Filter("mine", _answers(value), {}, True)
    with pytest.raises(TypeError) as info:
        f(model(), EMPTY)
    line = _answers.__code__.co_firstlineno + 1
    assert str(info.value) == (f"filter 'mine' returned {type(value).__name__} {value!r}, not True or False "
                               f"(in {__file__}:{line})")


def test_a_numpy_comparison_is_a_bool():
    import numpy as np

    assert Filter("mine", _answers(np.float64(2.0) > 1), {}, True)(model(), EMPTY) is True


def test_a_filter_that_raises_names_itself_and_the_line_in_its_own_file():
    def lookup(signal):
        return {}[signal.symbol]

    def mine(signal, portfolio):
        return lookup(signal) > 1

    with pytest.raises(FilterError) as info:
        Filter("mine", mine, {}, True)(model(), EMPTY)
    line = lookup.__code__.co_firstlineno + 1
    assert str(info.value) == f"filter 'mine' raised KeyError: 'BTC-USDT' in {__file__}:{line}"
