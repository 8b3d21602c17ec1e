"""Market entries and the exits they and the clock trigger.

A market entry marks the book once (a redelivery is recognised and skipped), unless
its price is one the book cannot believe; its price may fire hard stops, its regime
regime exits, and the stream clock fires maximum holding. Every close goes to the
venue after the opens decided before it (the venue sees orders in decision order).

On a remote venue a close is a command like an open: no exit waits for a fill. The
trade is closing until the close's fate comes back as events (``on_event``); an exit
that fires while the trade's opening order is still working waits for that order's
end and then closes what it filled (an exit never sells what was never bought).

Every close but a kill's is protected (``operators/closes.py``): an IOC limit around the
price that triggered it. One the venue cut at its limit leaves the trade open with the
rest and waits for a newer price: the next market entry for its symbol, or one that came
while it was at the venue, sends the next attempt with that price as its reference.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from connectors.execution import as_ours
from connectors.venues import Rejected
from dataflows.desk import Desk
from dataflows.protect import check_fill, cut_short, protected
from dataflows.opens import Opens
from dataflows.steps import Received
from operators import audit_rows as R
from operators import order_fsm as fsm
from operators.fill import Fill
from operators.audit import INVALID_TICK, Chain, Outcome
from operators.closes import STALE_MS, close_id, close_order, cut, next_attempt, rest_of, retry_reference
from operators.exits import HARD_STOP, MAX_HOLDING, TradeTerms, close_leaves_rest
from operators.orders import Order, client_order_id
from operators.protection import PRICE_PROTECTION, is_protection, venue_price_in
from operators.trading_state import KILL
from operators.portfolio import Portfolio
from operators.spot import DUST_EXIT, stranded


log = logging.getLogger("apex.exits")


@dataclass(slots=True)
class Closing:
    """A close at a remote venue, followed through its events."""

    out: Outcome
    chain: Chain
    terms: TradeTerms
    reason: str
    state: fsm.OrderState
    seen: int = 0  # the market entries for its symbol the book had taken when it was decided


class Exits:
    def __init__(self, desk: Desk, opens: Opens):
        self.desk = desk
        self.opens = opens
        self.closing: dict[str, Closing] = {}  # by the close's client order id
        # exits that fired while the trade's opening order was working: (reason, trigger, clock_ms)
        self.deferred: dict[str, tuple[str, str, int]] = {}
        self.attempts: dict[str, int] = {}  # by signal: the attempt its next (or working) close is
        self.waiting: dict[str, str] = {}  # by signal: the exit of a close cut at its limit
        # by symbol: how many market entries have priced it in this run, the last price, its clock
        self.seen: dict[str, tuple[int, float, int]] = {}
        self.at_venue: set[str] = set()  # signals whose close was last tried at the venue's own price

    def current_id(self, signal_id: str) -> str:
        """The client order id of the trade's close now: on its way, or the next to go."""
        return close_id(signal_id, self.attempts.get(signal_id, 0))

    def resume(self, signal_id: str, attempt: int, status: str, venue_said: str, reason: str) -> None:
        """A trade's close as the last run left it (``Ledger.close_attempts``): an attempt that
        ended with the trade still open was cut (one filled was filled in part)."""
        self.attempts[signal_id] = next_attempt(attempt, status, venue_said)
        if self.attempts[signal_id] != attempt:
            self.waiting[signal_id] = reason

    def due(self, book: Portfolio, trigger: str, clock_ms: int, outs: list[Outcome]) -> None:
        """Trades past their maximum holding on the stream clock."""
        for terms in book.due(clock_ms):
            self.close(book, terms, MAX_HOLDING, book.marks.get(terms.symbol, terms.entry_price),
                       trigger, clock_ms, outs)

    def tick(self, book: Portfolio, item: Received, outs: list[Outcome]) -> None:
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
                outs.append(self.invalid_tick(item, why, t.symbol, price=t.price, mark=mark))
                return
            self.seen[t.symbol] = (self.seen.get(t.symbol, (0, 0.0, 0))[0] + 1, t.price, e.clock_ms)
            for terms in book.on_price(t.symbol, t.price, e.clock_ms):
                self.close(book, terms, HARD_STOP, t.price, e.stream_id, e.clock_ms, outs)
            self.again(book, t.symbol, t.price, e.stream_id, e.clock_ms, outs)
        if t.regime is not None:
            for terms, reason in book.on_regime(t.regime, self.desk.p.exits.on_regime_change_alert):
                if t.symbol is None or terms.symbol == t.symbol:
                    self.close(book, terms, reason, book.marks.get(terms.symbol, terms.entry_price),
                               e.stream_id, e.clock_ms, outs)
        book.market_entry_taken(e.stream, e.stream_id)  # only now: an exit that failed is tried again
        outs.append(Outcome(e.stream, e.stream_id, "", "tick"))

    def invalid_tick(self, item: Received, reason: str, symbol: object, **details: object) -> Outcome:
        """A market entry refused: recorded with its reason, never marking the book."""
        e = item.entry
        shown = symbol if isinstance(symbol, str) and item.invalid is None else ""  # a refused symbol stays out
        chain = Chain(e.stream_id, "", e.clock_ms, symbol=shown)
        R.refused(chain, INVALID_TICK, reason, **details)
        return self.desk.emit(Outcome(e.stream, e.stream_id, "", INVALID_TICK, reason, chain.events,
                                      fields=e.fields))

    def close(self, book: Portfolio, terms: TradeTerms, reason: str, price: float, trigger: str,
              clock_ms: int, outs: list[Outcome]) -> None:
        sid = terms.signal_id
        if self.current_id(sid) in self.closing or sid in self.deferred:
            return  # its close is on its way already
        if self.desk.executor.remote(terms.venue) and self._opening(sid):
            self.deferred[sid] = (reason, trigger, clock_ms)
            return
        min_size = self._spot_min(terms)
        if stranded(terms.quantity, min_size):
            self._dust(book, terms, reason, min_size, trigger, clock_ms, outs)
            return
        self.waiting.pop(sid, None)
        order = close_order(terms, self.attempts.get(sid, 0), reason, price, clock_ms,
                            self.desk.p.execute.max_slippage_bps, self._tick(terms))
        try:
            self.finish_close(book, terms, order, reason, trigger, outs)
        except Exception:
            if reason == MAX_HOLDING:
                book.retry_due(terms)  # due again at the next entry
            raise

    def finish_close(self, book: Portfolio, terms: TradeTerms, order: Order, reason: str,
                     trigger: str, outs: list[Outcome]) -> None:
        """The close sent (or found, after a crash), settled in the book and the ledger."""
        desk = self.desk
        self.opens.send(book)  # the venue sees orders in the order they were decided
        chain = Chain(trigger, terms.signal_id, order.ts_ms, terms.source, terms.venue, terms.symbol)
        R.attempt(chain, order, desk.executor.venue_for(order.venue).name, reason)
        out = Outcome("", "", terms.signal_id, "closed", reason, chain.events)  # no stream entry to ack
        try:
            if desk.executor.remote(order.venue):
                self._send(book, terms, order, reason, chain, out, outs)
                return
            fill, sent = desk.executor.execute(order, reason)
        except Rejected as err:
            if order.limit > 0 and is_protection(str(err)):  # the paper venue's band
                outs.append(protected(desk, out, chain, order, str(err)))
                self._wait(book, terms, order, reason, trigger, outs, venue_said=str(err))
                return
            R.rejected(chain, str(err))
            out.outcome, out.reason = "rejected", str(err)
            outs.append(desk.emit(out))
            return
        self._closed(book, terms, fill, sent, reason, chain, out, outs, order=order)

    def again(self, book: Portfolio, symbol: str, price: float, trigger: str, clock_ms: int,
              outs: list[Outcome]) -> None:
        """The closes cut at their limit in ``symbol`` tried again at ``price``, the market's
        newest (an exit that fires again tries again too, at the price it fires at)."""
        for sid in list(self.waiting):
            terms = book.open_trades.get(sid)
            if terms is None:
                del self.waiting[sid]
            elif terms.symbol == symbol:
                self.close(book, terms, self.waiting[sid], price, trigger, clock_ms, outs)

    def _wait(self, book: Portfolio, terms: TradeTerms, order: Order, reason: str, trigger: str,
              outs: list[Outcome], seen: int | None = None, venue_said: str = "") -> None:
        """A close cut at its limit: the trade waits for the next market entry for its symbol,
        or goes again now if one came while the close was at the venue (``seen``: how many
        had come when it was decided), or, the book's price for it being stale, at the
        venue's price its answer named (``retry_reference``; once in a row: a venue that cuts
        its own price's close too waits for the market). Its own fills are no newer price:
        they mark the book, but the market has said nothing since."""
        sid = terms.signal_id
        self.attempts[sid] = order.attempt + 1
        self.waiting[sid] = reason
        if sid not in book.open_trades:
            return
        now = self.seen.get(terms.symbol)
        if seen is not None and now is not None and now[0] > seen:
            self.at_venue.discard(sid)
            self.close(book, book.open_trades[sid], reason, now[1], trigger, order.ts_ms, outs)
            return
        if sid in self.at_venue:
            self.at_venue.discard(sid)
            return
        venue_price = venue_price_in(venue_said)
        believed = venue_price is not None and book.refuses_reference(terms.symbol, venue_price) is None
        ref = retry_reference((now[2], now[1]) if now is not None else None, order.ts_ms, venue_price,
                              order.price, believed)
        if ref is not None:
            log.warning("%s %s: close of %s tried again at the venue's price %.15g: the book has had no "
                        "price for it in %d s", terms.venue, terms.symbol, sid, ref, STALE_MS // 1000)
            self.at_venue.add(sid)
            self.close(book, book.open_trades[sid], reason, ref, trigger, order.ts_ms, outs)

    def _tick(self, terms: TradeTerms) -> float:
        """The instrument's price grid, as its venue already holds it (no network); 0 if not known."""
        venue = self.desk.executor.venue_for(terms.venue)
        now = getattr(venue, "instrument_now", None)
        if now is None and self.desk.executor.remote(terms.venue):
            return 0.0
        got = now(terms.venue, terms.symbol) if now is not None else venue.instrument(terms.venue, terms.symbol)
        return float(getattr(got, "tick_size", 0.0) or 0.0)

    def _spot_min(self, terms: TradeTerms) -> float:
        """On a spot market, the smallest order its venue takes of the trade's instrument, as the
        venue already holds it (no network); 0 elsewhere, or not known."""
        if self.desk.p.venues.spot(terms.venue) is None:
            return 0.0
        now = getattr(self.desk.executor.venue_for(terms.venue), "instrument_now", None)
        got = now(terms.venue, terms.symbol) if now is not None else None
        return float(getattr(got, "min_size", 0.0) or 0.0)

    def _dust(self, book: Portfolio, terms: TradeTerms, reason: str, min_size: float, trigger: str,
              clock_ms: int, outs: list[Outcome]) -> None:
        """A trade too small for any order to sell (``stranded``): its record closed at the mark,
        nothing sent; the coins stay held, outside any trade, as dust the venue holds too."""
        price = book.marks.get(terms.symbol, terms.entry_price)
        none = Fill(terms.signal_id, "", "", terms.venue, terms.symbol, terms.exit_side, 0.0, price, 0.0, clock_ms)
        closed = book.close(terms.signal_id, none, DUST_EXIT)
        self.desk.ledger.record_close(closed)
        chain = Chain(trigger, terms.signal_id, clock_ms, terms.source, terms.venue, terms.symbol)
        R.trade_closed(chain, DUST_EXIT, none, closed, terms, book.tracker.multiplier(), book.nav)
        log.warning("%s %s: %s exit of %s not sent: %g held is below the venue's minimum order %g; "
                    "its record is closed, the coins stay held as dust", terms.venue, terms.symbol, reason,
                    terms.signal_id, terms.quantity, min_size)
        out = Outcome("", "", terms.signal_id, "closed", DUST_EXIT, chain.events)
        out.trades.append(closed.row())
        outs.append(self.desk.emit(out))

    def _opening(self, signal_id: str) -> bool:
        """Whether the trade's opening order has not reached its end yet."""
        cid = client_order_id(signal_id)
        return cid in self.opens.working or any(f.order.client_order_id == cid for f in self.opens.in_flight)

    def _send(self, book: Portfolio, terms: TradeTerms, order: Order, reason: str, chain: Chain, out: Outcome,
              outs: list[Outcome]) -> None:
        """A close to a remote venue: its intent recorded, its command emitted after the commit."""
        executor = self.desk.executor
        known = executor.prepare(order, reason, wait=False)
        if isinstance(known, Fill):  # it was done before a crash: settled now
            self._closed(book, terms, known, False, reason, chain, out, outs, order=order)
            return
        if known is None:
            executor.send([order], wait=False)
        status = fsm.INTENT if known is None else fsm.UNKNOWN
        self.follow(Closing(out, chain, terms, reason, fsm.OrderState(order, status),
                            self.seen.get(terms.symbol, (0, 0.0, 0))[0]))
        out.queue(self.desk.ledger.rows, time.time_ns() // 1_000_000)  # the attempt, durable with the intent

    def follow(self, c: Closing) -> None:
        """A close at a remote venue, followed through its events from now on (sent now, or
        left live by the last run)."""
        self.closing[c.state.order.client_order_id] = c

    def opened(self, book: Portfolio, signal_id: str, outs: list[Outcome]) -> None:
        """The trade's opening order reached its end: an exit that waited for it goes now."""
        waited = self.deferred.pop(signal_id, None)
        terms = book.open_trades.get(signal_id)
        if waited is None or terms is None:
            return
        reason, trigger, clock_ms = waited
        self.close(book, terms, reason, book.marks.get(terms.symbol, terms.entry_price), trigger, clock_ms, outs)

    def on_event(self, book: Portfolio, c: Closing, change: fsm.Change, ev: fsm.VenueEvent,
                 outs: list[Outcome]) -> None:
        """A venue's event about a close, already applied to its state and recorded."""
        state, order = c.state, c.state.order
        if change.fill is not None:  # what filled leaves the position at once
            book.apply_fill(as_ours(order, change.fill))
        if not state.final:
            if change.fill is not None:
                R.partial(c.chain, as_ours(order, change.fill), state.filled)
            elif change.dst == fsm.ACCEPTED:
                R.accepted(c.chain, self.desk.executor.venue_for(order.venue).name)
            c.out.queue(self.desk.ledger.rows, time.time_ns() // 1_000_000)
            return
        del self.closing[order.client_order_id]
        total = state.booked()
        # an IOC cut at its limit: nothing filled (cancelled, or refused in the venue's own words
        # when asked after it), or part of it (however its end was learnt: the rest was cancelled)
        if order.limit > 0 and total is None and cut(state.status, ev.reason or ""):
            outs.append(protected(self.desk, c.out, c.chain, order, ev.reason))
            self._wait(book, c.terms, order, c.reason, c.chain.stream_id, outs, c.seen, ev.reason or "")
            return
        if order.limit > 0 and total is not None and close_leaves_rest(c.terms, total.quantity):
            self._part(book, c, as_ours(order, total), outs, ev.reason or "")
            return
        if total is None:
            R.rejected(c.chain, ev.reason or state.status)
            c.out.outcome, c.out.reason = "rejected", ev.reason or state.status
            if c.reason == MAX_HOLDING:
                book.retry_due(c.terms)
            outs.append(self.desk.emit(c.out))
            return
        fill = as_ours(order, total)
        if close_leaves_rest(c.terms, fill.quantity):
            log.warning("close of %s filled %g of %g: the rest stays held, outside any trade",
                        c.terms.signal_id, fill.quantity, c.terms.quantity)
        self._closed(book, c.terms, fill, True, c.reason, c.chain, c.out, outs, applied=True, order=order)

    def _part(self, book: Portfolio, c: Closing, fill: Fill, outs: list[Outcome], venue_said: str) -> None:
        """A close filled in part, the rest cancelled at its limit: what filled is booked (the
        book has it already, part by part), the trade stays open with the rest and waits."""
        desk, order, terms = self.desk, c.state.order, c.terms
        R.confirmed(c.chain, fill, True)
        check_fill(desk, c.chain, order, fill)
        c.out.reason = cut_short(desk, c.chain, order, fill.quantity)
        c.out.outcome = PRICE_PROTECTION
        rest = rest_of(terms, fill.quantity)
        book.open_trades[terms.signal_id] = rest
        desk.ledger.record_rest(rest)
        c.out.executions.append(R.execution_row(fill, "close"))
        outs.append(desk.emit(c.out))
        self._wait(book, rest, order, c.reason, c.chain.stream_id, outs, c.seen, venue_said)

    def _closed(self, book: Portfolio, terms: TradeTerms, fill: Fill, sent: bool, reason: str, chain: Chain,
                out: Outcome, outs: list[Outcome], applied: bool = False, order: Order | None = None) -> None:
        """A close's fill settled in the book, the ledger and its chain. ``applied``: the book
        has its position change already (booked part by part as it filled). ``order``: the
        close, whose reference (the mark it was decided at) a fill far from is an alert."""
        desk = self.desk
        R.confirmed(chain, fill, sent)
        if order is not None:
            check_fill(desk, chain, order, fill)
        if not applied:
            book.apply_fill(fill)
        closed = book.close(terms.signal_id, fill, reason)
        desk.ledger.record_close(closed)
        R.trade_closed(chain, reason, fill, closed, terms, book.tracker.multiplier(), book.nav)
        out.executions.append(R.execution_row(fill, "close"))
        out.trades.append(closed.row())
        outs.append(desk.emit(out))
