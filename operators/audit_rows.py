"""The audit rows of an order and a trade, built here rather than by the engine.

Pure: each function appends one stage's event to a chain (``operators/audit.py``) or
returns one row for the audit store, from the order, fill or trade it describes. The
engine decides when; this module alone says what the row holds.
"""

from __future__ import annotations

from typing import Any

from operators import audit as A
from operators.audit import Chain
from operators.exits import ClosedTrade, TradeTerms
from operators.fill import Fill
from operators.orders import Order


def refused(chain: Chain, outcome: str, reason: str, **details: Any) -> None:
    """SIGNAL_RECEIVED for an entry refused at receipt: an invalid signal, or a market entry
    the book must not believe (``invalid_tick``, with what it said)."""
    chain.add(A.SIGNAL_RECEIVED, outcome, reason, **details)


def attempt(chain: Chain, order: Order, venue: str, reason: str = "", size_usd: float | None = None) -> None:
    """EXECUTION_ATTEMPT: the order about to leave, and the venue it leaves for."""
    more = {"attempt": order.attempt} if order.attempt else {}  # a close tried again (operators/closes.py)
    chain.add(A.EXECUTION_ATTEMPT, "sent", reason, size_usd=size_usd, client_order_id=order.client_order_id,
              venue=venue, kind=order.kind, quantity=order.quantity, price=order.price, **more)


def confirmed(chain: Chain, fill: Fill, sent: bool) -> None:
    """EXECUTION_CONFIRMED for a fill; ``sent`` False when it was found without sending."""
    chain.add(A.EXECUTION_CONFIRMED, "filled", ts_ms=fill.ts_ms, size_usd=fill.quantity * fill.price,
              order_id=fill.order_id, price=fill.price, quantity=fill.quantity,
              fee_usd=fill.fee_usd, resolved_without_send=not sent)


def accepted(chain: Chain, venue: str) -> None:
    """EXECUTION_CONFIRMED for an order the venue took and is still working: its fill comes later."""
    chain.add(A.EXECUTION_CONFIRMED, "accepted", f"working at {venue}")


def unknown(chain: Chain, reason: str) -> None:
    """EXECUTION_CONFIRMED for an order whose fate could not be learnt (no answer): asked, never sent again."""
    chain.add(A.EXECUTION_CONFIRMED, "unknown", reason)


def partial(chain: Chain, part: Fill, filled: float) -> None:
    """EXECUTION_CONFIRMED for part of an order filled: this part, and how much has filled in all."""
    chain.add(A.EXECUTION_CONFIRMED, "partially_filled", ts_ms=part.ts_ms, size_usd=part.quantity * part.price,
              order_id=part.order_id, price=part.price, quantity=part.quantity, fee_usd=part.fee_usd,
              filled=filled)


def rejected(chain: Chain, reason: str) -> None:
    """EXECUTION_CONFIRMED for an order the venue refused."""
    chain.add(A.EXECUTION_CONFIRMED, "rejected", reason)


def trade_open(chain: Chain, fill: Fill, nav_after: float, exits: str, deadline_ms: int) -> None:
    """TRADE_OPEN: the position the fill opened, the book's NAV after it, and how it will end."""
    chain.add(A.TRADE_OPEN, "opened", ts_ms=fill.ts_ms, side=fill.side, entry_price=fill.price,
              quantity=fill.quantity, nav_after=nav_after, exits=exits, deadline_ms=deadline_ms)


def trade_closed(chain: Chain, reason: str, fill: Fill, closed: ClosedTrade, terms: TradeTerms,
                 tracker_multiplier: float, nav_after: float) -> None:
    """TRADE_CLOSED: the closing fill, the trade's result, and the book after it."""
    chain.add(A.TRADE_CLOSED, "closed", reason, ts_ms=fill.ts_ms, exit_price=fill.price,
              pnl_usd=closed.pnl_usd, return_pct=closed.return_pct, fees_usd=closed.fees_usd,
              held_ms=fill.ts_ms - terms.entry_ms, won=closed.won,
              tracker_multiplier=tracker_multiplier, nav_after=nav_after)


def execution_row(fill: Fill, kind: str) -> dict[str, Any]:
    """The executions table's row of a fill."""
    return {"signal_id": fill.signal_id, "client_order_id": fill.client_order_id, "kind": kind,
            "venue": fill.venue, "symbol": fill.symbol, "side": fill.side, "quantity": fill.quantity,
            "price": fill.price, "fee_usd": fill.fee_usd, "order_id": fill.order_id, "ts_ms": fill.ts_ms}
