"""The Bytewax side of the portfolio step: one ledger transaction per batch."""

from __future__ import annotations

from bytewax.operators import StatefulBatchLogic

from dataflows.portfolio_step import PortfolioStep
from dataflows.steps import Received
from operators.audit import Outcome
from operators.portfolio import Portfolio


class PortfolioLogic(StatefulBatchLogic):
    """The portfolio step per Bytewax batch: one ledger transaction a batch (and one
    commit before its orders leave), so the sink that follows (and acks) only ever
    sees decisions already durable."""

    def __init__(self, step: PortfolioStep, book: Portfolio | None):
        self.step = step
        self.book = book

    def on_batch(self, values: list[Received]) -> tuple[list[Outcome], bool]:
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
            ledger.prune(shipper.shipped_seq if shipper is not None else 0)
        finally:
            ledger.commit()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Portfolio | None:
        return self.book
