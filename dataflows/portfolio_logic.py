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

from bytewax.operators import StatefulBatchLogic

from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import Received
from operators.audit import Outcome
from operators.portfolio import Portfolio


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

    def snapshot(self) -> Portfolio | None:
        return self.book
