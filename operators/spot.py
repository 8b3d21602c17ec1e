"""Spot: an account holds coins and sells only what it holds.

A sell signal opens a short trade, with its own stop and holding limit. On a spot market
nothing can be held short, and the coins a book holds are its own long trades', each
with exits of its own: a sell that only reduced them at the venue would leave the book
with a short trade the account never held, and the longs' exits selling coins already
gone. So on spot a sell signal never opens a trade: it is dropped as
``spot_cannot_short``, and what it does to the book's longs in the coin is the user's
choice (``venues.okx.sell_on_long``): ``keep`` leaves them to their own exits, ``close``
closes them as exits of their own (``sell_signal``).

Each book decides from its own trades, never from what the account holds: the coins at
the venue are the sum of every book's, and another book's are not this book's to sell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from operators.exits import TradeTerms

if TYPE_CHECKING:
    from operators.portfolio import Portfolio
    from operators.signal import Signal

SPOT_CANNOT_SHORT = "spot_cannot_short"  # the drop: a sell signal on a spot market
SELL_SIGNAL = "sell_signal"  # the exit: a long closed by a sell signal (sell_on_long: close)
# the exit of a trade holding less than the venue's minimum order (a partial fill's few coins):
# no order could sell it, so its record is closed at the mark and the coins stay held as dust
DUST_EXIT = "dust"
KEEP, CLOSE = "keep", "close"
# OKX keeps a spot buy's fee in the coin bought (0.1 % at its highest regular taker rate):
# the account holds the fill less it, and that is what the trade's exit will sell. Twice
# the rate, so that a tier's rounding never leaves an exit below the minimum.
FEE_IN_COIN_BOUND = 0.002


def longs_met(signal: Signal, book: Portfolio) -> list[TradeTerms]:
    """The book's open long trades in the signal's instrument, oldest first (reserved ones
    too: an exit waits for its trade's opening order)."""
    trades = (book.open_trades[sid] for sid in book.trades_in(signal.symbol))
    longs = [t for t in trades if t.venue == signal.venue and t.long]
    return sorted(longs, key=lambda t: (t.entry_ms, t.signal_id))


def sell_on_spot(signal: Signal, book: Portfolio, on_long: str) -> dict:
    """The drop's details: what the book holds of the coin, the longs the sell met, which
    of them it closes (``on_long`` close) and why nothing is opened."""
    longs = longs_met(signal, book)
    # what the account surely holds for the book: a buy still working may be cut
    held = book.surely_held((signal.venue, signal.symbol), "sell")
    closes = [t.signal_id for t in longs] if on_long == CLOSE else []
    if not longs:
        why = f"a spot market holds no short: nothing of {signal.symbol} is this book's to sell"
    elif closes:
        why = f"a spot market holds no short: the sell closes this book's {len(closes)} long(s) instead"
    else:
        why = (f"a spot market holds no short, and the coins held are this book's {len(longs)} long(s)', "
               "left to their own exits (sell_on_long: keep)")
    return {"why": why, "held": held, "longs": [t.signal_id for t in longs], "closes": closes}


def exit_below_min(quantity: float, min_size: float) -> bool:
    """Whether a buy of ``quantity`` would leave the account holding, once the fee is kept
    in the coin, less than the venue's minimum order (``min_size``): its exit would be
    refused for ever (OKX 51020), the coins stranded."""
    return quantity * (1 - FEE_IN_COIN_BOUND) < min_size


def stranded(quantity: float, min_size: float) -> bool:
    """Whether a trade holding ``quantity`` is below the venue's minimum order: its exit
    would be refused (OKX 51020), and sent again at every entry."""
    return 0 < quantity < min_size
