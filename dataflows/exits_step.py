"""Market entries and the exits they and the clock trigger.

A market entry marks the book once (a redelivery is recognised and skipped), unless
its price is one the book cannot believe; its price may fire hard stops, its regime
regime exits, and the stream clock fires maximum holding. Every close goes to the
venue after the opens decided before it (the venue sees orders in decision order).
"""

from __future__ import annotations

from connectors.venues import Rejected
from dataflows.desk import Desk
from dataflows.opens import Opens
from dataflows.steps import Received
from operators import audit_rows as R
from operators.audit import INVALID_TICK, Chain, Outcome
from operators.exits import HARD_STOP, MAX_HOLDING, TradeTerms
from operators.orders import Order, client_order_id
from operators.portfolio import Portfolio


class Exits:
    def __init__(self, desk: Desk, opens: Opens):
        self.desk = desk
        self.opens = opens

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
            for terms in book.on_price(t.symbol, t.price, e.clock_ms):
                self.close(book, terms, HARD_STOP, t.price, e.stream_id, e.clock_ms, outs)
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
        order = Order(client_order_id(terms.signal_id, "close"), terms.signal_id, "close", terms.venue,
                      terms.symbol, terms.exit_side, terms.quantity, price, clock_ms)
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
            fill, sent = desk.executor.execute(order, reason)
        except Rejected as err:
            R.rejected(chain, str(err))
            out.outcome, out.reason = "rejected", str(err)
            outs.append(desk.emit(out))
            return
        R.confirmed(chain, fill, sent)
        book.apply_fill(fill)
        closed = book.close(terms.signal_id, fill, reason)
        desk.ledger.record_close(closed)
        R.trade_closed(chain, reason, fill, closed, terms, book.tracker.multiplier(), book.nav)
        out.executions.append(R.execution_row(fill, "close"))
        out.trades.append(closed.row())
        outs.append(desk.emit(out))
