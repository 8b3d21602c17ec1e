"""What price protection does to an order's outcome in the book's step: an order nothing of
which was marketable at its limit ends ``price_protection`` (with its reference and the
venue's price), and a fill booked beyond the band raises an alert (a log line, an audit
event, a row ``apex status`` shows). The rules are ``operators/protection.py``'s."""

from __future__ import annotations

import logging

from connectors import price_alerts
from dataflows.desk import Desk
from operators.audit import EXECUTION_CONFIRMED, Chain, Outcome
from operators.fill import Fill
from operators.orders import Order
from operators.protection import PRICE_AWAY, PRICE_PROTECTION, beyond_band, num, protected_reason, venue_price_in

log = logging.getLogger("apex.orders")


def protected(desk: Desk, out: Outcome, chain: Chain, order: Order, venue_reason: str) -> Outcome:
    """The order's outcome when its venue filled nothing of it at its limit: an open's is its
    signal's decision; a close's is not (its trade stays open, the close is tried again)."""
    venue_price = venue_price_in(venue_reason)
    reason = protected_reason(order.price, order.limit, venue_price)
    log.warning("%s %s %s %s: nothing filled within the price band: %s", order.venue, order.symbol, order.side,
                order.client_order_id, reason)
    chain.add(EXECUTION_CONFIRMED, PRICE_PROTECTION, reason, reference=order.price, limit=order.limit,
              venue_price=venue_price)
    out.outcome, out.reason = PRICE_PROTECTION, reason
    return desk.emit(out) if order.kind == "close" else desk.record(out)


def check_fill(desk: Desk, chain: Chain, order: Order, fill: Fill) -> None:
    """An alert if the fill booked lies beyond the band around the order's reference."""
    band = desk.p.execute.max_slippage_bps
    if not beyond_band(order.side, order.price, fill.price, band):
        return
    off = (fill.price - order.price) / order.price * 10_000
    log.error("PRICE ALERT %s %s %s %s: filled at %.15g, %+.0f bps from its reference %.15g (band %g bps)",
              order.venue, order.symbol, order.side, order.client_order_id, fill.price, off, order.price, band)
    chain.add(EXECUTION_CONFIRMED, PRICE_AWAY, f"filled {off:+.0f} bps from its reference, band {band:g} bps",
              reference=order.price, price=fill.price, limit=order.limit, band_bps=band)
    price_alerts.record(desk.ledger.db, order, fill, band)


def cut_short(desk: Desk, chain: Chain, order: Order, filled: float) -> str:
    """An order filled in part, the rest cancelled at its limit: said in the log and the
    audit trail; the outcome's reason."""
    reason = (f"{num(filled)} of {num(order.quantity)} filled; the rest was cancelled, not marketable at limit "
              f"{num(order.limit)}")
    log.warning("%s %s %s %s: %s", order.venue, order.symbol, order.side, order.client_order_id, reason)
    chain.add(EXECUTION_CONFIRMED, PRICE_PROTECTION, reason, reference=order.price, limit=order.limit,
              filled=filled, quantity=order.quantity)
    return reason
