"""Price protection: the limit every order carries, and what a fill far from its reference is.

Pure. An order's reference is the price its decision sized with; its limit is that price
moved against the order by the band (``execute.max_slippage_bps``), rounded to the
instrument's tick towards the reference, so that rounding never widens the band. A venue
fills such an order only where it is marketable at its limit (an IOC: the rest is
cancelled), so nothing fills beyond the band; a fill booked beyond it anyway (a venue that
ignored the limit, a paper venue set to slip more than the band) is an alert.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from operators.audit import PRICE_PROTECTION  # the outcome of an order nothing of which was marketable at its limit

DEFAULT_MAX_SLIPPAGE_BPS = 50.0  # 0.5 %: wide enough for a liquid market's spread, far short of a bad price
PRICE_AWAY = "price_away"  # the alert: a fill booked beyond the band


def limit_price(side: str, reference: float, band_bps: float, tick: float) -> float:
    """The worst price the order may fill at: ``reference`` moved against ``side`` by
    ``band_bps``, on the tick grid and inside the band. A buy whose band ends below one tick
    gets the band's edge itself, off the grid: a venue refuses such a price rather than
    fill away from the reference. A sell whose band reaches below zero gets one tick. 0.0
    (no limit) only without a reference."""
    if reference <= 0 or band_bps < 0:
        return 0.0
    if tick <= 0:  # no grid (the paper venue): the band's edge in floats, a few ulps towards the
        # reference so the rounding of the products never widens it; the decimal path below
        # costs about as much as the rest of an order's decision
        edge = reference * (1.0 + band_bps / 10_000) if side == "buy" else reference * (1.0 - band_bps / 10_000)
        for _ in range(3):
            edge = math.nextafter(edge, reference)
        return edge if edge > 0 else 0.0
    ref, band = Decimal(repr(reference)), Decimal(repr(band_bps)) / 10_000
    step = Decimal(repr(tick))
    edge = ref * (1 + band) if side == "buy" else ref * (1 - band)
    # towards the reference: down for a buy's ceiling, up for a sell's floor
    ticks = (edge / step).to_integral_value(ROUND_FLOOR if side == "buy" else ROUND_CEILING)
    if ticks <= 0:  # the edge to 15 digits, towards the reference: a float carries it exactly
        return float(step) if side == "sell" else float(edge.quantize(Decimal(10) ** (edge.adjusted() - 14),
                                                                        ROUND_FLOOR))
    return float(ticks * step)


def beyond_band(side: str, reference: float, price: float, band_bps: float) -> bool:
    """Whether a fill at ``price`` lies beyond the band around ``reference``, on either side:
    worse than the limit allows, or so much better that the reference itself was wrong."""
    if reference <= 0 or price <= 0:
        return False
    return abs(price - reference) / reference > band_bps / 10_000 * (1 + 1e-9)


def num(x: float) -> str:
    """A price as the reasons write it: every digit a float carries, no trailing zeros."""
    return format(x, ".15g")


def protected_reason(reference: float, limit: float, venue_price: float | None) -> str:
    """The outcome's reason for an order nothing of which was marketable at its limit."""
    venue = num(venue_price) if venue_price else "unknown"
    return f"reference {num(reference)}, limit {num(limit)}, venue price {venue}"


def venue_price_in(reason: str) -> float | None:
    """The venue's price a venue's cancel reason names (``not_marketable``), if it does."""
    marker = "venue price "
    at = reason.find(marker)
    if at < 0:
        return None
    word = reason[at + len(marker):].split()[0].rstrip(",;)")
    try:
        px = float(word)
    except ValueError:
        return None
    return px if px > 0 else None


def not_marketable(limit: float, venue_price: float | None) -> str:
    """How a venue says it cancelled an IOC with nothing filled: the words every venue
    adapter uses, so the book knows the order from any other cancel."""
    venue = num(venue_price) if venue_price else "unknown"
    return f"{PRICE_PROTECTION}: not marketable at limit {num(limit)}; venue price {venue}"


def is_protection(reason: str) -> bool:
    return reason.startswith(PRICE_PROTECTION)
