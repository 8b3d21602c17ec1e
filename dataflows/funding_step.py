"""A book's step taking its share of a funding bill (``operators/funding.py``): booked once in
its ledger, in the batch's transaction, with its audit event, then in the book's cash."""

from __future__ import annotations

from collections.abc import Mapping

from connectors.funding import EVERY_S, FundingReader
from connectors.ledger import Ledger
from connectors.sender import Gateway
from connectors.venues import Venue
from dataflows.config import Pipeline
from operators.funding import FUNDING, FundingEvent, as_fill, audit_rows
from operators.portfolio import Portfolio


def on_funding(ledger: Ledger, book: Portfolio, ev: FundingEvent) -> bool:
    """Books the payment; False if this bill was booked already (told twice, or re-read)."""
    fill = as_fill(ev)
    if not ledger.record_funding(fill, FUNDING):
        return False
    book.apply_fill(fill)
    for table, rows in audit_rows(ev, fill).items():
        ledger.rows[table].extend(rows)
    return True


def trades_swaps(pipeline: Pipeline, books: list[Pipeline]) -> bool:
    return any(v is not None and v.kind == "okx" and v.market == "swap"
               for v in (b.venues.okx for b in (pipeline, *books)))


def start_reader(pipeline: Pipeline, books: list[Pipeline], venues: Mapping[str, Venue], gateway: Gateway,
                 every_s: float = EVERY_S) -> FundingReader | None:
    """The funding reader of a pipeline trading swaps (None otherwise): its first look made,
    its shares queued for the books' steps. ``venues``: the real venues shared by the books,
    as they are opened."""
    if not trades_swaps(pipeline, books):
        return None
    return FundingReader(lambda: dict(venues), {b.book: b.ledger_path for b in books}, gateway.events.put,
                         every_s, done=lambda: gateway.closed).start()
