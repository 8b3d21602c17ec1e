"""The one egress for orders: ledger first, venue second.

Every order (an open, a close, the start-up recovery of one a crash left behind, and
later the kill switch and reconciliation) goes through the ``Executor``: ``prepare``
applies the idempotency rule of ``operators/orders.py`` (looks the client order id up,
writes the intent row before anything is sent; on an intent with no fill, the crash
window between sending and recording, asks the venue what became of it and sends only
if the venue never saw it), and ``send`` is the only place an order reaches a venue,
one commit for a batch's intents before they leave. ``resolve`` answers what became of
an order without ever sending it. A trading-state gate belongs in ``send``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from connectors.ledger import Ledger
from connectors.venues import CANCELLED, FILLED, REJECTED, Rejected, Venue, VenueDown
from operators.exits import TradeTerms
from operators.orders import ASK_VENUE, DONE, REFUSED, SEND, Order, next_step
from operators.fill import Fill
from operators.signal import VENUES


log = logging.getLogger("apex.execution")
# How long a venue may work an order (a market order's remainder) before it is asked, and what
# is left cancelled: the same bound a venue's ``place_many`` keeps, held by the egress here.
WORKING_BOUND_S = 10.0


class NotCleared(Exception):
    """An order handed to ``send`` that ``prepare`` did not clear: it would bypass the rule."""


class Executor:
    def __init__(self, ledger: Ledger, venues: Venue | Mapping[str, Venue]):
        """``venues``: one venue for every market, or one by the market an order names."""
        self.ledger = ledger
        if isinstance(venues, Mapping):
            self.venues = dict(venues)
            distinct = {id(v): v for v in self.venues.values()}
            # the usual case, one connection for every market: no grouping on the way out
            whole = len(distinct) == 1 and set(VENUES) <= set(self.venues)
            self._only: Venue | None = next(iter(distinct.values())) if whole else None
        else:
            self.venues, self._only = {}, venues
        self._cleared: set[str] = set()  # client order ids ``prepare`` left to send
        self._working: dict[str, tuple[Order, float]] = {}  # accepted, fate to come: (order, when to ask)
        self._early: dict[str, Fill | Rejected] = {}  # fates learnt before ``poll`` asked

    def venue_for(self, market: str) -> Venue:
        if self._only is not None:
            return self._only
        try:
            return self.venues[market]
        except KeyError:
            raise Rejected(f"no venue for {market}") from None

    def prepare(self, order: Order, reason: str = "", trade: tuple[TradeTerms, str] | None = None) -> Fill | None:
        """The fill if this order was already resolved (by the ledger, or by asking the
        venue about an intent a crash left behind); None when it must be sent, its intent
        now recorded. Raises ``Rejected`` for an order the venue refused before."""
        row = self.ledger.execution(order)
        step = next_step(row[0] if row is not None else None)
        if step == SEND:
            self.ledger.record_intent(order, reason, trade)
        elif step == REFUSED:
            raise Rejected(row[1] or "rejected")  # type: ignore[index]
        else:
            known = self._resolved(order, step, row)
            if known is not None:
                return known
        self._cleared.add(order.client_order_id)
        return None

    def resolve(self, order: Order) -> Fill | None:
        """What became of an order, never sending it: its fill from the ledger, or for an
        intent with no outcome, from the venue (recorded); None if it has none."""
        row = self.ledger.execution(order)
        step = next_step(row[0] if row is not None else None)
        return self._resolved(order, step, row) if step in (DONE, ASK_VENUE) else None

    def _resolved(self, order: Order, step: str, row: tuple | None) -> Fill | None:
        if step == DONE:
            _, order_id, price, fee, filled_ms, quantity = row  # type: ignore[misc]
            return self._fill(order, order_id, price, fee, filled_ms, quantity)
        assert step == ASK_VENUE
        venue = self.venue_for(order.venue)
        try:
            known = venue.lookup(order)
        except Rejected as refused:  # it reached the venue, which refused or cancelled it
            self.ledger.record_rejection(order, str(refused))
            raise
        if known is not None:
            known = _ours(order, known)
            self.ledger.record_fill(known)
        return known

    def send(self, orders: list[Order], wait: bool = True) -> list[Fill | Rejected | None]:
        """The egress. Orders ``prepare`` cleared: one commit makes all their intents
        durable, then they leave together (a batch per venue). That checkpoint is the
        batch's one mid-point (``PortfolioLogic.on_batch`` owns its begin and commit): it is
        here so that no order can leave without its intent durable. Anything but a per-order
        refusal propagates, and then which of them the venue took is unknown until a
        retry asks it (through ``prepare`` again).

        A venue that answers later (``asynchronous``) is only handed the orders unless
        ``wait``: an order it accepted and is still working comes back as None, recorded as
        accepted, its fate to come from ``poll``."""
        cleared = self._cleared
        for order in orders:
            if order.client_order_id not in cleared:
                raise NotCleared(order.client_order_id)
        for order in orders:
            cleared.discard(order.client_order_id)
        self.ledger.checkpoint()
        if self._only is not None:
            results = self._place(self._only, orders, wait)
        else:
            results = self._place_by_venue(orders, wait)
        for i, (order, r) in enumerate(zip(orders, results, strict=True)):
            if r is None:
                self.ledger.record_accepted(order)
                self._working[order.client_order_id] = (order, time.monotonic() + WORKING_BOUND_S)
            elif isinstance(r, Rejected):
                self.ledger.record_rejection(order, str(r))
            else:
                results[i] = r = _ours(order, r)
                self.ledger.record_fill(r)
        return results

    def _place(self, venue: Venue, orders: list[Order], wait: bool) -> list[Fill | Rejected | None]:
        if wait or not getattr(venue, "asynchronous", False):
            return venue.place_many(orders)  # type: ignore[return-value]
        acks = venue.submit(orders)
        lost = [a for a in acks if a.unknown or not a.sent]
        if lost:
            # this egress keeps no order whose fate is unknown: as when submit raised, the batch
            # is left to the retry, which asks the venue about each order before sending any
            raise VenueDown(lost[0].reason or f"order {lost[0].client_order_id} may not have reached the venue")
        fates = self._fates(venue)
        out: list[Fill | Rejected | None] = []
        for order, ack in zip(orders, acks, strict=True):
            if not ack.accepted:
                out.append(Rejected(ack.reason or "refused"))
            else:
                out.append(fates.pop(order.client_order_id, None))
        self._early.update(fates)  # fates of earlier orders that came with these: for ``poll``
        return out

    def _place_by_venue(self, orders: list[Order], wait: bool) -> list[Fill | Rejected | None]:
        """Each venue's orders in one call, in the order decided; the answers in the order given."""
        groups: dict[int, tuple[Venue, list[int]]] = {}
        results: list[Fill | Rejected | None] = [None] * len(orders)
        for i, order in enumerate(orders):
            venue = self.venues.get(order.venue)
            if venue is None:
                results[i] = Rejected(f"no venue for {order.venue}")
                continue
            groups.setdefault(id(venue), (venue, []))[1].append(i)
        for venue, idx in groups.values():
            for i, r in zip(idx, self._place(venue, [orders[i] for i in idx], wait), strict=True):
                results[i] = r
        return results

    @staticmethod
    def _fates(venue: Venue) -> dict[str, Fill | Rejected]:
        """The final fates a venue has learnt since it was last asked, by client order id.
        A partial fill is booked when its order is done (filled, or cancelled after the
        venue's bound), with what filled."""
        out: dict[str, Fill | Rejected] = {}
        for u in venue.updates():
            if u.status == FILLED or (u.status == CANCELLED and u.fill is not None and u.fill.quantity > 0):
                out[u.client_order_id] = u.fill  # type: ignore[assignment]
            elif u.status in (REJECTED, CANCELLED):
                out[u.client_order_id] = Rejected(u.reason or u.status)
        return out

    def _finish(self, order: Order) -> Fill | Rejected | None:
        """An order worked past its bound: asked of its venue, which cancels what is left
        (``lookup``). None while the venue cannot be asked: asked again at the next poll."""
        try:
            known = self.venue_for(order.venue).lookup(order)
        except Rejected as refused:
            return refused
        except Exception as err:  # noqa: BLE001 - a venue away now: its fate is asked again later
            known, why = None, f"{type(err).__name__}: {err}"
        else:
            why = "the venue does not know it"  # it accepted it: asked again rather than given up
        if known is None:
            log.warning("order %s: no fate yet (%s); asked again later", order.client_order_id, why)
            self._working[order.client_order_id] = (order, time.monotonic() + WORKING_BOUND_S)
        return known

    def poll(self) -> list[tuple[Order, Fill | Rejected]]:
        """The fates that came for orders venues were working, each recorded in the ledger;
        never blocks on a venue (``updates`` only reads what a venue has learnt)."""
        if not self._working:
            return []
        fates = self._early
        self._early = {}
        for venue in {id(v): v for v in (*self.venues.values(), self._only) if v is not None}.values():
            if getattr(venue, "asynchronous", False):
                fates.update(self._fates(venue))
        now = time.monotonic()
        for cid, (order, ask_at) in list(self._working.items()):
            if cid not in fates and now >= ask_at:
                fate = self._finish(order)
                if fate is not None:
                    fates[cid] = fate
        done: list[tuple[Order, Fill | Rejected]] = []
        for cid, fate in fates.items():
            order = self._working.pop(cid, (None, 0.0))[0]
            if order is None:
                continue  # not ours to settle (an order ``place_many`` waited for itself)
            if isinstance(fate, Rejected):
                self.ledger.record_rejection(order, str(fate))
            else:
                fate = _ours(order, fate)
                self.ledger.record_fill(fate)
            done.append((order, fate))
        return done

    def execute(self, order: Order, reason: str = "") -> tuple[Fill, bool]:
        """One order now. Returns the fill and whether this call sent the order (False:
        resolved from the ledger or the venue without sending)."""
        known = self.prepare(order, reason)
        if known is not None:
            return known, False
        (result,) = self.send([order])
        if isinstance(result, Rejected):
            raise result
        assert result is not None  # waited for: a fate, never "working"
        return result, True

    @staticmethod
    def _fill(order: Order, order_id: str, price: float, fee: float, ts: int, quantity: float) -> Fill:
        return Fill(order.signal_id, order.client_order_id, order_id, order.venue, order.symbol,
                    order.side, quantity, price, fee, ts)


def _ours(order: Order, fill: Fill) -> Fill:
    """The venue's fill under the order's own identity: a venue knows the client order id
    but not always the signal it was for (IB keeps no such field across sessions). Its time
    is never before the order's own: a venue's clock in whole seconds (IB's) would put the
    fill before the decision in the audit trail."""
    if (fill.signal_id == order.signal_id and fill.client_order_id == order.client_order_id
            and fill.ts_ms >= order.ts_ms):
        return fill
    return replace(fill, signal_id=order.signal_id, client_order_id=order.client_order_id, venue=order.venue,
                   symbol=order.symbol, side=order.side, ts_ms=max(fill.ts_ms, order.ts_ms))
