"""Start-up, before the first decision: every venue compared with the books that trade on
it, as their ledgers left them (reconciliation), and the instrument lists of the real
venues cached under the state dir refreshed when a day old (``refresh_instruments``).

Here rather than in each book's recovery because several books may share a venue: what
the venue holds is the sum of theirs. Orders in the crash window (an intent with no
outcome) may explain a difference; the books' recovery settles them once trading starts.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors import instruments_cache
from connectors.ledger import Ledger
from connectors.reconcile import Report, format_aside, format_report, reconcile
from connectors.venues import Venue
from dataflows.apex import make_venues
from dataflows.config import Pipeline
from operators.filters import DEFAULT_UNIVERSE, symbol_universe
from operators.fill import Fill
from operators.orders import Order
from operators.signal import VENUES


@dataclass
class Books:
    """What the books' ledgers say, summed over every book: what the venues are compared with."""

    positions: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    known: set[str] = field(default_factory=set)
    in_flight: list[Order] = field(default_factory=list)
    adopted: list[tuple[str, Fill]] = field(default_factory=list)  # (book, fill) by `apex reconcile --adopt`


def read_books(pipeline: Pipeline) -> Books:
    out = Books()
    for book in pipeline.each_book():
        if not book.ledger_path.exists():
            continue
        ledger = Ledger(book.ledger_path)
        try:
            for fill in ledger.fills():
                out.positions[(fill.venue, fill.symbol)] += fill.signed_qty
            out.known |= ledger.client_order_ids()
            out.in_flight += [order for kind in ("open", "close") for order, _, _ in ledger.dangling(kind)]
            out.adopted += [(book.book, fill) for fill in ledger.adopted()]
        finally:
            ledger.close()
    return out


def ignored(pipeline: Pipeline) -> dict[str, frozenset[str]]:
    """By market, the instruments Apex leaves alone (``venues.<name>.ignore``, the fee coin)."""
    return {market: pipeline.venues.ignored(market) for market in VENUES}


def survey(pipeline: Pipeline, shared: dict[str, Venue]) -> tuple[Report, Books]:
    """Every venue compared with the books that trade on it. ``shared``: the real venues,
    built here and kept for the caller (the dataflow trades on the connections checked)."""
    books = read_books(pipeline)
    venues = make_venues(pipeline, shared=shared)
    report = reconcile(venues, dict(books.positions), books.known, books.in_flight, ignored(pipeline))
    return report, books


def reconcile_at_start(pipeline: Pipeline, shared: dict[str, Venue]) -> tuple[list[str], list[str]]:
    """(what differs, one sentence each, ending with what it means: [] when the venues agree
    with the books; what was set aside or adopted, one line each, said on the way in)."""
    report, books = survey(pipeline, shared)
    problems = format_report(report) if not report.ok else []
    return problems, format_aside(report) + [adopted_line(book, fill) for book, fill in books.adopted]


def adopted_line(book: str, fill: Fill) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(fill.ts_ms / 1000))
    return (f"adopted: {f'book {book}, ' if book else ''}{fill.venue} {fill.symbol}: "
            f"{fill.signed_qty:.12g} held since {when} (apex reconcile --adopt, at {fill.price:.12g})")


def refresh_instruments(pipeline: Pipeline, shared: dict[str, Venue], now: float,
                        say: Callable[[str], None]) -> list[str]:
    """The cached instrument list of each market on a real venue (``shared``: those start-up
    opened), fetched again when missing or a day old; the markets refreshed. IB lists no
    universe: it is asked about the IBKR symbols the pipeline's own universes name (and the
    ones cached before), and the list holds those it knows."""
    directory = pipeline.state_dir / "instruments"
    asked = {market: _named(pipeline, market) + instruments_cache.read_symbols(directory, market)
             for market in shared}
    asked = {market: symbols or list(DEFAULT_UNIVERSE.get(market, ())) for market, symbols in asked.items()}
    return instruments_cache.refresh(shared, directory, now, asked=asked, say=say)


def _named(pipeline: Pipeline, market: str) -> list[str]:
    """The symbols every book's ``symbol_universe`` lists for a market, in order."""
    out: dict[str, None] = {}
    for book in pipeline.each_book():
        for f in book.filters:
            if f.fn is symbol_universe:
                out.update(dict.fromkeys(sorted(f.params["universe"].get(market, ()))))
    return list(out)
