"""Start-up: the book as the ledger left it, and the crash window finished.

The book is rebuilt from the ledger (fills in order, open trades, the tracker's window
of closes, the market state); then every order a crash caught between its intent and
its outcome is settled: an open by asking the venue, a close by finishing it (asking
the venue before anything is sent). What they came to is returned, to go out with the
first batch.

On a remote venue nothing is asked here: each order still live (an intent a crash left
unsent, one the venue took, one of unknown fate) is followed again as it was, its
reservation and what it filled back in the book, and the in-flight checker is asked
about it: its fate comes as events, and it is sent only if its venue never had it.
"""

from __future__ import annotations

import logging

from dataflows.desk import Desk
from dataflows.exits_step import Closing, Exits
from dataflows.opens import InFlight, Opens, blend
from operators import audit_rows as R
from operators import order_fsm as fsm
from operators.audit import Chain, Outcome
from operators.exits import TradeTerms, booked
from operators.fill import Fill
from operators.orders import Order, expected_fill
from operators.portfolio import Portfolio
from operators.risk_filters import correlation_minutes

# An intent a crash left unsent is sent at restart only this soon after it was decided
# (its signal's TTL is not kept with it; the seed's signals live minutes, not hours).
RESTART_SEND_S = 300


log = logging.getLogger("apex.portfolio")


def recover(desk: Desk, opens: Opens, exits: Exits) -> tuple[Portfolio, list[Outcome]]:
    """The book and the outcomes of the orders finished on the way."""
    p, ledger = desk.p, desk.ledger
    book = Portfolio(p.execute.initial_nav_usd, p.kelly, p.limits, correlation_minutes(p.filters))
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
    executor = desk.executor
    followed: list[str] = []
    for order, _, trade, status in ledger.live("open"):
        if trade is None or order.signal_id in book.open_trades:
            continue
        if executor.remote(order.venue):
            followed.append(f"{order.client_order_id} {status} at {order.venue}")
            _follow_open(desk, opens, book, order, *trade, status)
        else:
            _recover_open(desk, opens, book, order, *trade, recovered)
    for sid, last in ledger.close_attempts().items():  # which attempt each trade's close is at
        exits.resume(sid, *last)
    for order, reason, _, status in ledger.live("close"):
        terms = book.open_trades.get(order.signal_id)
        if terms is None:
            continue
        if executor.remote(order.venue):
            followed.append(f"{order.client_order_id} {status} at {order.venue}")
            _follow_close(desk, exits, book, terms, order, reason, status)
        else:
            exits.finish_close(book, terms, order, reason, "", recovered)
    _say(p.book, recovered, followed)
    return book, recovered


def _say(book: str, recovered: list[Outcome], followed: list[str]) -> None:
    """What the crash window held, one line: the restart says what it did."""
    if not recovered and not followed:
        return
    done = [f"{o.signal_id} {o.outcome}" + (f" at {o.events[-1].venue}" if o.events and o.events[-1].venue else "")
            for o in recovered]
    log.info("%d order(s) found in the crash window%s%s", len(done) + len(followed),
             f": finished: {', '.join(done)}" if done else "",
             f"; followed until their venue answers: {', '.join(followed)}" if followed else "",
             extra={"book": book, "stage": "recovery"})


def _state(desk: Desk, order: Order, status: str) -> fsm.OrderState:
    """An order's state as the ledger left it: its status and what its fills add up to."""
    state = fsm.OrderState(order, status)
    for fill_id, qty, price, fee, _ in desk.ledger.order_fills(order.client_order_id):
        state.avg_price = (state.filled * state.avg_price + qty * price) / (state.filled + qty)
        state.filled += qty
        state.fee_usd += fee
        state.fill_ids.add(fill_id)
    return state


def _follow_open(desk: Desk, opens: Opens, book: Portfolio, order: Order, expected_terms: TradeTerms,
                 exits: str, status: str) -> None:
    execute = desk.p.execute
    expected = expected_fill(order, execute.slippage_bps, execute.fee_bps)
    book.reserve(expected, expected_terms, remote=True)
    prior = desk.ledger.decided(order.signal_id)
    chain = Chain.after_send(prior.stream_id if prior else "", order.signal_id, order.ts_ms, expected_terms.source,
                             order.venue, order.symbol)
    out = Outcome("", prior.stream_id if prior else "", order.signal_id, "sent", events=chain.events)
    f = InFlight(out, chain, order, expected, expected_terms, exits, book.nav, order.ts_ms / 1000 + RESTART_SEND_S)
    opens.track(f, _state(desk, order, status))
    assert f.state is not None
    if f.state.filled > 0:
        f.booked = blend(f.state, expected)
        book.rebook(expected, f.booked)
    desk.executor.check(order, f.deadline)


def _follow_close(desk: Desk, exits: Exits, book: Portfolio, terms: TradeTerms, order: Order, reason: str,
                  status: str) -> None:
    chain = Chain("", order.signal_id, order.ts_ms, terms.source, terms.venue, terms.symbol)
    out = Outcome("", "", terms.signal_id, "closed", reason, chain.events)
    state = _state(desk, order, status)
    if state.filled > 0:  # what filled before the stop left the position then
        book.apply_fill(Fill(order.signal_id, order.client_order_id, state.order_id, order.venue, order.symbol,
                             order.side, state.filled, state.avg_price, state.fee_usd, order.ts_ms))
    exits.follow(Closing(out, chain, terms, reason, state))
    desk.executor.check(order)


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
