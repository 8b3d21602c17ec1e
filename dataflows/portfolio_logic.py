"""The Bytewax side of the portfolio step, and the one owner of a batch's ledger transaction.

``on_batch`` begins it and commits it; nothing in the step begins or commits. Its one
mid-point is the egress: ``Executor.send`` checkpoints (commits the intents, their "sent"
decisions and how they were decided, and goes on in a new transaction) right before
orders leave. The checkpoint stays in the executor rather than in the step's callers
because it is part of the egress's rule, an intent durable before its order leaves, and
every order (opens in a group, closes one at a time, later the kill switch) goes through
that one ``send``: kept there, no caller can send without it.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from bytewax.operators import StatefulBatchLogic

from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import Received
from operators.audit import Outcome
from operators.portfolio import Portfolio


POLL = timedelta(milliseconds=20)  # how soon to look again for the fates of orders a venue works
EOF_WAIT_S = 30.0  # how long a run's end waits for them


class PortfolioLogic(StatefulBatchLogic):
    """The portfolio step per Bytewax batch: one ledger transaction a batch (checkpointed
    by the executor before its orders leave), so the sink that follows (and acks) only
    ever sees decisions already durable. Start-up recovery runs inside the first batch's."""

    def __init__(self, steps: dict[str, PortfolioStep], book: Portfolio | None):
        """``steps``: by book name; Bytewax builds this logic for a key without naming it,
        so the step is the one of the book its first entry is for."""
        self.steps = steps
        self.step: PortfolioStep | None = None
        self.book = book

    def on_batch(self, values: list[Received]) -> tuple[list[Outcome], bool]:
        if self.step is None:
            self.step = self.steps[values[0].book]
        ledger = self.step.ledger
        shipper = self.step.shipper
        ledger.begin()
        ledger.prefetch(v.signal.signal_id for v in values if v.signal is not None)
        out: list[Outcome] = []
        try:
            if self.book is not None:  # fates that came meanwhile, before anything decides on the book
                self.step.opens.settle(self.book, out)
            for item in values:
                self.book = self.step(self.book, item, out)
            if self.book is not None:
                self.step.send_orders(self.book)
                ledger.record_book(self.book.market_state())
            # after the orders have left: the shipper's watermark (its own file) is not on their path
            ledger.prune(shipper.shipped(self.step.p.book) if shipper is not None else 0)
        finally:
            ledger.commit()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """While a venue works orders, look for their fates again soon, entries or not."""
        if self.step is not None and self.step.opens.working:
            return datetime.now(timezone.utc) + POLL
        return None

    def on_notify(self) -> tuple[list[Outcome], bool]:
        return self._settle(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Outcome], bool]:
        """The source ended (a recording, or a graceful stop): wait, within a bound, for the
        fates of orders still working, so the run's summary and trail have them. What has not
        come by then stays accepted in the ledger, and the next start asks the venue."""
        out: list[Outcome] = []
        deadline = time.monotonic() + EOF_WAIT_S
        while self.step is not None and self.step.opens.working and time.monotonic() < deadline:
            out += self._settle()
            if self.step.opens.working:
                time.sleep(POLL.total_seconds())
        return out, StatefulBatchLogic.RETAIN

    def _settle(self) -> list[Outcome]:
        out: list[Outcome] = []
        if self.step is None or self.book is None:
            return out
        ledger = self.step.ledger
        ledger.begin()
        try:
            self.step.opens.settle(self.book, out)
        finally:
            ledger.commit()
        return out

    def snapshot(self) -> Portfolio | None:
        return self.book
