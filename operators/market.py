"""Market data entries: a price tick ``{symbol, price, ts}`` (optionally with the ``volume``
traded since the symbol's previous tick, which slicing reads: ``operators/slicing.py``) and a regime update
``{regime}`` (optionally for one ``symbol``), as they arrive in stream fields
(Redis field values are strings)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from operators.limits import Limits
from operators.signal import MAX_SYMBOL_LENGTH, PRINTABLE, REGIMES, Invalid

_PRINTABLE = re.compile(PRINTABLE)


@dataclass(frozen=True, slots=True)
class Tick:
    symbol: str | None
    price: float | None
    regime: str | None
    volume: float | None = None  # traded since the symbol's previous tick, in the order's units


def parse_tick(fields: dict[str, str], limits: Limits) -> Tick:
    """A market entry, or ``Invalid``. A price must be believable on its own here
    (``limits.outside_range``); whether it is believable next to the symbol's mark is
    for the book to say."""
    symbol = fields.get("symbol") or None
    if symbol is not None and (not isinstance(symbol, str) or len(symbol) > MAX_SYMBOL_LENGTH
                               or not _PRINTABLE.match(symbol)):
        raise Invalid(f"symbol: must be 1-{MAX_SYMBOL_LENGTH} printable characters, got {symbol!r}")
    regime = fields.get("regime") or None
    price = None
    if "price" in fields:
        try:
            price = float(fields["price"])
        except (TypeError, ValueError):
            raise Invalid(f"price: not a number: {fields['price']!r}") from None
        why = limits.outside_range(price)
        if why:
            raise Invalid(why)
        if symbol is None:
            raise Invalid("symbol: a price needs a symbol")
    volume = None
    if fields.get("volume") not in (None, ""):
        if price is None:
            raise Invalid("volume: a volume travels with a price")
        try:
            volume = float(fields["volume"])
        except (TypeError, ValueError):
            raise Invalid(f"volume: not a number: {fields['volume']!r}") from None
        if not 0 <= volume < float("inf"):
            raise Invalid(f"volume: must be a finite number ≥ 0, got {fields['volume']!r}")
    if regime is not None and regime not in REGIMES:
        raise Invalid(f"regime: unknown {regime!r}; known: {', '.join(REGIMES)}")
    if price is None and regime is None:
        raise Invalid("market entry carries neither price nor regime")
    return Tick(symbol, price, regime, volume)
