"""The functions of the stateless steps, and the item they pass along."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from connectors.entry import Entry
from operators.decide import EarlyDrop
from operators.filters import Filter
from operators.market import Tick, parse_tick
from operators.limits import Limits
from operators.signal import Invalid, Signal, check_clock, parse_signal


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
