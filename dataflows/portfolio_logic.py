"""The Bytewax side of the portfolio step, and the one owner of a batch's ledger transaction.

``on_batch`` begins it and commits it; nothing in the step begins or commits. Its one
mid-point is the egress to the paper venue: ``Executor.send`` checkpoints (commits the
intents, their "sent" decisions and how they were decided, and goes on in a new
transaction) right before paper orders are filled. Orders to remote venues leave only
after the batch's commit, as commands this step emits. The checkpoint stays in the
executor rather than in the step's callers because it is part of the egress's rule, an
intent durable before its order leaves, and every order (opens in a group, closes one
at a time, later the kill switch) goes through that one ``send``: kept there, no caller
can send without it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import time

from bytewax.operators import StatefulBatchLogic

from connectors.heartbeat import PERIOD_S, PROGRESS
from connectors.control import Control
from connectors.sender import Command
from dataflows.funding_step import on_funding
from dataflows import batch_metrics, reload
from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import Received
from operators.audit import Outcome
from operators.funding import FundingEvent
from operators.order_fsm import VenueEvent
from operators.portfolio import Portfolio
from operators.reconciliation_alert import ReconciliationAlert, audit_rows as alert_rows
from operators.slicing import CandleVolume


class PortfolioLogic(StatefulBatchLogic):
    """The portfolio step per Bytewax batch: one ledger transaction a batch (checkpointed
    by the executor before its paper orders leave), so the sinks that follow (the audit
    sink, which acks, and the order sink, which hands orders to remote venues) only ever
    see decisions and intents already durable. Start-up recovery runs inside the first
    batch's. Its items are stream entries and venue events, merged in front of it and
    keyed by book; it never waits on a network."""

    def __init__(self, steps: dict[str, PortfolioStep], book: Portfolio | None):
        """``steps``: by book name; Bytewax builds this logic for a key without naming it,
        so the step is the one of the book its first entry is for."""
        self.steps = steps
        self.step: PortfolioStep | None = None
        self.book = book
        self._stage = ""
        self.metrics: batch_metrics.BatchMetrics | None = None

    def _beat(self) -> None:
        """The book's heartbeat: noted by its own step, so a step stuck mid-batch stops it;
        its state is the book's trading state (ACTIVE, REDUCING, HALTED), so a watcher sees
        a halted book as halted, not merely alive."""
        if self.step is not None:
            self._stage = self._stage or f"book:{self.step.p.book or 'main'}"
            PROGRESS.beat(self._stage, self.step.desk.executor.trading)

    def notify_at(self) -> datetime | None:
        # an idle book is woken twice a heartbeat period to say it is alive
        period = self.step.p.watchdog.heartbeat_s if self.step is not None else PERIOD_S
        at = datetime.now(timezone.utc) + timedelta(seconds=period / 2)
        wake = self.step.slicing_wake() if self.step is not None else None  # a sliced order's next child
        return at if wake is None else min(at, datetime.fromtimestamp(wake, timezone.utc))

    def on_notify(self) -> tuple[list[Outcome | Command], bool]:
        out: list[Outcome | Command] = []
        step = self.step
        wake = step.slicing_wake() if step is not None else None
        if step is not None and self.book is not None and wake is not None and wake <= step.wall():
            step.ledger.begin()  # the children due leave as a batch's orders do: intents first
            try:
                step.wake(self.book, out)  # type: ignore[arg-type]
                step.send_orders(self.book)
            finally:
                step.ledger.commit()
            out += step.desk.executor.take_commands()
        self._beat()
        return out, StatefulBatchLogic.RETAIN

    def on_batch(self, values: list[Received | VenueEvent | Control | ReconciliationAlert | CandleVolume]
                 ) -> tuple[list[Outcome | Command], bool]:
        if self.step is None:
            self.step = self.steps[values[0].book]
            self.metrics = batch_metrics.for_book(self.step.p)
        step = self.step
        reload.at_batch(step.p)  # a SIGHUP's settings, between two batches
        started = time.perf_counter()
        ledger = step.ledger
        shipper = step.shipper
        ledger.begin()
        ledger.prefetch(v.signal.signal_id for v in values if isinstance(v, Received) and v.signal is not None)
        out: list[Outcome | Command] = []
        try:
            for item in values:
                if isinstance(item, VenueEvent):
                    if self.book is None:
                        self.book = step.new_book()
                    step.on_event(self.book, item, out)  # type: ignore[arg-type]
                elif isinstance(item, FundingEvent):  # a swap's funding: a cost of the book's, off the decisions
                    if self.book is None:
                        self.book = step.new_book()
                    on_funding(ledger, self.book, item)
                elif isinstance(item, CandleVolume):  # a venue's volume for slicing (connectors/candle_volume.py)
                    if step.slicer is not None:
                        step.slicer.on_candle(item)
                elif isinstance(item, ReconciliationAlert):  # into the book's audit trail, nothing else
                    ledger.rows["audit_events"] += alert_rows(item, int(time.time() * 1000))
                elif isinstance(item, Control):  # a kill, reduce or resume (dataflows/control_step.py)
                    if self.book is None:
                        self.book = step.new_book()
                    step.on_control(self.book, item, out)
                else:
                    self.book = step(self.book, item, out)  # type: ignore[arg-type]
            if self.book is not None:
                step.send_orders(self.book)
                ledger.record_book(self.book.market_state())
            # after the orders have left: the shipper's watermark (its own file) is not on their path
            ledger.prune(shipper.shipped(step.p.book) if shipper is not None else 0)
        finally:
            ledger.commit()
        # only now, the intents durable: what goes to remote venues leaves through the order sink
        out += step.desk.executor.take_commands()
        self._beat()
        if self.metrics is not None:
            self.metrics.done(out, time.perf_counter() - started, self.book)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Outcome | Command], bool]:
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Portfolio | None:
        return self.book
