"""A venue's confirmation of one order, on its own so that the book, the exit
rules, the orders and the connectors can all name it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fill:
    """A venue's confirmation of one order: what the book must now reflect."""

    signal_id: str
    client_order_id: str
    order_id: str
    venue: str
    symbol: str
    side: str
    quantity: float
    price: float
    fee_usd: float
    ts_ms: int

    @property
    def signed_qty(self) -> float:
        return self.quantity if self.side == "buy" else -self.quantity
