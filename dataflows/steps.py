"""The functions each Bytewax step runs: operators for decisions, connectors for I/O.

The portfolio step is where the two meet: the ledger says whether a
signal_id was decided, ``operators.decide.judge`` decides, the executor sends,
and the book takes the fill, all in stream order for one portfolio key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bytewax.operators import StatefulBatchLogic

from connectors.entry import Entry
from connectors.execution import Executor
from connectors.ledger import Decided, Ledger
from connectors.venues import Rejected
from connectors.venues.paper import PaperVenue
from dataflows.config import Pipeline
from operators import audit as A
from operators.audit import Chain, Event, Outcome
from operators.decide import EarlyDrop, judge
from operators.filters import Filter
from operators.orders import Order, client_order_id
from operators.portfolio import Fill, Portfolio
from operators.signal import Invalid, Signal, parse_signal


@dataclass(slots=True)
class Received:
    entry: Entry
    signal: Signal | None
    invalid: Invalid | None = None
    early: EarlyDrop | None = None


def validate(entry: Entry) -> Received:
    try:
        return Received(entry, parse_signal(entry.fields.get("payload")))
    except Invalid as err:
        return Received(entry, None, err)


def stateless_filter(index: int, f: Filter):
    """A map step for one portfolio-free filter: records the first failure only."""

    def step(item: Received) -> Received:
        if item.signal is not None and item.early is None and not f(item.signal, None):  # type: ignore[arg-type]
            item.early = EarlyDrop(index, f.name)
        return item

    return step


class PortfolioStep:
    """Owns the ledger and venue handles; opened lazily in the worker that runs the step."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        self._ledger: Ledger | None = None
        self._executor: Executor | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            sd = Path(self.p.state_dir)
            self._ledger = Ledger(sd / "ledger.sqlite")
            venue = PaperVenue(sd / "paper-venue.sqlite", slippage_bps=self.p.execute.slippage_bps,
                               fee_bps=self.p.execute.fee_bps)
            self._executor = Executor(self._ledger, venue)
        return self._ledger

    @property
    def executor(self) -> Executor:
        self.ledger
        return self._executor  # type: ignore[return-value]

    def new_book(self) -> Portfolio:
        """The book as the ledger left it: every recorded fill applied in order."""
        book = Portfolio(self.p.execute.initial_nav_usd, self.p.kelly)
        for fill in self.ledger.fills():
            book.apply_fill(fill)
        return book

    def __call__(self, book: Portfolio | None, item: Received) -> tuple[Portfolio, Outcome]:
        book = book or self.new_book()
        e = item.entry
        t0 = time.perf_counter_ns()
        try:
            if item.signal is None:
                out = self._invalid(item)
            else:
                out = self._decide(book, item)
        except Exception as err:  # noqa: BLE001 - any failure leaves the entry pending
            sid = item.signal.signal_id if item.signal else ""
            out = Outcome(e.stream, e.stream_id, sid, "error", f"{type(err).__name__}: {err}",
                          terminal=False, fields=e.fields)
        out.received_ns = e.received_ns
        out.deliveries = e.deliveries
        now = time.perf_counter_ns()
        out.step_us = (now - t0) / 1000
        latency = (now - e.received_ns) // 1000
        for ev in out.events:
            ev.latency_us = latency
        return book, out

    def _invalid(self, item: Received) -> Outcome:
        e, err = item.entry, item.invalid
        sid = (err.signal_id if err else None) or ""
        chain = Chain(e.stream_id, sid, e.clock_ms)
        chain.add(A.SIGNAL_RECEIVED, "invalid", err.reason if err else "invalid")
        return Outcome(e.stream, e.stream_id, sid, "invalid", chain.events[0].reason,
                       chain.events, fields=e.fields)

    def _decide(self, book: Portfolio, item: Received) -> Outcome:
        e, sig = item.entry, item.signal
        assert sig is not None
        prior = self.ledger.decided(sig.signal_id)
        if prior is not None and prior.stream_id == e.stream_id:
            return self._resume(book, item, prior)
        v = judge(sig, clock_ms=e.clock_ms, already_decided=prior is not None, book=book,
                  filters=self.p.filters, early=item.early, kelly=self.p.kelly)
        chain = Chain(e.stream_id, sig.signal_id, e.clock_ms, sig.source, sig.venue, sig.symbol)
        out = Outcome(e.stream, e.stream_id, sig.signal_id, v.outcome, v.reason or "", chain.events)
        if v.outcome == "duplicate":
            chain.add(A.SIGNAL_RECEIVED, "duplicate",
                      f"signal_id decided at {prior.stream_id} as {prior.outcome}")  # type: ignore[union-attr]
            out.reason = chain.events[0].reason
            return out
        if v.outcome == "expired":
            chain.add(A.SIGNAL_RECEIVED, "expired", "ttl", age_ms=v.age_ms, ttl_seconds=sig.ttl_seconds)
            return self._record(out, sig)
        chain.add(A.SIGNAL_RECEIVED, "received", age_ms=v.age_ms, version=sig.version,
                  unknown_fields=sig.unknown_fields())
        passed = v.outcome == "order" or v.reason in ("min_size", "no_price")
        chain.add(A.FILTER_CHECK, "passed" if passed else "dropped", "" if passed else v.reason or "",
                  checked=v.checked)
        if not passed:
            out.drop = {"signal_id": sig.signal_id, "stream_id": e.stream_id, "filter": v.reason,
                        "ts_ms": e.clock_ms, "source": sig.source, "venue": sig.venue,
                        "symbol": sig.symbol, "confidence": sig.confidence, "regime": sig.regime}
            return self._record(out, sig)
        sz = v.sizing
        assert sz is not None
        sized = v.outcome == "order"
        chain.add(A.POSITION_SIZING, "sized" if sized else "dropped", "" if sized else v.reason or "",
                  size_usd=sz.size_usd, **sz.factors())
        if not sized:
            return self._record(out, sig)
        order = Order(client_order_id(sig.signal_id), sig.signal_id, "open", sig.venue, sig.symbol,
                      sig.side, sz.quantity, sz.price, e.clock_ms)
        chain.add(A.EXECUTION_ATTEMPT, "sent", size_usd=sz.size_usd, client_order_id=order.client_order_id,
                  venue=self.executor.venue.name, quantity=order.quantity, price=order.price)
        out.outcome = "sent"
        self._record(out, sig)  # the decision is durable before the order can leave
        return self._execute(book, out, chain, order, sig)

    def _execute(self, book: Portfolio, out: Outcome, chain: Chain, order: Order,
                 sig: Signal | None) -> Outcome:
        chain_add = chain.add
        try:
            fill, sent = self.executor.execute(order)
        except Rejected as err:
            chain_add(A.EXECUTION_CONFIRMED, "rejected", str(err))
            out.outcome, out.reason = "rejected", str(err)
            return self._record(out, sig)
        chain_add(A.EXECUTION_CONFIRMED, "filled", ts_ms=fill.ts_ms, size_usd=fill.quantity * fill.price,
                  order_id=fill.order_id, price=fill.price, quantity=fill.quantity,
                  fee_usd=fill.fee_usd, resolved_without_send=not sent)
        if fill.signal_id not in book.open_trades:
            book.apply_fill(fill)
        chain_add(A.TRADE_OPEN, "opened", ts_ms=fill.ts_ms, side=fill.side, entry_price=fill.price,
                  quantity=fill.quantity, nav_after=book.nav)
        out.outcome = "filled"
        out.executions.append(_execution_row(fill, order.kind))
        return self._record(out, sig)

    def _resume(self, book: Portfolio, item: Received, prior: Decided) -> Outcome:
        """The same entry again (redelivered after a crash): never decide twice.
        A finished decision is re-emitted as it was; one that stopped after the
        order may have left is finished through the executor, which asks the
        venue before it would send."""
        e = item.entry
        events = [Event.from_dict(d) for d in prior.events]
        out = Outcome(e.stream, e.stream_id, item.signal.signal_id,  # type: ignore[union-attr]
                      prior.outcome, events[-1].reason if events else "", events)
        if prior.outcome != "sent":
            return out
        attempt = next(ev for ev in events if ev.stage == A.EXECUTION_ATTEMPT)
        d = attempt.details
        order = Order(d["client_order_id"], out.signal_id, "open", attempt.venue, attempt.symbol,
                      item.signal.side, d["quantity"], d["price"], attempt.ts_ms)  # type: ignore[union-attr]
        first = events[0]
        chain = Chain(first.stream_id, first.signal_id, first.ts_ms, first.source, first.venue,
                      first.symbol, events)
        return self._execute(book, out, chain, order, item.signal)

    def _record(self, out: Outcome, sig: Signal | None) -> Outcome:
        self.ledger.record_decision(out.signal_id, out.stream_id, out.outcome, out.reason,
                                    out.events[0].ts_ms, [ev.to_dict() for ev in out.events])
        return out


def _execution_row(fill: Fill, kind: str) -> dict:
    return {"signal_id": fill.signal_id, "client_order_id": fill.client_order_id, "kind": kind,
            "venue": fill.venue, "symbol": fill.symbol, "side": fill.side, "quantity": fill.quantity,
            "price": fill.price, "fee_usd": fill.fee_usd, "order_id": fill.order_id, "ts_ms": fill.ts_ms}


class PortfolioLogic(StatefulBatchLogic):
    """The portfolio step per Bytewax batch: one ledger transaction a batch, so
    the sink that follows (and acks) only ever sees decisions already durable."""

    def __init__(self, step: PortfolioStep, book: Portfolio | None):
        self.step = step
        self.book = book

    def on_batch(self, values: list[Received]) -> tuple[list[Outcome], bool]:
        ledger = self.step.ledger
        ledger.begin()
        out = []
        try:
            for item in values:
                self.book, o = self.step(self.book, item)
                out.append(o)
        finally:
            ledger.commit()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Portfolio | None:
        return self.book
