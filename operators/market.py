"""Market data entries: a price tick ``{symbol, price, ts}`` and a regime update
``{regime}`` (optionally for one ``symbol``), as they arrive in stream fields
(Redis field values are strings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from operators.signal import REGIMES, Invalid


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str | None
    price: float | None
    regime: str | None


def parse_tick(fields: dict[str, str]) -> Tick:
    symbol = fields.get("symbol") or None
    regime = fields.get("regime") or None
    price = None
    if "price" in fields:
        try:
            price = float(fields["price"])
        except (TypeError, ValueError):
            raise Invalid(f"price: not a number: {fields['price']!r}") from None
        if not math.isfinite(price) or price <= 0:
            raise Invalid(f"price: must be a positive number, got {fields['price']!r}")
        if symbol is None:
            raise Invalid("symbol: a price needs a symbol")
    if regime is not None and regime not in REGIMES:
        raise Invalid(f"regime: unknown {regime!r}; known: {', '.join(REGIMES)}")
    if price is None and regime is None:
        raise Invalid("market entry carries neither price nor regime")
    return Tick(symbol, price, regime)
