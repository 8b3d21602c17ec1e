"""The risk filters. Each returns True to pass and False to drop; the drop
reason is the filter's name, so every denial in the audit trail is named.

Every filter has the same shape as a user's own: ``f(signal, portfolio, **params)``.
``portfolio`` is a ``PortfolioView``: the book as it stands when this signal
is decided, plus the size the Kelly stage would give it, so concentration and
margin answer the same wherever sizing sits in ``pipeline.yaml``.

The risk gate's filters (position, gross, sector, daily loss, correlation) are declared in
``operators/risk_filters.py`` and registered here with these.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.correlation import ReturnsEstimator
from operators.daily_loss import DayLoss
from operators.exits import TradeTerms
from operators.risk_filters import RISK_BUILTINS
from operators.signal import REGIMES, SOURCES, VENUES, Signal


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfidenceParams(Params):
    min: float = Field(0.65, ge=0, le=1, description="drop when confidence is below; equal passes")


class RegimeParams(Params):
    incompatible: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "trend_following": ["choppy"],
            "mean_reversion": ["trending_up", "trending_down"],
        },
        description="source -> regimes it must not trade in; unlisted sources are regime-agnostic",
    )

    @field_validator("incompatible")
    @classmethod
    def _known(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for src, regimes in v.items():
            if src not in SOURCES:
                raise ValueError(f"unknown source {src!r}; known: {', '.join(SOURCES)}")
            bad = [r for r in regimes if r not in REGIMES]
            if bad:
                raise ValueError(f"unknown regime {bad[0]!r} for {src}; known: {', '.join(REGIMES)}")
        return v


DEFAULT_UNIVERSE = {
    "okx": [
        f"{c}-USDT"
        for c in ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC")
    ],
    "ibkr": ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "SPY", "QQQ"],
}


class UniverseParams(Params):
    universe: dict[str, frozenset[str]] = Field(
        default_factory=lambda: {k: frozenset(v) for k, v in DEFAULT_UNIVERSE.items()},
        description="venue -> tradeable symbols (the loader turns a file path into its lines)",
    )

    @field_validator("universe")
    @classmethod
    def _venues(cls, v: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        """A misspelt venue would silently drop every signal of the real one."""
        for venue in v:
            if venue not in VENUES:
                raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
        return v


class ConcentrationParams(Params):
    max_nav_fraction: float = Field(0.05, gt=0, le=1)


class MarginParams(Params):
    initial_margin_rate: float = Field(0.5, gt=0, le=1)
    max_utilization: float = Field(0.80, gt=0, le=1)


@dataclass(frozen=True, slots=True)
class PortfolioView:
    """What a filter may read of the book; read-only so a filter cannot trade."""

    nav: float
    # by (venue, symbol): what the book holds, with orders still at a remote venue counted
    # only where they add to it (``Portfolio.exposures``)
    position_values: dict[tuple[str, str], float]
    proposed_usd: float
    # by market: the available funds its venue reports (IBKR's AvailableFunds); a market
    # left out is estimated from the book, as on the paper venue
    venue_funds: Mapping[str, float] = field(default_factory=dict)
    in_flight_usd: Mapping[str, float] = field(default_factory=dict)  # by market: orders not yet filled
    # for the risk gate (operators/risk_filters.py): the book's own, read, never copied
    open_trades: Mapping[str, TradeTerms] = field(default_factory=dict)  # by signal_id
    marks: Mapping[str, float] = field(default_factory=dict)  # symbol -> last price
    day: DayLoss | None = None
    returns: ReturnsEstimator | None = None

    def gross(self) -> float:
        """Σ |position values|: a short is as much exposure as a long."""
        return sum(abs(v) for v in self.position_values.values())

    def position_value(self, venue: str, symbol: str) -> float:
        return self.position_values.get((venue, symbol), 0.0)

    def available_funds(self, venue: str, margin_rate: float) -> float:
        """What the venue says it would lend against, if it said; else the book's estimate:
        NAV less the margin held by the venue's open positions."""
        if venue in self.venue_funds:
            return self.venue_funds[venue] - margin_rate * self.in_flight_usd.get(venue, 0.0)
        held = sum(abs(v) for (ven, _), v in self.position_values.items() if ven == venue)
        return self.nav - margin_rate * held


