"""Start-up: the book as the ledger left it, and the crash window finished.

The book is rebuilt from the ledger (fills in order, open trades, the tracker's window
of closes, the market state); then every order a crash caught between its intent and
its outcome is settled: an open by asking the venue, a close by finishing it (asking
the venue before anything is sent). What they came to is returned, to go out with the
first batch.
"""

from __future__ import annotations

import logging

from dataflows.desk import Desk
from dataflows.exits_step import Exits
from dataflows.opens import Opens
from operators import audit_rows as R
from operators.audit import Chain, Outcome
from operators.exits import TradeTerms, booked
from operators.orders import Order
from operators.portfolio import Portfolio


log = logging.getLogger("apex.portfolio")


def recover(desk: Desk, opens: Opens, exits: Exits) -> tuple[Portfolio, list[Outcome]]:
    """The book and the outcomes of the orders finished on the way."""
    p, ledger = desk.p, desk.ledger
    book = Portfolio(p.execute.initial_nav_usd, p.kelly, p.limits)
    for fill in ledger.fills():
        book.apply_fill(fill)
    for terms in ledger.open_trades():
        book.open(terms)
    for won, expected in ledger.recent_closes(p.kelly.tracker.window):
        book.tracker.record(won, expected)
    market = ledger.book()
    if market is not None:
        book.restore_market(market)
    recovered: list[Outcome] = []
    for order, _, trade in ledger.dangling("open"):
        if trade is not None and order.signal_id not in book.open_trades:
            _recover_open(desk, opens, book, order, *trade, recovered)
    for order, reason, _ in ledger.dangling("close"):
        if order.signal_id in book.open_trades:
            exits.finish_close(book, book.open_trades[order.signal_id], order, reason, "", recovered)
    return book, recovered


def _recover_open(desk: Desk, opens: Opens, book: Portfolio, order: Order, expected: TradeTerms, exits: str,
                  recovered: list[Outcome]) -> None:
    """An opening order caught in the crash window. Its entry's redelivery would settle
    it, but the entry may never come back (dead-lettered while the venue was away), and
    a position the venue holds must be in the book: ask the venue now. If the venue
    never saw it there is no position, and a redelivery (if any) still sends it."""
    try:
        fill = desk.executor.resolve(order)
    except Exception as err:  # noqa: BLE001 - unreachable now: the next start or a redelivery asks again
        log.warning("open order %s left unresolved at start: %s", order.client_order_id, err)
        return
    if fill is None:
        return
    opens.book_open(book, fill, booked(expected, fill))
    prior = desk.ledger.decided(order.signal_id)
    if prior is None or prior.outcome != "sent":
        return
    chain = Chain.after_send(prior.stream_id, order.signal_id, order.ts_ms, expected.source,
                             order.venue, order.symbol)
    R.confirmed(chain, fill, False)
    # the entry's own stream id: its decision is final now, and acknowledging it is safe
    out = Outcome("", prior.stream_id, order.signal_id, "sent", "", chain.events)
    recovered.append(opens.opened(out, chain, fill, exits, book))
