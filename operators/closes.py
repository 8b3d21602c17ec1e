"""A trade's close: its protection limit, its attempts, and what one cut at its limit leaves.

Pure. A close is an IOC limit around the price that triggered it (the tick's for a hard
stop, the book's mark for the others), the band of ``operators/protection.py`` away; a kill
switch's close has none, since a kill must flatten. A close the venue cut at its limit
(nothing filled, or only part) leaves the trade open with the rest, and the close is tried
again under a new client order id at the next price the market gives its symbol (or, when
the book has had no price for it for a while, at the venue's own, ``retry_reference``): attempt
0 keeps the id a close has always had, so ledgers written before keep their meaning, and
no id is ever sent twice (OKX refuses a clOrdId only while its order is open).
"""

from __future__ import annotations

from dataclasses import replace

from operators.exits import TradeTerms
from operators.orders import Order, client_order_id
from operators.protection import is_protection, limit_price
from operators.trading_state import KILL


def close_id(signal_id: str, attempt: int = 0) -> str:
    return client_order_id(signal_id, "close" if attempt == 0 else f"close:{attempt}")


def close_order(terms: TradeTerms, attempt: int, reason: str, reference: float, clock_ms: int,
                band_bps: float, tick: float) -> Order:
    """The close of ``terms`` at ``reference``: protected, unless it is a kill's."""
    limit = 0.0 if reason == KILL else limit_price(terms.exit_side, reference, band_bps, tick)
    return Order(close_id(terms.signal_id, attempt), terms.signal_id, "close", terms.venue, terms.symbol,
                 terms.exit_side, terms.quantity, reference, clock_ms, limit, attempt)


def cut(status: str, venue_said: str) -> bool:
    """Whether a close ended cut at its limit: cancelled by the venue (an IOC's rest), or
    refused by a venue that judged its own fill beyond the band (the paper venue)."""
    return status == "cancelled" or (status == "rejected" and is_protection(venue_said))


def next_attempt(attempt: int, status: str, venue_said: str) -> int:
    """The attempt a trade's close goes under, given how its last one (``attempt``) stands:
    the next after one that ended with the trade still open (cut at its limit, or filled in
    part); the same while it is on its way, or when it was refused (never sent again)."""
    return attempt + 1 if status == "filled" or cut(status, venue_said) else attempt


def rest_of(terms: TradeTerms, filled: float) -> TradeTerms:
    """The trade a close that filled ``filled`` of it leaves open: the rest, with its share
    of the entry fee (what filled took the rest of it into the book's cash)."""
    share = (terms.quantity - filled) / terms.quantity if terms.quantity else 0.0
    return replace(terms, quantity=terms.quantity - filled, entry_fee_usd=terms.entry_fee_usd * share)


# how long (on the stream clock) a symbol's last tick stays the market's word on it: past
# this the book's mark is stale, and a cut close may take the venue's price instead
STALE_MS = 60_000


def retry_reference(last_tick: tuple[int, float] | None, clock_ms: int, venue_price: float | None,
                    tried: float, believed: bool) -> float | None:
    """The reference to try a cut close again at, at once (None: wait for the next tick).

    ``last_tick``: (clock, price) of the symbol's newest tick the book took, if any this run;
    ``venue_price``: the venue's price its cut answer named; ``tried``: the reference it was
    cut at; ``believed``: whether the book takes the venue's price as a reference (the same
    rule as a signal's reference price: ``limits.price_band`` around the mark). A tick newer
    than the close's decision is the market's word; without a recent one the venue's price
    is the only fresh price there is. Never the same reference again: that would only be
    cut again."""
    if last_tick is not None and clock_ms - last_tick[0] <= STALE_MS:
        return None  # the book's price is fresh: the next tick brings the next reference
    if venue_price is None or venue_price <= 0 or venue_price == tried or not believed:
        return None
    return venue_price
