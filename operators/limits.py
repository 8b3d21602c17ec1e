"""What Apex refuses to believe: the bounds on prices and clocks that stand between
one bad number and the book.

The schema bounds each field of a signal on its own (operators/signal.py); these
bounds need context (the symbol's last accepted mark, the stream's clock), so they
are set in pipeline.yaml's ``limits:`` section and checked where that context is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

PRICE_BAND = "price_band"  # the reason a price is refused, tick or reference price alike


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    clock_skew_ms: int = Field(
        5_000, ge=0, le=3_600_000,
        description="a signal stamped further ahead of the stream clock than this is invalid")
    price_band: float = Field(
        2.0, gt=1, le=1_000,
        description="a price more than this factor away from its symbol's last accepted mark is refused")
    band_confirm_ticks: int = Field(
        3, ge=0, le=1_000,
        description="this many ticks in a row agreeing on a level outside the band move the mark there; 0: never")
    min_price: float = Field(1e-8, gt=0, description="no price below this is believed, mark or not")
    max_price: float = Field(1e9, gt=0, description="no price above this is believed, mark or not")

    @model_validator(mode="after")
    def _ordered(self) -> "Limits":
        if not self.min_price < self.max_price:
            raise ValueError("min_price must be below max_price")
        return self

    def outside_range(self, price: float) -> str | None:
        """Why a price is unbelievable whatever the mark; None when it is plausible."""
        if not math.isfinite(price) or price <= 0:
            return f"{PRICE_BAND}: {price!r} is not a positive finite price"
        if price < self.min_price:
            return f"{PRICE_BAND}: {price:.6g} below limits.min_price {self.min_price:.6g}"
        if price > self.max_price:
            return f"{PRICE_BAND}: {price:.6g} above limits.max_price {self.max_price:.6g}"
        return None

    def outside_band(self, price: float, mark: float | None) -> str | None:
        """Why ``price`` cannot be believed next to the symbol's last accepted ``mark``."""
        why = self.outside_range(price)
        if why or mark is None or mark <= 0:
            return why
        if max(price / mark, mark / price) > self.price_band:
            return (f"{PRICE_BAND}: {price:.6g} is more than {self.price_band:g}x from the last mark "
                    f"{mark:.6g} (limits.price_band)")
        return None


@dataclass(slots=True)
class PriceGuard:
    """The band applied to a symbol's ticks, with a way out for a real gap: a price that
    jumps outside the band and stays there (``band_confirm_ticks`` ticks in a row within
    the band of each other) becomes the new mark. Each tick before that is refused, so a
    lone bad print never reaches the book, and a market that really moved is not frozen
    at a stale mark with its hard stops blind."""

    limits: Limits
    _outliers: dict[str, tuple[float, int]] = field(default_factory=dict)  # symbol -> (last outlier, run)

    def check(self, symbol: str, price: float, mark: float | None) -> str | None:
        """None: believe the price (mark with it). Otherwise the reason it is refused."""
        why = self.limits.outside_band(price, mark)
        if why is None:
            self._outliers.pop(symbol, None)
            return None
        if self.limits.outside_range(price) is not None:
            return why
        last = self._outliers.get(symbol)
        run = 1 if last is None or self.limits.outside_band(price, last[0]) else last[1] + 1
        confirm = self.limits.band_confirm_ticks
        if confirm and run >= confirm:
            self._outliers.pop(symbol, None)
            return None
        self._outliers[symbol] = (price, run)
        return why
