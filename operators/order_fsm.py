"""The order state machine: every status an order can be in, which changes are legal, and
what a venue's answer does to an order.

Pure. The statuses are NautilusTrader's names (``model/orders/base.pyx``), in the lower
case the ledger stores, plus UNKNOWN, Apex's word for an order that may or may not have
reached its venue: it is asked about, never sent again. A venue's fills are cumulative
(the quantity filled in all, its average price and the fee in all), so an answer heard
twice, or a stale one heard after a newer, moves nothing: what is booked is always the
difference from what the order has booked so far.

    INTENT ──► SUBMITTED ──► ACCEPTED ──► PARTIALLY_FILLED ──► FILLED
       │           │            │                │
       │           └──► UNKNOWN ┘                └──────────► CANCELLED
       └──► DENIED (never left)      any live status ──► REJECTED / CANCELLED / FILLED
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from operators.fill import Fill
from operators.orders import Order

INTENT = "intent"  # durable in the ledger, not yet handed to the venue
SUBMITTED = "submitted"  # handed over, no answer yet
ACCEPTED = "accepted"  # the venue took it and works it
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
CANCELLED = "cancelled"  # what filled before the cancel (maybe nothing) is its fill
REJECTED = "rejected"  # the venue refused it, or has no record of it when asked
DENIED = "denied"  # never left: its signal's TTL ran out while the venue could not take it
UNKNOWN = "unknown"  # may or may not be at the venue: asked, never sent again

STATUSES = (INTENT, SUBMITTED, ACCEPTED, PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED, DENIED, UNKNOWN)
TERMINAL = frozenset({FILLED, CANCELLED, REJECTED, DENIED})
LIVE = frozenset(STATUSES) - TERMINAL

_FATES = {PARTIALLY_FILLED, FILLED, CANCELLED, REJECTED}  # a venue's word is news from any live status
TRANSITIONS: dict[str, frozenset[str]] = {
    INTENT: frozenset({SUBMITTED, ACCEPTED, UNKNOWN, DENIED} | _FATES),
    SUBMITTED: frozenset({ACCEPTED, UNKNOWN} | _FATES),
    # asked, and never at the venue: sent after all, or DENIED if its TTL ran out meanwhile
    UNKNOWN: frozenset({ACCEPTED, DENIED} | _FATES),
    ACCEPTED: frozenset(_FATES),
    PARTIALLY_FILLED: frozenset(_FATES - {REJECTED}),  # a venue that filled part of it took it
    **{s: frozenset() for s in TERMINAL},
}


def legal(src: str, dst: str) -> bool:
    return dst in TRANSITIONS.get(src, frozenset())


@dataclass(frozen=True, slots=True)
class VenueEvent:
    """A venue's answer about one order, as the book's step receives it. ``fill``: what has
    filled in all (cumulative), None when nothing has."""

    book: str
    client_order_id: str
    status: str
    fill: Fill | None = None
    fill_id: str = ""
    reason: str = ""


@dataclass(slots=True)
class OrderState:
    """What the book knows of one order: its status and what it has booked of its fills."""

    order: Order
    status: str = INTENT
    filled: float = 0.0
    avg_price: float = 0.0
    fee_usd: float = 0.0
    order_id: str = ""
    fill_ids: set[str] = field(default_factory=set)

    @property
    def final(self) -> bool:
        return self.status in TERMINAL

    def booked(self) -> Fill | None:
        """Everything filled so far, as one fill (None before the first)."""
        if self.filled <= 0:
            return None
        o = self.order
        return Fill(o.signal_id, o.client_order_id, self.order_id, o.venue, o.symbol, o.side, self.filled,
                    self.avg_price, self.fee_usd, o.ts_ms)


@dataclass(frozen=True, slots=True)
class Change:
    """What one event did. ``fill``: the newly filled part alone (its own quantity, price and
    fee), None when the event filled nothing new. ``illegal``: refused, nothing applied."""

    src: str
    dst: str
    fill: Fill | None = None
    duplicate: bool = False
    illegal: bool = False

    @property
    def moved(self) -> bool:
        return not (self.duplicate or self.illegal)


def apply(state: OrderState, ev: VenueEvent) -> Change:
    """Apply a venue's event to an order, in place. An illegal change is refused and leaves
    the order as it was; the same news twice is a duplicate, and changes nothing."""
    src, dst = state.status, ev.status
    news = _new_fill(state, ev)
    if dst == src or (dst == PARTIALLY_FILLED and src == PARTIALLY_FILLED):
        if news is None:
            return Change(src, dst, duplicate=True)
    elif news is None and _older(src, dst):
        return Change(src, dst, duplicate=True)  # an older word arriving after a newer one
    elif not legal(src, dst):
        return Change(src, dst, illegal=True)
    part = None
    if news is not None:
        part = _part(state, news)
        state.filled, state.avg_price, state.fee_usd = news.quantity, news.price, news.fee_usd
        state.order_id = news.order_id or state.order_id
    if ev.fill_id:
        state.fill_ids.add(ev.fill_id)
    state.status = dst
    return Change(src, dst, part)


_AGE = {INTENT: 0, SUBMITTED: 1, UNKNOWN: 1, ACCEPTED: 2, PARTIALLY_FILLED: 3}


def _older(src: str, dst: str) -> bool:
    """Whether ``dst`` is news the order is already past: an acceptance after a fill, a
    partial fill after the last, the venue repeating a final word."""
    if src in (REJECTED, DENIED):  # a venue that took an order it refused: a misreading, never news to drop
        return dst == src
    if src in TERMINAL:
        return dst in _AGE or dst == src
    return dst in _AGE and _AGE[dst] < _AGE[src]


def _new_fill(state: OrderState, ev: VenueEvent) -> Fill | None:
    """The event's cumulative fill if it says more than the order has booked, else None."""
    f = ev.fill
    if f is None or f.quantity <= state.filled + 1e-12:
        return None
    if ev.fill_id and ev.fill_id in state.fill_ids:
        return None
    return f


def _part(state: OrderState, total: Fill) -> Fill:
    """The newly filled part of a cumulative fill: its quantity, the price that makes the
    average come out right, and the fee it added."""
    qty = total.quantity - state.filled
    cost = total.quantity * total.price - state.filled * state.avg_price
    return replace(total, quantity=qty, price=cost / qty, fee_usd=total.fee_usd - state.fee_usd)
