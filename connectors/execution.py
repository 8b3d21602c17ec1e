"""The idempotent execution path: ledger first, venue second.

Looks the client order id up before anything is sent; writes the intent rows
and commits them before the orders leave (one commit for a batch's orders); on finding an intent with no fill (the crash window
between sending and recording) asks the venue what became of it, and sends
only if the venue never saw it.
"""

from __future__ import annotations

from typing import Protocol

from connectors.ledger import Ledger
from connectors.venues import Rejected
from operators.exits import TradeTerms
from operators.orders import ASK_VENUE, DONE, REFUSED, SEND, Order, next_step
from operators.fill import Fill


class Venue(Protocol):
    name: str

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]: ...
    def lookup(self, client_order_id: str) -> Fill | None: ...


class Executor:
    def __init__(self, ledger: Ledger, venue: Venue):
        self.ledger = ledger
        self.venue = venue

    def prepare(self, order: Order, reason: str = "", trade: tuple[TradeTerms, str] | None = None) -> Fill | None:
        """The fill if this order was already resolved (by the ledger, or by asking the
        venue about an intent a crash left behind); None when it must be sent, its intent
        now recorded. Raises ``Rejected`` for an order the venue refused before."""
        row = self.ledger.execution(order)
        step = next_step(row[0] if row is not None else None)
        if step == SEND:
            self.ledger.record_intent(order, reason, trade)
            return None
        _, order_id, price, fee, filled_ms = row  # type: ignore[misc]
        if step == DONE:
            return self._fill(order, order_id, price, fee, filled_ms)
        if step == REFUSED:
            raise Rejected(order_id or "rejected")
        assert step == ASK_VENUE
        known = self.venue.lookup(order.client_order_id)
        if known is not None:
            self.ledger.record_fill(known)
        return known

    def send(self, orders: list[Order]) -> list[Fill | Rejected]:
        """Orders ``prepare`` left to send: one commit makes all their intents durable,
        then they leave together. Anything but a per-order refusal propagates, and then
        which of them the venue took is unknown until a retry asks it."""
        self.ledger.checkpoint()
        results = self.venue.place_many(orders)
        for order, r in zip(orders, results, strict=True):
            if isinstance(r, Rejected):
                self.ledger.record_rejection(order, str(r))
            else:
                self.ledger.record_fill(r)
        return results

    def execute(self, order: Order, reason: str = "") -> tuple[Fill, bool]:
        """One order now. Returns the fill and whether this call sent the order (False:
        resolved from the ledger or the venue without sending)."""
        known = self.prepare(order, reason)
        if known is not None:
            return known, False
        (result,) = self.send([order])
        if isinstance(result, Rejected):
            raise result
        return result, True

    @staticmethod
    def _fill(order: Order, order_id: str, price: float, fee: float, ts: int) -> Fill:
        return Fill(order.signal_id, order.client_order_id, order_id, order.venue, order.symbol,
                    order.side, order.quantity, price, fee, ts)
