"""The risk gate's filters: what the book would risk, hold and lose if the signal's order filled.

Each is declared as the other built-ins are (``operators/filters.py``): a function
``f(signal, portfolio, **params)`` returning True to pass and False to drop, with the
filter's name as the drop reason, and a pydantic model of its parameters. Each reads the
order it judges as ``portfolio.proposed_usd``: the size the Kelly stage gives the signal,
computed before the first portfolio filter whatever its place in ``pipeline.yaml``
(``operators/decide.judge``), so the gate is one pass over the list and sizes once.

Every limit is inclusive: a value exactly at it passes, anything beyond it drops.

A trade's risk is what it loses if its price goes to its hard stop: for a long of
quantity q entered at e with stop s, marked at m, ``q × (m − e(1 − s))`` (a short:
``q × (e(1 + s) − m)``), never below 0; for the order being judged, ``proposed_usd × s``.
A signal or trade without a hard stop is taken to risk ``assumed_stop_pct`` of its value
(1.0 by default: all of it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from operators.correlation import MAX_WINDOW_MINUTES, combined_risk
from operators.daily_loss import Breach, DayLoss, OnBreach, breach

if TYPE_CHECKING:
    from operators.exits import TradeTerms
    from operators.filters import Filter, PortfolioView
    from operators.signal import Signal


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _assumed_stop() -> Any:
    return Field(1.0, gt=0, le=1, description="the stop taken for a signal or trade without a hard stop "
                                              "(a share of its value; 1.0: all of it is at risk)")


class PositionRiskParams(_Params):
    max_risk: float = Field(0.01, gt=0, le=1, description="the most the position may lose to its hard stop, "
                                                          "as a share of NAV")
    assumed_stop_pct: float = _assumed_stop()


class GrossExposureParams(_Params):
    max_gross: float = Field(1.0, gt=0, le=100, description="Σ |positions| + the order, as a multiple of NAV "
                                                            "(above 1: leverage)")


class SectorExposureParams(_Params):
    sectors: dict[str, str] = Field(description="symbol -> sector (the loader reads a YAML or CSV file into it)")
    max_net: float = Field(0.25, gt=0, le=100, description="|net exposure| of any sector, as a share of NAV")
    limits: dict[str, Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=dict, description="sector -> its own max_net")
    unknown_symbol: Literal["drop", "pass"] = Field(
        "drop", description="a symbol the file does not name: drop its signals, or let them pass unchecked")

    @field_validator("limits")
    @classmethod
    def _known_sectors(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        """A misspelt sector in ``limits`` would silently never apply."""
        known = set((info.data.get("sectors") or {}).values())
        unknown = sorted(s for s in v if s not in known)
        if known and unknown:  # no sectors: the loader has already said why (no file, or an empty one)
            raise ValueError(f"sector {unknown[0]!r} is not in the sector file; known: {', '.join(sorted(known))}")
        return v


class DailyLossParams(_Params):
    max_loss: float = Field(0.03, gt=0, lt=1, description="the day's loss, as a share of its opening NAV, "
                                                          "past which the book stops opening trades")
    on_breach: OnBreach = Field("halt", description="halt (HALTED) or reduce (REDUCING)")


class CorrelationBudgetParams(_Params):
    max_combined: float = Field(0.06, gt=0, le=1, description="sqrt(wᵀ C w) of the open trades and the order, "
                                                              "as a share of NAV")
    window_minutes: int = Field(60, ge=2, le=MAX_WINDOW_MINUTES,
                                description="the trailing minutes whose one-minute returns give the correlations")
    min_returns: int = Field(30, ge=2, description="below this many returns of both symbols in the window, "
                                                   "a pair is taken as perfectly correlated")
    assumed_stop_pct: float = _assumed_stop()

    @field_validator("min_returns")
    @classmethod
    def _fits(cls, v: int, info: ValidationInfo) -> int:
        window = info.data.get("window_minutes")
        if window is not None and v > window:
            raise ValueError(f"{v} is more than window_minutes ({window}) holds: every pair would be taken "
                             "as perfectly correlated")
        return v


def _stop(pct: float | None, assumed: float) -> float:
    return pct if pct else assumed


def trade_risk(t: TradeTerms, mark: float | None, assumed_stop_pct: float) -> float:
    """What the trade loses if its price goes from ``mark`` to its hard stop (signed: a
    short's is negative); its entry price when it has no mark."""
    s = _stop(t.hard_stop_pct, assumed_stop_pct)
    m = t.entry_price if mark is None else mark
    if t.long:
        return t.quantity * max(0.0, m - t.entry_price * (1 - s))
    return -t.quantity * max(0.0, t.entry_price * (1 + s) - m)


def order_risk(signal: Signal, portfolio: PortfolioView, assumed_stop_pct: float) -> float:
    """What the order being judged would lose to its hard stop (signed like ``trade_risk``)."""
    risk = portfolio.proposed_usd * _stop(signal.exit_rules.hard_stop_pct, assumed_stop_pct)
    return risk if signal.side == "buy" else -risk


def position_risk(signal: Signal, portfolio: PortfolioView, *, max_risk: float, assumed_stop_pct: float) -> bool:
    """The position the order leaves in its instrument (the trades open in it and the order)
    loses at most ``max_risk`` of NAV to their hard stops."""
    held = sum(abs(trade_risk(t, portfolio.marks.get(t.symbol), assumed_stop_pct))
               for t in portfolio.open_trades.values() if t.symbol == signal.symbol and t.venue == signal.venue)
    return held + abs(order_risk(signal, portfolio, assumed_stop_pct)) <= max_risk * portfolio.nav


def gross_exposure(signal: Signal, portfolio: PortfolioView, *, max_gross: float) -> bool:
    """Σ |position values| + the order ≤ ``max_gross`` × NAV: a short counts as a long does."""
    return portfolio.gross() + portfolio.proposed_usd <= max_gross * portfolio.nav


def sector_exposure(signal: Signal, portfolio: PortfolioView, *, sectors: dict[str, str], max_net: float,
                    limits: dict[str, float], unknown_symbol: str) -> bool:
    """The signal's sector's net exposure (Σ signed position values of its symbols, the order
    added: a buy adds, a sell takes off) stays within its limit × NAV. An order that brings
    the sector nearer flat passes even over the limit: refusing it would keep the book
    further from its limit."""
    sector = sectors.get(signal.symbol)
    if sector is None:
        return unknown_symbol == "pass"
    before = sum(v for (_, symbol), v in portfolio.position_values.items() if sectors.get(symbol) == sector)
    after = before + (portfolio.proposed_usd if signal.side == "buy" else -portfolio.proposed_usd)
    return abs(after) <= limits.get(sector, max_net) * portfolio.nav or abs(after) < abs(before)


def daily_loss(signal: Signal, portfolio: PortfolioView, *, max_loss: float, on_breach: str) -> bool:
    """No new trade once the day's loss has passed ``max_loss`` of the day's opening NAV
    (``operators/daily_loss``): until the next UTC day, or ``apex resume``."""
    day = portfolio.day
    return day is None or not day.breached(max_loss)


def correlation_budget(signal: Signal, portfolio: PortfolioView, *, max_combined: float, window_minutes: int,
                       min_returns: int, assumed_stop_pct: float) -> bool:
    """The combined risk of the open trades and the order ≤ ``max_combined`` × NAV, where

        combined risk = sqrt(wᵀ C w) = sqrt(Σ_i Σ_j w_i w_j ρ_ij)

    ``w_i`` is symbol i's signed risk to its stops (``trade_risk`` of its open trades, plus
    ``order_risk`` for the signal's symbol) and ``ρ_ij`` the correlation of the two symbols'
    one-minute returns over the trailing ``window_minutes`` (``operators/correlation``). A
    pair with fewer than ``min_returns`` returns of both is taken as perfectly correlated,
    in the direction that adds their risks: too little history never counts as a hedge."""
    risks: dict[str, float] = {}
    for t in portfolio.open_trades.values():
        risks[t.symbol] = risks.get(t.symbol, 0.0) + trade_risk(t, portfolio.marks.get(t.symbol), assumed_stop_pct)
    risks[signal.symbol] = risks.get(signal.symbol, 0.0) + order_risk(signal, portfolio, assumed_stop_pct)
    returns = portfolio.returns

    def rho(a: str, b: str) -> float | None:
        return returns.correlation(a, b, window_minutes, min_returns) if returns is not None else None

    return combined_risk(risks, rho) <= max_combined * portfolio.nav


# name -> (function, parameters, whether it reads the book); registered in operators/filters.BUILTINS
RISK_BUILTINS = {
    "position_risk": (position_risk, PositionRiskParams, True),
    "gross_exposure": (gross_exposure, GrossExposureParams, True),
    "sector_exposure": (sector_exposure, SectorExposureParams, True),
    "daily_loss": (daily_loss, DailyLossParams, True),
    "correlation_budget": (correlation_budget, CorrelationBudgetParams, True),
}


def daily_loss_breach(day: DayLoss, filters: Iterable[Filter]) -> Breach | None:
    """Whether a book whose day is ``day`` has breached the ``daily_loss`` filter its
    ``filters`` configure (None: it has not, or none is configured), with the trading
    state its ``on_breach`` asks for: what sets the book's state reads it after every
    entry, so a breach halts the book when prices fall, not at the next signal."""
    for f in filters:
        if f.fn is daily_loss:
            return breach(day, f.params["max_loss"], f.params["on_breach"])
    return None


def correlation_minutes(filters: Iterable[Filter]) -> int:
    """How many minutes of prices the book must keep for its ``correlation_budget`` filters
    (0: it has none, and keeps none)."""
    return max((f.params["window_minutes"] for f in filters if f.fn is correlation_budget), default=0)
