"""Start-up, before the first decision: every venue compared with the books that trade on
it, as their ledgers left them (reconciliation), and the instrument lists of the real
venues cached under the state dir refreshed when a day old (``refresh_instruments``).

Here rather than in each book's recovery because several books may share a venue: what
the venue holds is the sum of theirs. Orders in the crash window (an intent with no
outcome) may explain a difference; the books' recovery settles them once trading starts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from connectors import instruments_cache
from connectors.ledger import Ledger
from connectors.reconcile import format_report, reconcile
from connectors.venues import Venue
from dataflows.apex import make_venues
from dataflows.config import Pipeline
from operators.filters import DEFAULT_UNIVERSE, symbol_universe
from operators.orders import Order


def reconcile_at_start(pipeline: Pipeline, shared: dict[str, Venue]) -> list[str]:
    """What differs, one sentence each, ending with what it means; [] when the venues agree
    with the books. ``shared``: the real venues, built here and kept for the dataflow, so
    it trades on the connections that were checked."""
    positions: dict[tuple[str, str], float] = defaultdict(float)
    known: set[str] = set()
    in_flight: list[Order] = []
    for book in pipeline.each_book():
        if not book.ledger_path.exists():
            continue
        ledger = Ledger(book.ledger_path)
        try:
            for fill in ledger.fills():
                positions[(fill.venue, fill.symbol)] += fill.signed_qty
            known |= ledger.client_order_ids()
            in_flight += [order for kind in ("open", "close") for order, _, _ in ledger.dangling(kind)]
        finally:
            ledger.close()
    venues = make_venues(pipeline, shared=shared)
    return format_report(reconcile(venues, dict(positions), known, in_flight))


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
