"""The functions of the stateless steps, and the item they pass along."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

from connectors.entry import Entry
from dataflows import reload
from operators.decide import EarlyDrop
from operators.filters import Filter
from operators.market import Tick, parse_tick
from operators.limits import Limits
from operators.signal import Invalid, Signal, check_clock, parse_signal

NO_BOOK = "no_book"  # the drop reason of a signal no book takes
IGNORED_ASSET = "ignored_asset"  # the drop reason of a signal for an instrument venues.<name>.ignore lists


@dataclass(slots=True)
class Received:
    entry: Entry
    signal: Signal | None
    invalid: Invalid | None = None
    early: EarlyDrop | None = None
    tick: Tick | None = None
    market: bool = False  # an entry of a market stream (a tick), valid or not
    emitted_ms: int | None = None  # a signal's emit time, as validation read it
    book: str = ""  # the book it is for ("": the one book of a pipeline without ``books:``)
    copies: int = 1  # how many books this entry reached


def validator(market_streams: frozenset[str], limits: Limits) -> Callable[[Entry], Received]:
    """Entries of a market stream are prices or regimes; everything else must be a signal,
    stamped no later than the stream's clock allows."""
    skew = limits.clock_skew_ms

    def validate(entry: Entry) -> Received:
        if reload.RELOADER is not None and reload.RELOADER.waiting:
            reload.at_ingress()  # a SIGHUP's filter settings, before this entry meets a filter
        market = entry.stream in market_streams
        try:
            if market:
                return Received(entry, None, tick=parse_tick(entry.fields, limits), market=True)
            signal = parse_signal(entry.fields.get("payload"))
            return Received(entry, signal, emitted_ms=check_clock(signal, entry.clock_ms, skew))
        except Invalid as err:
            return Received(entry, None, err, market=market)

    return validate


def ignored_assets(ignored: dict[str, frozenset[str]]) -> Callable[[Received], Received]:
    """A signal for an instrument Apex leaves alone (``venues.<name>.ignore``, the venue's
    fee coin) is dropped before any filter: trading it would change a holding that start-up
    never checks, so the book and the venue could part without anyone seeing it."""

    def step(item: Received) -> Received:
        sig = item.signal
        if sig is not None and item.early is None and sig.symbol in ignored.get(sig.venue, ()):
            item.early = EarlyDrop(0, IGNORED_ASSET)
        return item

    return step


def stateless_filter(index: int, f: Filter) -> Callable[[Received], Received]:
    """A map step for one portfolio-free filter: records the first failure only."""

    def step(item: Received) -> Received:
        if item.signal is not None and item.early is None and not f(item.signal, None):  # type: ignore[arg-type]
            item.early = EarlyDrop(index, f.name)
        return item

    return step


def router(books: list) -> Callable[[Received], Iterable[Received]]:
    """Each signal to the first book (in YAML order) that takes it, or, dropped as
    ``no_book``, to the first book, which records the drop; each market entry, valid or
    not, to every book, marked with how many books it reached. ``books``: the pipeline's
    per-book ``Pipeline`` objects (``name``/``takes`` read here)."""
    names = [b.book for b in books]
    first = names[0]

    def route(item: Received) -> Iterable[Received]:
        if item.market:
            n = len(names)
            return [replace(item, book=name, copies=n) for name in names]
        sig = item.signal
        if sig is None:
            item.book = first
            return (item,)
        for b in books:
            if b.takes.admits(sig.venue, sig.source, sig.symbol):
                item.book = b.book
                return (item,)
        item.book, item.early = first, EarlyDrop(0, NO_BOOK)
        return (item,)

    return route


def book_filters(books: list) -> Callable[[Received], Received]:
    """Every book's portfolio-free filters in one step, each signal through its own book's."""
    by_book = {b.book: [(i, f) for i, f in enumerate(b.filters) if not f.needs_portfolio] for b in books}

    def step(item: Received) -> Received:
        sig = item.signal
        if sig is not None and item.early is None:
            for i, f in by_book[item.book]:
                if not f(sig, None):  # type: ignore[arg-type]
                    item.early = EarlyDrop(i, f.name)
                    break
        return item

    return step
