"""Orders as data, the client order id that makes sending one idempotent, and the rule
for what the ledger's record of an order means before it is sent."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from operators.fill import Fill


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
    price: float  # the reference: the price the decision sized with
    ts_ms: int
    # the worst price it may fill at (``operators/protection.py``), sent as an IOC limit;
    # 0.0: none (an order recorded before orders carried one)
    limit: float = 0.0
    attempt: int = 0  # a close tried again after one cut at its limit (``operators/closes.py``)


# What the ledger's record of an order means for sending it: the idempotency rule.
SEND = "send"  # no record: record the intent, then send
DONE = "done"  # filled: the ledger's fill is the answer, nothing is sent
REFUSED = "refused"  # the venue refused it before: refused again, nothing is sent
ASK_VENUE = "ask_venue"  # an intent with no outcome (the crash window): only the venue knows


def next_step(status: str | None, quantity: float | None = None) -> str:
    """``status``: the ledger's status of the order (None: no record), ``quantity`` what its
    row says filled once it is final. Never SEND for an order that may have left: an order
    without a final status (``operators/order_fsm.py``) is asked of the venue."""
    if status is None:
        return SEND
    if status == "filled":
        return DONE
    if status == "cancelled":  # what filled before the cancel is its fill; nothing, its refusal
        return DONE if quantity else REFUSED
    if status in ("rejected", "denied"):
        return REFUSED
    return ASK_VENUE


def expected_fill(order: Order, slippage_bps: float, fee_bps: float, order_id: str = "") -> Fill:
    """The fill a market order should get: its reference price moved against it by the
    slippage, less the fee. The book reserves it while the order is in flight (later
    decisions of the batch must see the exposure), and the paper venue fills exactly
    this (with its ``order_id``), so a paper run decides the same whatever its batches."""
    sign = 1 if order.side == "buy" else -1
    price = order.price * (1 + sign * slippage_bps / 10_000)
    fee = abs(order.quantity * price) * fee_bps / 10_000
    return Fill(order.signal_id, order.client_order_id, order_id, order.venue, order.symbol, order.side,
                order.quantity, price, fee, order.ts_ms)
