"""Start-up reconciliation, before the first decision: every venue compared with the
books that trade on it, as their ledgers left them.

Here rather than in each book's recovery because several books may share a venue: what
the venue holds is the sum of theirs. Orders in the crash window (an intent with no
outcome) may explain a difference; the books' recovery settles them once trading starts.
"""

from __future__ import annotations

from collections import defaultdict

from connectors.ledger import Ledger
from connectors.reconcile import format_report, reconcile
from connectors.venues import Venue
from dataflows.apex import make_venues
from dataflows.config import Pipeline
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
