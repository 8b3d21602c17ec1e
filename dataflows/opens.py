"""Opening orders: reserve, send, settle.

Opening orders leave in groups: each is decided with the fill it should get reserved
in the book (so the next decision sees its exposure), and ``send`` (at the end of the
batch, or before anything else reaches the venue) hands them all to the executor,
whose ``send`` commits their intents at once and sends them together. A crash anywhere
in between is the crash window the executor already resolves: a "sent" decision with
an intent, redelivered and asked of the venue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from connectors.venues import Rejected
from dataflows.desk import Desk
from operators import audit_rows as R
from operators.audit import Chain, Outcome
from operators.exits import TradeTerms, booked, terms_for
from operators.fill import Fill
from operators.orders import Order, expected_fill
from operators.portfolio import Portfolio
from operators.signal import Signal


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


class Opens:
    def __init__(self, desk: Desk):
        self.desk = desk
        self.in_flight: list[InFlight] = []  # in decision order
        # accepted by a venue that answers later: reserved in the book until their fates come
        self.working: dict[str, InFlight] = {}

    def open(self, book: Portfolio, out: Outcome, chain: Chain, order: Order, sig: Signal,
             fresh: bool = False) -> Outcome:
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
            known = desk.executor.prepare(order, trade=(terms, exits))
        except Rejected as err:
            return self.rejected(out, chain, err)
        if known is not None:  # resolved without sending: a redelivery after a crash
            R.confirmed(chain, known, False)
            if known.signal_id not in book.open_trades:
                self.book_open(book, known, booked(terms, known))
            return self.opened(out, chain, known, exits, book)
        if fresh:
            # durable with the intent, before the order can leave, and so are its audit
            # rows so far (``send``): a restart resuming it adds only the rest
            desk.decided(out)
        book.reserve(expected, terms)
        self.in_flight.append(InFlight(out, chain, order, expected, terms, exits, book.nav))
        return out

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
        try:
            results = executor.send([f.order for f in batch], wait=False)
        except Exception as err:  # noqa: BLE001 - unknown which left: the entries stay pending
            for f in batch:
                book.release(f.expected)
                f.out.outcome, f.out.reason = "error", f"{type(err).__name__}: {err}"
                f.out.terminal = False
            return
        now = time.perf_counter_ns()
        for f, result in zip(batch, results, strict=True):
            if result is None:  # taken, still working: the entry's part is done, the fill comes later
                venue = executor.venue_for(f.order.venue).name
                R.accepted(f.chain, venue)
                f.out.reason = f"working at {venue}"
                self.desk.emit(f.out)
                self.working[f.order.client_order_id] = f
            elif isinstance(result, Rejected):
                book.release(f.expected)
                self.rejected(f.out, f.chain, result)
            else:
                before = book.nav
                terms = booked(f.terms, result)
                book.settle(f.expected, result, terms)
                ledger.record_open(terms)
                R.confirmed(f.chain, result, True)
                self.opened(f.out, f.chain, result, f.exits, book, f.nav_after + (book.nav - before))
            f.out.step_us += (now - t0) / 1000  # each waited for the whole send
            f.out.stamp((now - f.out.received_ns) // 1000)

    def settle(self, book: Portfolio, outs: list[Outcome]) -> None:
        """The fates that came for orders the venues were working: each settled in the book,
        the ledger and its chain, as a late outcome of its entry (acknowledged already)."""
        for order, fate in self.desk.executor.poll():
            f = self.working.pop(order.client_order_id, None)
            if f is None:
                continue
            out = Outcome(f.out.stream, f.out.stream_id, f.out.signal_id, "sent", events=f.chain.events,
                          queued=f.out.queued, late=True, received_ns=f.out.received_ns)
            if isinstance(fate, Rejected):
                book.release(f.expected)
                outs.append(self.rejected(out, f.chain, fate))
                continue
            terms = booked(f.terms, fate)
            book.settle(f.expected, fate, terms)
            self.desk.ledger.record_open(terms)
            R.confirmed(f.chain, fate, True)
            outs.append(self.opened(out, f.chain, fate, f.exits, book))

    def opened(self, out: Outcome, chain: Chain, fill: Fill, exits: str, book: Portfolio,
               nav_after: float | None = None) -> Outcome:
        R.trade_open(chain, fill, book.nav if nav_after is None else nav_after, exits,
                     book.open_trades[fill.signal_id].deadline_ms)
        out.outcome = "filled"
        out.executions.append(R.execution_row(fill, "open"))
        return self.desk.record(out)

    def rejected(self, out: Outcome, chain: Chain, err: Rejected) -> Outcome:
        R.rejected(chain, str(err))
        out.outcome, out.reason = "rejected", str(err)
        return self.desk.record(out)
