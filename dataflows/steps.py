"""The functions of the stateless steps, and the batch logic around the portfolio step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from bytewax.operators import StatefulBatchLogic

from connectors.entry import Entry
from operators.audit import Outcome
from operators.decide import EarlyDrop
from operators.filters import Filter
from operators.market import Tick, parse_tick
from operators.portfolio import Portfolio
from operators.limits import Limits
from operators.signal import Invalid, Signal, check_clock, parse_signal

if TYPE_CHECKING:
    from dataflows.portfolio_step import PortfolioStep


@dataclass(slots=True)
class Received:
    entry: Entry
    signal: Signal | None
    invalid: Invalid | None = None
    early: EarlyDrop | None = None
    tick: Tick | None = None
    market: bool = False  # an entry of a market stream (a tick), valid or not
    emitted_ms: int | None = None  # a signal's emit time, as validation read it


def validator(market_streams: frozenset[str], limits: Limits) -> Callable[[Entry], Received]:
    """Entries of a market stream are prices or regimes; everything else must be a signal,
    stamped no later than the stream's clock allows."""
    skew = limits.clock_skew_ms

    def validate(entry: Entry) -> Received:
        market = entry.stream in market_streams
        try:
            if market:
                return Received(entry, None, tick=parse_tick(entry.fields, limits), market=True)
            signal = parse_signal(entry.fields.get("payload"))
            return Received(entry, signal, emitted_ms=check_clock(signal, entry.clock_ms, skew))
        except Invalid as err:
            return Received(entry, None, err, market=market)

    return validate


def stateless_filter(index: int, f: Filter) -> Callable[[Received], Received]:
    """A map step for one portfolio-free filter: records the first failure only."""

    def step(item: Received) -> Received:
        if item.signal is not None and item.early is None and not f(item.signal, None):  # type: ignore[arg-type]
            item.early = EarlyDrop(index, f.name)
        return item

    return step


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
