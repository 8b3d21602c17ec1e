"""The portfolio step: where decisions (operators) meet the ledger and the venue (connectors).

Everything that reads or changes the book happens here, one entry at a time
for one portfolio key: receipt (duplicate, TTL), portfolio filters, sizing,
opening orders, and exits (hard stop and regime exit on market entries,
maximum holding on the stream clock). Each step of an order is written to the
ledger before the next can happen, so any crash is resumed, never repeated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from connectors.execution import Executor
from connectors.outbox import Shipper
from connectors.ledger import Decided, Ledger
from connectors.venues import Rejected, VenueFactory
from dataflows.config import Pipeline
from dataflows.steps import Received
from operators import audit as A
from operators import audit_rows as R
from operators.audit import INVALID_TICK, Chain, Event, Outcome
from operators.decide import audit_verdict, drop_row, judge
from operators.exits import HARD_STOP, MAX_HOLDING, TradeTerms, booked, terms_for
from operators.orders import Order, client_order_id, expected_fill
from operators.fill import Fill
from operators.portfolio import Portfolio
from operators.signal import Signal


log = logging.getLogger("apex.portfolio")
_NONE: dict[str, float] = {}  # a market not seen yet: read, never written


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


class PortfolioStep:
    """Owns the ledger and venue handles, opened lazily in the worker that runs the step
    (the venues from the factory it is given: the wiring's, or a test's).

    Opening orders leave in groups: each is decided with the fill it should get reserved
    in the book (so the next decision sees its exposure), and ``send_orders`` (at the end
    of the batch, or before anything else reaches the venue) commits all their intents
    at once and sends them together. A crash anywhere in between is the crash window the
    executor already resolves: a "sent" decision with an intent, redelivered and asked of
    the venue."""

    def __init__(self, pipeline: Pipeline, venues: VenueFactory, shipper: Shipper | None = None):
        self.p = pipeline
        self.shipper = shipper
        self._venues = venues
        self._ledger: Ledger | None = None
        self._executor: Executor | None = None
        self._lots: dict[str, dict[str, float]] = {}  # market -> symbol -> lot size, as the venues list them
        self.recovered: list[Outcome] = []  # closes finished at start, emitted with the first batch
        self.in_flight: list[InFlight] = []  # in decision order

    def _connect(self) -> None:
        """Ledger and venue together, in the worker that runs the step (not where the flow is built)."""
        self._ledger = Ledger(self.p.ledger_path, keep_wal=True)
        self._executor = Executor(self._ledger, self._venues())

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._connect()
        return self._ledger  # type: ignore[return-value]

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._connect()
        return self._executor  # type: ignore[return-value]

    def new_book(self) -> Portfolio:
        """The book as the ledger left it: fills in order, open trades, the
        tracker's window of closes; then any close caught in the crash window
        is finished (asking the venue first)."""
        book = Portfolio(self.p.execute.initial_nav_usd, self.p.kelly, self.p.limits)
        for fill in self.ledger.fills():
            book.apply_fill(fill)
        for terms in self.ledger.open_trades():
            book.open(terms)
        for won, expected in self.ledger.recent_closes(self.p.kelly.tracker.window):
            book.tracker.record(won, expected)
        market = self.ledger.book()
        if market is not None:
            book.restore_market(market)
        for order, _, trade in self.ledger.dangling("open"):
            if trade is not None and order.signal_id not in book.open_trades:
                self._recover_open(book, order, *trade)
        for order, reason, _ in self.ledger.dangling("close"):
            if order.signal_id in book.open_trades:
                self._finish_close(book, book.open_trades[order.signal_id], order, reason, "",
                                   self.recovered)
        return book

    def _recover_open(self, book: Portfolio, order: Order, expected: TradeTerms, exits: str) -> None:
        """An opening order caught in the crash window. Its entry's redelivery would settle
        it, but the entry may never come back (dead-lettered while the venue was away), and
        a position the venue holds must be in the book: ask the venue now. If the venue
        never saw it there is no position, and a redelivery (if any) still sends it."""
        try:
            fill = self.executor.resolve(order)
        except Exception as err:  # noqa: BLE001 - unreachable now: the next start or a redelivery asks again
            log.warning("open order %s left unresolved at start: %s", order.client_order_id, err)
            return
        if fill is None:
            return
        self._book_open(book, fill, booked(expected, fill))
        prior = self.ledger.decided(order.signal_id)
        if prior is None or prior.outcome != "sent":
            return
        chain = Chain.after_send(prior.events, prior.stream_id, order.signal_id, order.ts_ms, expected.source,
                                 order.venue, order.symbol)
        R.confirmed(chain, fill, False)
        # the entry's own stream id: its decision is final now, and acknowledging it is safe
        out = Outcome("", prior.stream_id, order.signal_id, "sent", "", chain.events)
        self.recovered.append(self._opened(out, chain, fill, exits, book))

    def __call__(self, book: Portfolio | None, item: Received, outs: list[Outcome]) -> Portfolio:
        """Append this entry's outcomes (exits it triggered, then its own) to ``outs``."""
        book = book or self.new_book()
        if self.recovered:
            outs.extend(self.recovered)
            self.recovered = []
        e = item.entry
        t0 = time.perf_counter_ns()
        first = len(outs)
        try:
            for terms in book.due(e.clock_ms):
                self._close(book, terms, MAX_HOLDING, book.marks.get(terms.symbol, terms.entry_price),
                            e.stream_id, e.clock_ms, outs)
            if item.tick is not None:
                self._tick(book, item, outs)
            elif item.signal is None:
                outs.append(self._invalid(item))
            else:
                outs.append(self._decide(book, item))
        except Exception as err:  # noqa: BLE001 - any failure leaves the entry pending
            sid = item.signal.signal_id if item.signal else ""
            outs.append(Outcome(e.stream, e.stream_id, sid, "error", f"{type(err).__name__}: {err}",
                                terminal=False, fields=e.fields))
        now = time.perf_counter_ns()
        own = outs[-1]
        own.received_ns, own.deliveries, own.step_us = e.received_ns, e.deliveries, (now - t0) / 1000
        latency = (now - e.received_ns) // 1000
        for o in outs[first:]:
            o.stamp(latency)
        return book

    # --- signals -------------------------------------------------------------------------------

    def _invalid(self, item: Received) -> Outcome:
        e, err = item.entry, item.invalid
        if item.market:
            return self._invalid_tick(item, err.reason if err else "invalid", e.fields.get("symbol"))
        sid = (err.signal_id if err else None) or ""
        chain = Chain(e.stream_id, sid, e.clock_ms)
        chain.add(A.SIGNAL_RECEIVED, "invalid", err.reason if err else "invalid")
        return self._emit(Outcome(e.stream, e.stream_id, sid, "invalid", chain.events[0].reason,
                                  chain.events, fields=e.fields))

    def _invalid_tick(self, item: Received, reason: str, symbol: object, **details: object) -> Outcome:
        """A market entry refused: recorded with its reason, never marking the book."""
        e = item.entry
        shown = symbol if isinstance(symbol, str) and item.invalid is None else ""  # a refused symbol stays out
        chain = Chain(e.stream_id, "", e.clock_ms, symbol=shown)
        chain.add(A.SIGNAL_RECEIVED, INVALID_TICK, reason, **details)
        return self._emit(Outcome(e.stream, e.stream_id, "", INVALID_TICK, reason, chain.events, fields=e.fields))

    def _decide(self, book: Portfolio, item: Received) -> Outcome:
        e, sig = item.entry, item.signal
        assert sig is not None
        prior = self.ledger.decided(sig.signal_id)
        if prior is not None and prior.outcome == "sent" and self.in_flight:
            # its order may be in flight: settle it first, so this entry's verdict reads
            # the same whatever the batches were
            self.send_orders(book)
            prior = self.ledger.decided(sig.signal_id)
        if prior is not None and prior.stream_id == e.stream_id:
            return self._resume(book, item, prior)
        lot = self._lots.get(sig.venue, _NONE).get(sig.symbol)
        if lot is None:
            lot = self._lot_size(sig.venue, sig.symbol)
        v = judge(sig, clock_ms=e.clock_ms, already_decided=prior is not None, book=book,
                  filters=self.p.filters, early=item.early, kelly=self.p.kelly, lot_size=lot,
                  emitted_ms=item.emitted_ms)
        chain = Chain(e.stream_id, sig.signal_id, e.clock_ms, sig.source, sig.venue, sig.symbol)
        audit_verdict(v, sig, chain, f"{prior.stream_id} as {prior.outcome}" if prior is not None else "")
        out = Outcome(e.stream, e.stream_id, sig.signal_id, v.outcome, v.reason or "", chain.events)
        if v.outcome == "duplicate":
            out.reason = chain.events[0].reason
            return self._emit(out)
        if v.outcome != "order":
            out.drop = drop_row(v, sig, e.stream_id, e.clock_ms)
            return self._record(out)
        sz = v.sizing
        assert sz is not None
        order = Order(client_order_id(sig.signal_id), sig.signal_id, "open", sig.venue, sig.symbol,
                      sig.side, sz.quantity, sz.price, e.clock_ms)
        R.attempt(chain, order, self.executor.venue_for(order.venue).name, size_usd=sz.size_usd)
        out.outcome = "sent"
        return self._open(book, out, chain, order, sig, fresh=True)

    def _lot_size(self, market: str, symbol: str) -> float:
        """Asked of the venue once per instrument. 0 for one it does not trade (or a
        market with no venue): nothing is sized for it."""
        try:
            instrument = self.executor.venue_for(market).instrument(market, symbol)
        except Rejected:
            instrument = None
        lot = instrument.lot_size if instrument is not None else 0.0
        self._lots.setdefault(market, {})[symbol] = lot
        return lot

    def _open(self, book: Portfolio, out: Outcome, chain: Chain, order: Order, sig: Signal,
              fresh: bool = False) -> Outcome:
        """``fresh``: decided just now, so its "sent" decision is recorded here, with its
        intent in the same transaction and only once everything that could fail has been
        computed: a decision saying "sent" with no order behind it can never be resumed."""
        expected = expected_fill(order, self.p.execute.slippage_bps, self.p.execute.fee_bps)
        terms, exits = terms_for(sig, expected), sig.exit_rules.description
        try:
            known = self.executor.prepare(order, trade=(terms, exits))
        except Rejected as err:
            return self._rejected(out, chain, err)
        if known is not None:  # resolved without sending: a redelivery after a crash
            R.confirmed(chain, known, False)
            if known.signal_id not in book.open_trades:
                self._book_open(book, known, booked(terms, known))
            return self._opened(out, chain, known, exits, book)
        if fresh:
            # durable with the intent, before the order can leave, and so are its audit
            # rows so far (``send_orders``): a restart resuming it adds only the rest
            self._decided(out)
        book.reserve(expected, terms)
        self.in_flight.append(InFlight(out, chain, order, expected, terms, exits, book.nav))
        return out

    def _book_open(self, book: Portfolio, fill: Fill, terms: TradeTerms) -> None:
        """A fill the book has not seen (found by asking the venue): its position and trade."""
        book.apply_fill(fill)
        book.open(terms)
        self.ledger.record_open(terms)

    def send_orders(self, book: Portfolio) -> None:
        """Send every order in flight; settle each in the book, the ledger and its chain."""
        if not self.in_flight:
            return
        batch, self.in_flight = self.in_flight, []
        t0 = time.perf_counter_ns()
        recorded_ms = time.time_ns() // 1_000_000
        for f in batch:  # how each was decided: durable with its intent, before it leaves
            f.out.queue(self.ledger.sent_rows, recorded_ms)
        try:
            results = self.executor.send([f.order for f in batch])
        except Exception as err:  # noqa: BLE001 - unknown which left: the entries stay pending
            for f in batch:
                book.release(f.expected)
                f.out.outcome, f.out.reason = "error", f"{type(err).__name__}: {err}"
                f.out.terminal = False
            return
        now = time.perf_counter_ns()
        for f, result in zip(batch, results, strict=True):
            if isinstance(result, Rejected):
                book.release(f.expected)
                self._rejected(f.out, f.chain, result)
            else:
                before = book.nav
                terms = booked(f.terms, result)
                book.settle(f.expected, result, terms)
                self.ledger.record_open(terms)
                R.confirmed(f.chain, result, True)
                self._opened(f.out, f.chain, result, f.exits, book, f.nav_after + (book.nav - before))
            f.out.step_us += (now - t0) / 1000  # each waited for the whole send
            f.out.stamp((now - f.out.received_ns) // 1000)

    def _opened(self, out: Outcome, chain: Chain, fill: Fill, exits: str, book: Portfolio,
                nav_after: float | None = None) -> Outcome:
        R.trade_open(chain, fill, book.nav if nav_after is None else nav_after, exits,
                     book.open_trades[fill.signal_id].deadline_ms)
        out.outcome = "filled"
        out.executions.append(R.execution_row(fill, "open"))
        return self._record(out)

    def _rejected(self, out: Outcome, chain: Chain, err: Rejected) -> Outcome:
        R.rejected(chain, str(err))
        out.outcome, out.reason = "rejected", str(err)
        return self._record(out)

    def _resume(self, book: Portfolio, item: Received, prior: Decided) -> Outcome:
        """The same entry again (redelivered after a crash): never decide twice.
        A finished decision went to the outbox with its decision, so there is
        nothing to add: it only needs acknowledging. One that stopped after
        the order may have left is finished through the executor, which asks
        the venue before it would send."""
        e, sig = item.entry, item.signal
        assert sig is not None
        if prior.outcome != "sent":
            events = [Event.from_dict(d) for d in prior.events]  # none but an older worker's
            return Outcome(e.stream, e.stream_id, sig.signal_id, prior.outcome, prior.reason, events,
                           queued=len(events), resumed=True)
        order = self.ledger.intent(sig.signal_id)
        if order is None:  # written in the same commit as the decision: a damaged ledger
            raise LookupError(f"{sig.signal_id} was sent but the ledger holds no order for it")
        chain = Chain.after_send(prior.events, e.stream_id, sig.signal_id, order.ts_ms, sig.source, order.venue,
                                 order.symbol)
        out = Outcome(e.stream, e.stream_id, sig.signal_id, prior.outcome, prior.reason, chain.events)
        return self._open(book, out, chain, order, sig)

    def _record(self, out: Outcome) -> Outcome:
        """The decision and its audit rows, in the ledger's current transaction."""
        self._decided(out)
        return self._emit(out)

    def _decided(self, out: Outcome) -> None:
        self.ledger.record_decision(out.signal_id, out.stream_id, out.outcome, out.reason, out.events[0].ts_ms)

    def _emit(self, out: Outcome) -> Outcome:
        out.queue(self.ledger.rows, time.time_ns() // 1_000_000)
        return out

    # --- market entries and exits ----------------------------------------------------------------

    def _tick(self, book: Portfolio, item: Received, outs: list[Outcome]) -> None:
        e, t = item.entry, item.tick
        assert t is not None
        if not book.market_entry_is_new(e.stream, e.stream_id):
            # delivered again after the book took it (its acknowledgement was lost): an older
            # price must not mark the book over newer ones, nor fire an exit a second time
            outs.append(Outcome(e.stream, e.stream_id, "", "tick", "already applied"))
            return
        if t.price is not None and t.symbol is not None:
            mark = book.marks.get(t.symbol)
            why = book.refuses_price(t.symbol, t.price)
            if why:  # the whole entry: a regime travelling with a refused price is not believed either
                book.market_entry_taken(e.stream, e.stream_id)
                outs.append(self._invalid_tick(item, why, t.symbol, price=t.price, mark=mark))
                return
            for terms in book.on_price(t.symbol, t.price, e.clock_ms):
                self._close(book, terms, HARD_STOP, t.price, e.stream_id, e.clock_ms, outs)
        if t.regime is not None:
            for terms, reason in book.on_regime(t.regime, self.p.exits.on_regime_change_alert):
                if t.symbol is None or terms.symbol == t.symbol:
                    self._close(book, terms, reason, book.marks.get(terms.symbol, terms.entry_price),
                                e.stream_id, e.clock_ms, outs)
        book.market_entry_taken(e.stream, e.stream_id)  # only now: an exit that failed is tried again
        outs.append(Outcome(e.stream, e.stream_id, "", "tick"))

    def _close(self, book: Portfolio, terms: TradeTerms, reason: str, price: float, trigger: str,
               clock_ms: int, outs: list[Outcome]) -> None:
        order = Order(client_order_id(terms.signal_id, "close"), terms.signal_id, "close", terms.venue,
                      terms.symbol, terms.exit_side, terms.quantity, price, clock_ms)
        try:
            self._finish_close(book, terms, order, reason, trigger, outs)
        except Exception:
            if reason == MAX_HOLDING:
                book.retry_due(terms)  # due again at the next entry
            raise

    def _finish_close(self, book: Portfolio, terms: TradeTerms, order: Order, reason: str,
                      trigger: str, outs: list[Outcome]) -> None:
        self.send_orders(book)  # the venue sees orders in the order they were decided
        chain = Chain(trigger, terms.signal_id, order.ts_ms, terms.source, terms.venue, terms.symbol)
        R.attempt(chain, order, self.executor.venue_for(order.venue).name, reason)
        out = Outcome("", "", terms.signal_id, "closed", reason, chain.events)  # no stream entry to ack
        try:
            fill, sent = self.executor.execute(order, reason)
        except Rejected as err:
            R.rejected(chain, str(err))
            out.outcome, out.reason = "rejected", str(err)
            outs.append(self._emit(out))
            return
        R.confirmed(chain, fill, sent)
        book.apply_fill(fill)
        closed = book.close(terms.signal_id, fill, reason)
        self.ledger.record_close(closed)
        R.trade_closed(chain, reason, fill, closed, terms, book.tracker.multiplier(), book.nav)
        out.executions.append(R.execution_row(fill, "close"))
        out.trades.append(closed.row())
        outs.append(self._emit(out))

