"""Opening orders: reserve, send, settle.

Opening orders leave in groups: each is decided with the fill it should get reserved
in the book (so the next decision sees its exposure), and ``send`` (at the end of the
batch, or before anything else reaches the venue) hands them all to the executor,
whose ``send`` commits their intents at once and sends them together. A crash anywhere
in between is the crash window the executor already resolves: a "sent" decision with
an intent, redelivered and asked of the venue.

To a remote venue the group leaves as commands once the batch has committed, and the
entries are acknowledged then: from there on each order is the ledger's to follow. Its
later life (accepted, partly filled, filled, refused, cancelled) comes back as venue
events (``on_event``), each applied through the order state machine
(``operators/order_fsm.py``): a partial fill replaces as much of the reservation with what
really filled, the final fate settles it, and an illegal or repeated event moves nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from connectors.execution import WORKING, TradingRefused, as_ours
from connectors.venues import Rejected
from dataflows.desk import Desk
from dataflows.protect import check_fill, cut_short, protected
from operators import audit_rows as R
from operators import order_fsm as fsm
from operators.audit import FILTER_CHECK, Chain, Outcome
from operators.exits import TradeTerms, booked, terms_for
from operators.fill import Fill
from operators.orders import Order, expected_fill
from operators.portfolio import Portfolio
from operators.protection import is_protection
from operators.signal import Signal

log = logging.getLogger("apex.orders")


@dataclass(slots=True)
class InFlight:
    """An opening order decided and reserved in the book, sent when its batch's orders go."""

    out: Outcome
    chain: Chain
    order: Order
    expected: Fill
    terms: TradeTerms  # the trade the expected fill opens
    exits: str
    nav_after: float  # the book's NAV right after the reservation, as a sequential run sees it
    deadline: float | None = None  # wall-clock seconds after which it must not leave (its signal's TTL)
    state: fsm.OrderState | None = None  # at a remote venue: what the venue has said of it
    booked: Fill | None = None  # what the book holds for it: what filled, plus what is still expected


