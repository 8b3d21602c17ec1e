"""Kelly position sizing and the KellyTracker.

The signal brings its own Kelly fraction from the backtest. Apex only shrinks
it: when the book is volatile, when it is in drawdown, and when realized
results lag what the backtests promised (the KellyTracker). Every factor is
returned so the audit trail can show how a size was reached.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from operators.signal import Signal


class TrackerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: int = Field(20, ge=1, description="trailing closed trades")
    min_trades: int = Field(5, ge=1, description="below this many closes the multiplier is 1.0")
    bounds: tuple[float, float] = (0.5, 1.5)

    @model_validator(mode="after")
    def _ordered(self) -> "TrackerParams":
        lo, hi = self.bounds
        if not 0 < lo <= 1 <= hi:
            raise ValueError("bounds must satisfy 0 < low <= 1 <= high")
        return self


class KellyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vol_threshold: float = Field(0.15, ge=0, description="annualized portfolio vol above which vol_haircut applies")
    vol_haircut: float = Field(0.30, ge=0, le=1)
    drawdown_threshold: float = Field(0.10, ge=0, le=1)
    drawdown_haircut: float = Field(0.50, ge=0, le=1)
    tracker: TrackerParams = Field(default_factory=TrackerParams)


def efficiency(realized_win_rate: float, expected_win_rate: float, bounds: tuple[float, float]) -> float:
    """Realized over promised win rate, clamped: the seed's 0.64 / 0.62 gives 1.03."""
    if expected_win_rate <= 0:
        return bounds[0]
    lo, hi = bounds
    return min(hi, max(lo, realized_win_rate / expected_win_rate))


class KellyTracker:
    """Rolling efficiency over the trailing ``window`` closed trades.

    Each close contributes whether it won and the win rate its signal's
    backtest promised, so a source that overpromises is sized down until its
    live record catches up.
    """

    def __init__(self, params: TrackerParams):
        self.params = params
        self._closes: deque[tuple[bool, float]] = deque(maxlen=params.window)
        self._multiplier: float | None = None  # asked of every sized signal, changed by closes only

    def record(self, won: bool, expected_win_rate: float) -> None:
        self._closes.append((won, expected_win_rate))
        self._multiplier = None

    @property
    def count(self) -> int:
        return len(self._closes)

    def multiplier(self) -> float:
        if self._multiplier is None:
            n = len(self._closes)
            if n < self.params.min_trades:
                self._multiplier = 1.0
            else:
                realized = sum(won for won, _ in self._closes) / n
                expected = sum(exp for _, exp in self._closes) / n
                self._multiplier = efficiency(realized, expected, self.params.bounds)
        return self._multiplier


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each of its 12 fields through object.__setattr__
class Sizing:
    """One sizing decision with every factor that made it."""

    suggested_kelly: float
    vol: float
    vol_factor: float
    drawdown: float
    drawdown_factor: float
    tracker_multiplier: float
    kelly: float
    nav: float
    cap_usd: float
    size_usd: float
    price: float
    quantity: float

    def factors(self) -> dict[str, float]:
        """Everything but size_usd, which the audit event carries in its own column."""
        return {"suggested_kelly": self.suggested_kelly, "vol": self.vol, "vol_factor": self.vol_factor,
                "drawdown": self.drawdown, "drawdown_factor": self.drawdown_factor,
                "tracker_multiplier": self.tracker_multiplier, "kelly": self.kelly, "nav": self.nav,
                "cap_usd": self.cap_usd, "price": self.price, "quantity": self.quantity}


def round_quantity(lot_size: float, size_usd: float, price: float) -> float:
    """Down to a whole number of the instrument's lots (its venue lists the lot size: a
    coin's 1e-8, a share). No price, no quantity: the judge then drops the signal as
    ``no_price``; no lot (the venue does not trade the instrument), none either (the
    judge drops it as ``not_listed`` first). A fractional lot is counted in lots per unit: for a decimal lot such
    as 1e-8 that is exactly 1e8, and dividing by it is exact where multiplying by the
    inexact 1e-8 is not."""
    if price <= 0 or lot_size <= 0:
        return 0.0
    raw = size_usd / price
    if lot_size >= 1:
        return math.floor(raw / lot_size + 1e-9) * lot_size
    per_unit = 1 / lot_size
    return math.floor(raw * per_unit + 1e-6) / per_unit


def size(
    signal: Signal,
    *,
    nav: float,
    vol: float,
    drawdown: float,
    tracker_multiplier: float,
    price: float,
    params: KellyParams,
    lot_size: float,
) -> Sizing:
    vol_factor = 1 - params.vol_haircut if vol > params.vol_threshold else 1.0
    dd_factor = 1 - params.drawdown_haircut if drawdown > params.drawdown_threshold else 1.0
    k = signal.suggested_kelly * vol_factor * dd_factor * tracker_multiplier
    size_usd = max(0.0, min(nav * k, signal.max_position_usd))
    return Sizing(
        suggested_kelly=signal.suggested_kelly,
        vol=vol,
        vol_factor=vol_factor,
        drawdown=drawdown,
        drawdown_factor=dd_factor,
        tracker_multiplier=tracker_multiplier,
        kelly=k,
        nav=nav,
        cap_usd=signal.max_position_usd,
        size_usd=size_usd,
        price=price,
        quantity=round_quantity(lot_size, size_usd, price),
    )
