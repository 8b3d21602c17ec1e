"""Orders as data, and the client order id that makes sending one idempotent."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def client_order_id(signal_id: str, kind: str = "open") -> str:
    """Deterministic per (signal, open/close): a replayed signal asks the venue
    for the same id, and venues refuse a second order under one id. 32
    alphanumerics, the longest OKX's clOrdId allows and well within IBKR's."""
    return "ax" + hashlib.sha256(f"{kind}:{signal_id}".encode()).hexdigest()[:30]


@dataclass(frozen=True, slots=True)
class Order:
    client_order_id: str
    signal_id: str
    kind: str  # open | close
    venue: str
    symbol: str
    side: str
    quantity: float
    price: float  # reference for the paper venue and for market-order checks
    ts_ms: int