class Opens:
    def __init__(self, desk: Desk):
        self.desk = desk
        self.in_flight: list[InFlight] = []  # in decision order
        # accepted by a venue that answers later: reserved in the book until their fates come
        self.working: dict[str, InFlight] = {}

    def open(self, book: Portfolio, out: Outcome, chain: Chain, order: Order, sig: Signal,
             fresh: bool = False, deadline: float | None = None) -> Outcome:
        """``fresh``: decided just now, so its "sent" decision is recorded here, with its
        intent in the same transaction and only once everything that could fail has been
        computed: a decision saying "sent" with no order behind it can never be resumed."""
        desk = self.desk
        if order.client_order_id in self.working:  # its entry again: the venue is working it, never ask twice
            out.reason = "working at the venue"
            return desk.emit(out)
        execute = desk.p.execute
        expected = expected_fill(order, execute.slippage_bps, execute.fee_bps)
        terms, exits = terms_for(sig, expected), sig.exit_rules.description
        try:
            known = desk.executor.prepare(order, trade=(terms, exits), wait=False,
                                          held=book.surely_held((order.venue, order.symbol), order.side))
        except TradingRefused as why:
            return self.refused(out, chain, sig, str(why))
        except Rejected as err:
            return self.rejected(out, chain, err)
        if known is WORKING:  # at its venue (or maybe): its fate comes as an event
            book.reserve(expected, terms, remote=True)
            self.track(InFlight(out, chain, order, expected, terms, exits, book.nav, deadline),
                       fsm.OrderState(order, fsm.UNKNOWN))
            out.reason = f"working at {desk.executor.venue_for(order.venue).name}"
            return desk.emit(out)
        if known is not None:  # resolved without sending: a redelivery after a crash
            R.confirmed(chain, known, False)
            if known.signal_id not in book.open_trades:
                self.book_open(book, known, booked(terms, known))
            return self.opened(out, chain, known, exits, book)
        if fresh:
            # durable with the intent, before the order can leave, and so are its audit
            # rows so far (``send``): a restart resuming it adds only the rest
            desk.decided(out)
        book.reserve(expected, terms, remote=desk.executor.has_remote and desk.executor.remote(order.venue))
        self.in_flight.append(InFlight(out, chain, order, expected, terms, exits, book.nav, deadline))
        return out

    def track(self, f: InFlight, state: fsm.OrderState | None = None) -> None:
        """An order at a remote venue, followed through its events from now on (``state``: as
        the last run left it; a new order's otherwise)."""
        f.state = state or fsm.OrderState(f.order)
        f.booked = f.expected
        self.working[f.order.client_order_id] = f

    def book_open(self, book: Portfolio, fill: Fill, terms: TradeTerms) -> None:
        """A fill the book has not seen (found by asking the venue): its position and trade."""
        book.apply_fill(fill)
        book.open(terms)
        self.desk.ledger.record_open(terms)

    def send(self, book: Portfolio) -> None:
        """Send every order in flight; settle each in the book, the ledger and its chain."""
        if not self.in_flight:
            return
        batch, self.in_flight = self.in_flight, []
        ledger = self.desk.ledger
        t0 = time.perf_counter_ns()
        recorded_ms = time.time_ns() // 1_000_000
        for f in batch:  # how each was decided: durable with its intent, before it leaves
            f.out.queue(ledger.sent_rows, recorded_ms)
        executor = self.desk.executor
        # an open's deadline matters only to a remote venue's sender: not built for the paper venue's
        remote = any(executor.remote(f.order.venue) for f in batch) if executor.has_remote else False
        deadlines = {f.order.client_order_id: f.deadline for f in batch if f.deadline is not None} if remote else None
        try:
            results = executor.send([f.order for f in batch], wait=False, deadlines=deadlines)
        except Exception as err:  # noqa: BLE001 - unknown which left: the entries stay pending
            for f in batch:
                book.release(f.expected)
                f.out.outcome, f.out.reason = "error", f"{type(err).__name__}: {err}"
                f.out.terminal = False
            return
        now = time.perf_counter_ns()
        for f, result in zip(batch, results, strict=True):
            if result is None:  # handed to a remote venue: the entry's part is done, its fate comes later
                f.out.reason = f"sent to {executor.venue_for(f.order.venue).name}"
                self.desk.emit(f.out)
                self.track(f)
            elif isinstance(result, Rejected):
                book.release(f.expected)
                self.rejected(f.out, f.chain, result, f.order)
            else:
                before = book.nav
                terms = booked(f.terms, result)
                book.settle(f.expected, result, terms)
                ledger.record_open(terms)
                R.confirmed(f.chain, result, True)
                check_fill(self.desk, f.chain, f.order, result)
                self.opened(f.out, f.chain, result, f.exits, book, f.nav_after + (book.nav - before))
            f.out.step_us += (now - t0) / 1000  # each waited for the whole send
            f.out.stamp((now - f.out.received_ns) // 1000)

    def on_event(self, book: Portfolio, f: InFlight, ev: fsm.VenueEvent, change: fsm.Change,
                 outs: list[Outcome]) -> bool:
        """A venue's event about an opening order, already applied to its state (``change``)
        and recorded. Returns whether the order is final now."""
        state, venue = f.state, self.desk.executor.venue_for(f.order.venue).name
        assert state is not None and f.booked is not None
        if not state.final:
            if change.dst == fsm.ACCEPTED:
                R.accepted(f.chain, venue)
            elif change.dst == fsm.UNKNOWN:
                R.unknown(f.chain, ev.reason)
            if change.fill is not None:  # part of the reservation is now what really filled
                R.partial(f.chain, as_ours(f.order, change.fill), state.filled)
                now = blend(state, f.expected)
                book.rebook(f.booked, now)
                f.booked = now
            f.out.queue(self.desk.ledger.rows, time.time_ns() // 1_000_000)
            return False
        del self.working[f.order.client_order_id]
        out = Outcome(f.out.stream, f.out.stream_id, f.out.signal_id, "sent", events=f.chain.events,
                      queued=f.out.queued, late=True, received_ns=f.out.received_ns)
        total = state.booked()
        if total is None:  # refused, cancelled with nothing filled, or never sent
            book.release(f.booked)
            if state.status == fsm.DENIED:
                R.rejected(f.chain, ev.reason)
                out.outcome, out.reason = "expired", ev.reason
                outs.append(self.desk.record(out))
            elif state.status == fsm.CANCELLED and f.order.limit > 0:  # an IOC nothing of which was marketable
                outs.append(protected(self.desk, out, f.chain, f.order, ev.reason))
            else:
                outs.append(self.rejected(out, f.chain, Rejected(ev.reason or state.status), f.order))
            return True
        fill = as_ours(f.order, total)
        terms = booked(f.terms, fill)
        book.settle(f.booked, fill, terms)
        self.desk.ledger.record_open(terms)
        R.confirmed(f.chain, fill, True)
        check_fill(self.desk, f.chain, f.order, fill)
        if state.status == fsm.CANCELLED and f.order.limit > 0 and state.filled < f.order.quantity:
            out.reason = cut_short(self.desk, f.chain, f.order, state.filled)
        outs.append(self.opened(out, f.chain, fill, f.exits, book))
        return True

    def opened(self, out: Outcome, chain: Chain, fill: Fill, exits: str, book: Portfolio,
               nav_after: float | None = None) -> Outcome:
        R.trade_open(chain, fill, book.nav if nav_after is None else nav_after, exits,
                     book.open_trades[fill.signal_id].deadline_ms)
        out.outcome = "filled"
        out.executions.append(R.execution_row(fill, "open"))
        return self.desk.record(out)

    def refused(self, out: Outcome, chain: Chain, sig: Signal, why: str) -> Outcome:
        """A signal the book's trading state refuses (``halted``, ``reducing``): dropped with
        that reason, recorded and acknowledged like a filter's drop; no intent was written."""
        chain.add(FILTER_CHECK, "dropped", why, trading_state=self.desk.executor.state())
        out.outcome, out.reason = "dropped", why
        out.drop = [sig.signal_id, out.stream_id, why, chain.ts_ms, sig.source, sig.venue, sig.symbol,
                    sig.confidence, sig.regime]
        return self.desk.record(out)

    def rejected(self, out: Outcome, chain: Chain, err: Rejected, order: Order | None = None) -> Outcome:
        if order is not None and is_protection(str(err)):  # a paper venue's band, or a venue's own word
            return protected(self.desk, out, chain, order, str(err))
        R.rejected(chain, str(err))
        out.outcome, out.reason = "rejected", str(err)
        return self.desk.record(out)


def blend(state: fsm.OrderState, expected: Fill) -> Fill:
    """What the book holds for an order part filled: what filled, at its price and fee, and
    the rest still as expected."""
    rest = max(0.0, expected.quantity - state.filled)
    qty = state.filled + rest
    price = (state.filled * state.avg_price + rest * expected.price) / qty if qty else expected.price
    fee = state.fee_usd + (expected.fee_usd * rest / expected.quantity if expected.quantity else 0.0)
    return replace(expected, quantity=qty, price=price, fee_usd=fee)
