"""How an order meets the simulated market: the bid and ask around the last price, the depth
levels a marketable order walks through, and whether a resting limit order is crossed.

Pure arithmetic on Decimals, with no balances and no instrument type: the spot book asks it
what an order would fill, and a swap book can ask the same. The market is drawn afresh from
the last price each time (a taker does not deplete it): the point is that a market order pays
the spread and more as it grows, and a limit order fills only where its price allows."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

BPS = Decimal("0.0001")


@dataclass(frozen=True)
class Depth:
    """The market drawn around a last price: the best bid and ask ``half_spread_bps`` away
    from it (at least one tick), then ``levels`` levels each ``step_bps`` further, each
    holding ``level_notional`` of the quote currency."""

    half_spread_bps: Decimal = Decimal(1)
    step_bps: Decimal = Decimal(1)
    levels: int = 20
    level_notional: Decimal = Decimal(50_000)

    def __post_init__(self) -> None:
        if self.half_spread_bps < 0 or self.step_bps < 0 or self.levels < 1 or self.level_notional <= 0:
            raise ValueError("half_spread_bps and step_bps 0 or more, levels 1 or more, level_notional above 0")


@dataclass(frozen=True)
class Level:
    px: Decimal
    sz: Decimal  # in the base currency


def tick_for(px: Decimal) -> Decimal:
    """A tick about a ten-thousandth of the price, a power of ten (0.01 at 100, 0.0001 at 1)."""
    exponent = max(px.adjusted() - 4, -8)
    return Decimal(1).scaleb(exponent)


def to_lots(qty: Decimal, lot: Decimal) -> Decimal:
    return (qty / lot).to_integral_value(ROUND_DOWN) * lot


def _on_tick(px: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (px / tick).to_integral_value(rounding) * tick


def book_side(last: Decimal, side: str, depth: Depth, tick: Decimal, lot: Decimal) -> list[Level]:
    """The levels an order of ``side`` takes from, best first: asks for a buy, bids for a sell."""
    out = []
    for i in range(depth.levels):
        away = (depth.half_spread_bps + depth.step_bps * i) * BPS * last
        if side == "buy":
            px = max(_on_tick(last + away, tick, ROUND_CEILING), last + tick * (i + 1))
        else:
            px = min(_on_tick(last - away, tick, ROUND_FLOOR), last - tick * (i + 1))
        if px <= 0:
            break
        out.append(Level(px, to_lots(depth.level_notional / px, lot)))
    return out


def best(last: Decimal, depth: Depth, tick: Decimal, lot: Decimal) -> tuple[Level, Level]:
    """(best bid, best ask)."""
    return book_side(last, "sell", depth, tick, lot)[0], book_side(last, "buy", depth, tick, lot)[0]


def within(side: str, px: Decimal, limit: Decimal | None) -> bool:
    """Whether a level at ``px`` is one an order of ``side`` with ``limit`` may trade at."""
    return limit is None or (px <= limit if side == "buy" else px >= limit)


def walk(levels: list[Level], side: str, *, base: Decimal | None = None, quote: Decimal | None = None,
         limit: Decimal | None = None, lot: Decimal) -> list[Level]:
    """The fills of taking up to ``base`` (or spending up to ``quote``) from ``levels``, at
    no price worse than ``limit``: one fill per level touched, best first."""
    fills = []
    for level in levels:
        if not within(side, level.px, limit):
            break
        if base is not None:
            qty = min(level.sz, base)
            base -= qty
        else:
            assert quote is not None
            qty = min(level.sz, to_lots(quote / level.px, lot))
            quote -= qty * level.px
        if qty > 0:
            fills.append(Level(level.px, qty))
        if (base is not None and base <= 0) or (quote is not None and quote < lot * level.px):
            break
    return fills


def crossed(side: str, limit: Decimal, bid: Decimal, ask: Decimal) -> bool:
    """Whether a limit order would take liquidity at this bid and ask: a buy at or above
    the ask, a sell at or below the bid."""
    return limit >= ask if side == "buy" else limit <= bid