def confidence(signal: Signal, portfolio: PortfolioView, *, min: float) -> bool:
    return signal.confidence >= min


def regime_compatibility(
    signal: Signal, portfolio: PortfolioView, *, incompatible: dict[str, list[str]]
) -> bool:
    return signal.regime not in incompatible.get(signal.source, ())


def symbol_universe(
    signal: Signal, portfolio: PortfolioView, *, universe: dict[str, frozenset[str]]
) -> bool:
    return signal.symbol in universe.get(signal.venue, ())


def concentration(signal: Signal, portfolio: PortfolioView, *, max_nav_fraction: float) -> bool:
    held = abs(portfolio.position_value(signal.venue, signal.symbol))
    return held + portfolio.proposed_usd <= max_nav_fraction * portfolio.nav


def margin(
    signal: Signal,
    portfolio: PortfolioView,
    *,
    initial_margin_rate: float,
    max_utilization: float,
) -> bool:
    if signal.venue != "ibkr":
        return True
    available = portfolio.available_funds("ibkr", initial_margin_rate)
    return portfolio.proposed_usd * initial_margin_rate <= max_utilization * available


FilterFn = Callable[..., bool]


@dataclass(frozen=True)
class Builtin:
    fn: FilterFn
    params: type[Params]
    needs_portfolio: bool


BUILTINS: dict[str, Builtin] = {
    "confidence": Builtin(confidence, ConfidenceParams, False),
    "regime_compatibility": Builtin(regime_compatibility, RegimeParams, False),
    "symbol_universe": Builtin(symbol_universe, UniverseParams, False),
    "concentration": Builtin(concentration, ConcentrationParams, True),
    "margin": Builtin(margin, MarginParams, True),
    **{name: Builtin(*spec) for name, spec in RISK_BUILTINS.items()},
}


@dataclass(frozen=True)
class Filter:
    """One configured filter: its reason name, function and bound parameters."""

    name: str
    fn: FilterFn
    params: dict[str, Any]
    needs_portfolio: bool

    def __call__(self, signal: Signal, portfolio: PortfolioView) -> bool:
        try:
            ok = self.fn(signal, portfolio, **self.params)
        except Exception as err:
            raise FilterError(f"filter {self.name!r} raised {type(err).__name__}: {err} "
                              f"in {_raised_at(err, self.fn)}") from err
        if ok is True or ok is False:
            return ok
        if type(ok).__module__ == "numpy" and type(ok).__name__ in ("bool", "bool_"):
            return bool(ok)  # a comparison of numpy numbers
        # a silent drop (None, a missing return) or pass (a non-empty string) would hide the bug
        raise TypeError(f"filter {self.name!r} returned {type(ok).__name__} {_brief(ok)}, not True or False "
                        f"(in {_defined_at(self.fn)})")


class FilterError(Exception):
    """A filter (a user's, as a rule) raised: a bug in its code, not in the signal, so the
    entry is left undecided and pending, to be decided once the filter is fixed."""


def _code_file(fn: Any) -> str | None:
    code = getattr(fn, "__code__", None)
    return code.co_filename if code is not None else None


def _raised_at(err: BaseException, fn: Any) -> str:
    """file:line of the innermost frame in the filter's own file (else the innermost at all)."""
    own = _code_file(fn)
    sites = [(frame.f_code.co_filename, line) for frame, line in traceback.walk_tb(err.__traceback__)
             if frame.f_code.co_filename != __file__]
    mine = [s for s in sites if s[0] == own]
    file, line = (mine or sites or [("unknown", 0)])[-1]
    return f"{file}:{line}"


def _defined_at(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else repr(fn)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
