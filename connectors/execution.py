"""The idempotent execution path: ledger first, venue second.

Looks the client order id up before anything is sent; writes the intent row
before the order leaves; on finding an intent with no fill (the crash window
between sending and recording) asks the venue what became of it, and sends
only if the venue never saw it.
"""

from __future__ import annotations

from typing import Protocol

from connectors.ledger import Ledger
from connectors.venues import Rejected
from operators.orders import Order
from operators.portfolio import Fill


class Venue(Protocol):
    name: str

    def place(self, order: Order) -> Fill: ...
    def lookup(self, client_order_id: str) -> Fill | None: ...


class Executor:
    def __init__(self, ledger: Ledger, venue: Venue):
        self.ledger = ledger
        self.venue = venue

    def execute(self, order: Order, reason: str = "") -> tuple[Fill, bool]:
        """Returns the fill and whether this call sent the order (False: resolved
        from the ledger or the venue without sending)."""
        row = self.ledger.execution(order.client_order_id)
        if row is not None:
            status, order_id, price, fee, filled_ms = row
            if status == "filled":
                return self._fill(order, order_id, price, fee, filled_ms), False
            if status == "rejected":
                raise Rejected(order_id or "rejected")
            known = self.venue.lookup(order.client_order_id)
            if known is not None:
                self.ledger.record_fill(known)
                return known, False
        else:
            self.ledger.record_intent(order, reason)
        self.ledger.checkpoint()  # the intent is durable before the order can leave
        try:
            fill = self.venue.place(order)
        except Rejected as err:
            self.ledger.record_rejection(order.client_order_id, str(err))
            raise
        self.ledger.record_fill(fill)
        return fill, True

    @staticmethod
    def _fill(order: Order, order_id: str, price: float, fee: float, ts: int) -> Fill:
        return Fill(order.signal_id, order.client_order_id, order_id, order.venue, order.symbol,
                    order.side, order.quantity, price, fee, ts)
