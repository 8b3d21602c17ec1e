"""The portfolio step: where decisions (operators) meet the ledger and the venue (connectors).

Everything that reads or changes the book happens here, one entry at a time for one
portfolio key. This module is the per-entry dispatch and the signal's path: receipt
(duplicate, TTL), portfolio filters, sizing, and the opening order's decision. Its
parts, each in its own module: start-up recovery (``recovery``), opening orders
reserved, sent and settled (``opens``), market entries and exits (``exits_step``), the
shared ledger and egress handles (``desk``); the audit rows come from
``operators/audit_rows.py``. Each step of an order is written to the ledger before the
next can happen, so any crash is resumed, never repeated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict

from connectors.control import Control
from connectors.ledger import Decided, Ledger
from connectors.outbox import Shipper
from connectors.sender import PENDING, Gateway
from connectors.venues import PENDING as PENDING_VENUE, Rejected, VenueFactory
from dataflows.config import Pipeline
from dataflows.desk import Desk
from dataflows.exits_step import Exits
from dataflows import loss_state
from dataflows.opens import Opens
from dataflows.recovery import recover
from dataflows.slicing_step import Slicer
from dataflows.steps import Received
from dataflows.venue_funds import VenueFunds
from operators import audit_rows as R
from operators import order_fsm as fsm
from operators.audit import Chain, Outcome
from operators.decide import audit_verdict, drop_row, judge, ttl_left_ms
from operators.orders import Order, client_order_id
from operators.portfolio import Portfolio
from operators.spot import SELL_SIGNAL, SPOT_CANNOT_SHORT
from operators.protection import limit_price


_NONE: dict[str, float] = {}  # a market not seen yet: read, never written
log = logging.getLogger("apex.orders")
DONE_KEPT = 10_000  # finished orders whose late events are still judged


class PortfolioStep:
    """One entry at a time: the exits it (or the clock) triggers, then its own outcome.
    The ledger and venue handles are the ``Desk``'s, opened lazily in the worker that
    runs the step. The batch's transaction is not the step's: ``PortfolioLogic`` owns it."""

    def __init__(self, pipeline: Pipeline, venues: VenueFactory, shipper: Shipper | None = None,
                 gateway: Gateway | None = None):
        self.p = pipeline
        self.shipper = shipper
        self.desk = Desk(pipeline, venues, gateway)
        self.opens = Opens(self.desk)
        self.exits = Exits(self.desk, self.opens)
        self._lots: dict[str, dict[str, float]] = {}  # market -> symbol -> lot size, as the venues list them
        self._mins: dict[str, dict[str, float]] = {}  # market -> symbol -> the smallest quantity it takes
        self._ticks: dict[str, dict[str, float]] = {}  # market -> symbol -> tick size, listed with the lot
        self._funds: VenueFunds | None = None  # made once the desk has its venues (in the worker)
        self.recovered: list[Outcome] = []  # orders finished at start, emitted with the first batch
        self.illegal: Counter = Counter()  # venue events refused by the order state machine, by (from, to)
        # orders that reached their end lately: a venue's word about one is still judged (a repeat,
        # or an illegal change to count), not taken for an order of someone else's
        self._done: OrderedDict[str, fsm.OrderState] = OrderedDict()
        self.cancels_asked: set[str] = set()  # by a kill: never asked twice (dataflows/control_step.py)
        slicing = pipeline.execute.slicing
        self.slicer = Slicer(self.desk, self.opens, slicing, lambda: self.wall()) if slicing is not None else None
        self.wall = time.time  # the wall clock (a test's own)
        self._clock: tuple[int, float] | None = None  # the newest entry's stream clock, and when it came

    @property
    def ledger(self) -> Ledger:
        return self.desk.ledger

    def new_book(self) -> Portfolio:
        """The book as the ledger left it, the crash window finished (``recovery``)."""
        book, self.recovered = recover(self.desk, self.opens, self.exits)
        return book

    def send_orders(self, book: Portfolio) -> None:
        """Every opening order in flight sent and settled (the end of a batch)."""
        self.opens.send(book)

    def __call__(self, book: Portfolio | None, item: Received, outs: list[Outcome]) -> Portfolio:
        """Append this entry's outcomes (exits it triggered, then its own) to ``outs``."""
        book = book or self.new_book()
        if self.recovered:
            outs.extend(self.recovered)
            self.recovered = []
        e = item.entry
        t0 = time.perf_counter_ns()
        first = len(outs)
        if self.slicer is not None and (self._clock is None or e.clock_ms >= self._clock[0]):
            self._clock = (e.clock_ms, self.wall())
        try:
            loss_state.new_day(self, e.clock_ms)
            self.exits.due(book, e.stream_id, e.clock_ms, outs)
            if self.slicer is not None:
                if item.tick is not None:
                    self.slicer.on_tick(item.tick, e.clock_ms)
                self.slicer.due(book, e.clock_ms, outs)  # children due by this entry's time leave first
            if item.tick is not None:
                self.exits.tick(book, item, outs)
            elif item.signal is None:
                outs.append(self._invalid(item))
            else:
                outs.append(self._decide(book, item, outs))
            loss_state.check(self, book)  # a tick's price or a paper fill may have breached the day's loss
        except Exception as err:  # noqa: BLE001 - any failure leaves the entry pending
            sid = item.signal.signal_id if item.signal else ""
            outs.append(Outcome(e.stream, e.stream_id, sid, "error", f"{type(err).__name__}: {err}",
                                terminal=False, fields=e.fields))
        now = time.perf_counter_ns()
        own = outs[-1]
        own.received_ns, own.deliveries, own.step_us = e.received_ns, e.deliveries, (now - t0) / 1000
        own.copies = item.copies
        latency = (now - e.received_ns) // 1000
        for o in outs[first:]:
            o.stamp(latency)
        return book

    def slicing_wake(self) -> float | None:
        """When (wall seconds) the next child of a sliced order falls due: the stream's clock
        is taken to run on from its newest entry as the wall's does. None: nothing due."""
        if self.slicer is None or self._clock is None:
            return None
        due = self.slicer.next_due_ms()
        return None if due is None else self._clock[1] + (due - self._clock[0]) / 1000

    def wake(self, book: Portfolio, outs: list[Outcome]) -> None:
        """A quiet stream's wake-up: the children due by now leave (``PortfolioLogic.on_notify``)."""
        if self.slicer is not None and self._clock is not None:
            ms, wall = self._clock
            self.slicer.due(book, ms + int((self.wall() - wall) * 1000), outs)

    def on_event(self, book: Portfolio, ev: fsm.VenueEvent, outs: list[Outcome]) -> None:
        """A venue's answer about one of this book's orders: applied through the order state
        machine, made durable in the ledger (a guarded transition), then in the book."""
        f = self.opens.working.get(ev.client_order_id)
        c = self.exits.closing.get(ev.client_order_id) if f is None else None
        state = f.state if f is not None else c.state if c is not None else self._done.get(ev.client_order_id)
        if state is None:
            log.debug("event for an order this book does not follow: %s %s", ev.client_order_id, ev.status)
            return
        change = fsm.apply(state, ev)
        if change.illegal:
            key = (change.src, change.dst)
            if not self.illegal[key]:
                log.warning("order %s: %s after %s refused (an illegal transition; counted, logged once)",
                            ev.client_order_id, change.dst, change.src)
            self.illegal[key] += 1
            return
        if change.duplicate:
            return
        # on the run's clock, as its fill is (connectors/execution.py ``as_ours``): the order's time
        self.ledger.record_change(state, change, ev.fill_id, ev.reason, state.order.ts_ms)
        if f is not None:
            if self.opens.on_event(book, f, ev, change, outs):
                self.exits.opened(book, f.order.signal_id, outs)
        else:
            assert c is not None
            self.exits.on_event(book, c, change, ev, outs)
        if ev.fill_id:
            loss_state.check(self, book)
        if state.final:
            self._done[ev.client_order_id] = state
            if len(self._done) > DONE_KEPT:
                self._done.popitem(last=False)

    def on_control(self, book: Portfolio, c: Control, outs: list[Outcome]) -> None:
        """A command from the control stream (kill, reduce, resume): ``control_step``."""
        from dataflows.control_step import carry_out

        carry_out(self, book, c, outs)

    def _invalid(self, item: Received) -> Outcome:
        e, err = item.entry, item.invalid
        if item.market:
            return self.exits.invalid_tick(item, err.reason if err else "invalid", e.fields.get("symbol"))
        sid = (err.signal_id if err else None) or ""
        chain = Chain(e.stream_id, sid, e.clock_ms)
        R.refused(chain, "invalid", err.reason if err else "invalid")
        return self.desk.emit(Outcome(e.stream, e.stream_id, sid, "invalid", chain.events[0].reason,
                                      chain.events, fields=e.fields))

    def _decide(self, book: Portfolio, item: Received, outs: list[Outcome]) -> Outcome:
        """``outs``: where the closes a sell makes on spot go (``sell_on_long: close``)."""
        e, sig = item.entry, item.signal
        assert sig is not None
        desk = self.desk
        prior = desk.ledger.decided(sig.signal_id)
        if prior is not None and prior.outcome == "sent" and self.opens.in_flight:
            # its order may be in flight: settle it first, so this entry's verdict reads
            # the same whatever the batches were
            self.opens.send(book)
            prior = desk.ledger.decided(sig.signal_id)
        if prior is not None and prior.stream_id == e.stream_id:
            return self._resume(book, item, prior)
        lot = self._lots.get(sig.venue, _NONE).get(sig.symbol)
        if lot is None:
            # not asked for a signal nothing will size: a symbol outside the universe is one
            # start-up never listed, and its venue would have to be asked
            lot = self._lot_size(sig.venue, sig.symbol) if self._may_size(item) else 0.0
        if self._funds is None:
            self._funds = VenueFunds(desk.executor.venue_for)
        self._funds.update(book)  # the margin filter reads a venue's own figure where it has one
        v = judge(sig, clock_ms=e.clock_ms, already_decided=prior is not None, book=book,
                  filters=self.p.filters, early=item.early, kelly=self.p.kelly, lot_size=lot,
                  emitted_ms=item.emitted_ms, spot=self.p.venues.spot(sig.venue),
                  min_size=self._mins.get(sig.venue, _NONE).get(sig.symbol, 0.0))
        chain = Chain(e.stream_id, sig.signal_id, e.clock_ms, sig.source, sig.venue, sig.symbol)
        audit_verdict(v, sig, chain, f"{prior.stream_id} as {prior.outcome}" if prior is not None else "")
        out = Outcome(e.stream, e.stream_id, sig.signal_id, v.outcome, v.reason or "", chain.events)
        if v.outcome == "duplicate":
            out.reason = chain.events[0].reason
            return desk.emit(out)
        if v.outcome != "order":
            out.drop = drop_row(v, sig, e.stream_id, e.clock_ms)
            for sid in v.details.get("closes", ()) if v.reason == SPOT_CANNOT_SHORT else ():
                terms = book.open_trades[sid]
                self.exits.close(book, terms, SELL_SIGNAL, book.marks.get(terms.symbol, terms.entry_price),
                                 e.stream_id, e.clock_ms, outs)
            return desk.record(out)
        sz = v.sizing
        assert sz is not None
        tick = self._ticks.get(sig.venue, _NONE).get(sig.symbol, 0.0)
        order = Order(client_order_id(sig.signal_id), sig.signal_id, "open", sig.venue, sig.symbol,
                      sig.side, sz.quantity, sz.price, e.clock_ms,
                      limit_price(sig.side, sz.price, self.p.execute.max_slippage_bps, tick))
        if self.slicer is not None:
            sliced = self.slicer.slice(out, chain, order, sig, lot or 0.0, tick, e.clock_ms)
            if sliced is not None:
                self.slicer.due(book, e.clock_ms, outs)  # its first child is due at once
                return sliced
        R.attempt(chain, order, desk.executor.venue_for(order.venue).name, size_usd=sz.size_usd)
        out.outcome = "sent"
        emitted = item.emitted_ms if item.emitted_ms is not None else sig.emitted_ms  # validation read it
        left_ms = ttl_left_ms(emitted, sig.ttl_seconds, e.clock_ms)  # on the stream's clock, to the wall's
        return self.opens.open(book, out, chain, order, sig, fresh=True, deadline=time.time() + left_ms / 1000)

    def _may_size(self, item: Received) -> bool:
        """Whether judging this signal can size it: not when a filter before the book dropped
        it and no portfolio filter (which sizes) comes before that one."""
        early = item.early
        return early is None or any(f.needs_portfolio for f in self.p.filters[:early.index])

    def _lot_size(self, market: str, symbol: str) -> float | None:
        """Asked of the venue once per instrument. 0 for one it does not trade (or a
        market with no venue): nothing is sized for it (``not_listed``). A remote venue is
        never waited on: until it has answered (asked in a thread of its own) the
        instrument's signals are not sized (None, ``instrument_pending``), and the answer
        is kept for the next."""
        executor = self.desk.executor
        try:
            venue = executor.venue_for(market)
        except Rejected:
            venue = None
        now = getattr(venue, "instrument_now", None)
        if venue is not None and executor.remote(market) and now is not None:
            got = now(market, symbol)  # what it holds already (start-up asked for the universe)
            if got is PENDING_VENUE:
                got = executor.gateway.instrument(venue, market, symbol)
            if got is PENDING:
                log.warning("%s %s: the venue has not said yet in what lots it trades: not sized",
                            market, symbol)
                return None
            instrument = got
        else:
            try:
                instrument = venue.instrument(market, symbol) if venue is not None else None
            except Rejected:
                instrument = None
        lot = instrument.lot_size if instrument is not None else 0.0
        self._mins.setdefault(market, {})[symbol] = instrument.min_size if instrument is not None else 0.0
        if lot <= 0:  # said once: the instrument's later signals are dropped from the cache
            log.warning("%s %s: its venue does not list it: its signals are dropped as not_listed", market, symbol)
        self._lots.setdefault(market, {})[symbol] = lot
        self._ticks.setdefault(market, {})[symbol] = instrument.tick_size if instrument is not None else 0.0
        return lot

    def _resume(self, book: Portfolio, item: Received, prior: Decided) -> Outcome:
        """The same entry again (redelivered after a crash): never decide twice.
        A finished decision went to the outbox with its decision, so there is
        nothing to add: it only needs acknowledging. One that stopped after
        the order may have left is finished through the executor, which asks
        the venue before it would send."""
        e, sig = item.entry, item.signal
        assert sig is not None
        if prior.outcome != "sent":
            return Outcome(e.stream, e.stream_id, sig.signal_id, prior.outcome, prior.reason, resumed=True)
        order = self.desk.ledger.intent(sig.signal_id)
        if order is None:  # written in the same commit as the decision: a damaged ledger
            raise LookupError(f"{sig.signal_id} was sent but the ledger holds no order for it")
        chain = Chain.after_send(e.stream_id, sig.signal_id, order.ts_ms, sig.source, order.venue,
                                 order.symbol)
        out = Outcome(e.stream, e.stream_id, sig.signal_id, prior.outcome, prior.reason, chain.events)
        return self.opens.open(book, out, chain, order, sig)
