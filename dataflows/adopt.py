"""`apex reconcile --adopt`: the way out of a holding the books cannot explain, other than
emptying the account.

Each holding a venue has beyond what the books explain (``operators.reconcile.adoptable``)
is taken into one book as an opening position: a filled execution of kind ``adopt`` in its
ledger, from which the book is rebuilt at every start like from any fill, with one audit
event (and its executions row) in the same commit, shipped with the next run's.

The book pays for it: it is bought at the venue's current price out of the book's cash,
so the book's NAV does not move when it is adopted and its cash is never counted twice
(the coins were not bought with the book's money, but from now on the book answers for
them inside the NAV it was given). A holding worth more than the book's cash is refused:
raise the book's ``initial_nav_usd`` first. An adopted position carries no exit rules (no
signal gave it a stop or a holding limit): it counts in NAV, concentration and
reconciliation, and changes only through later fills.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from connectors.ledger import Ledger
from connectors.venues import Venue, VenueDown
from dataflows.config import Pipeline
from operators import audit_rows as R
from operators.audit import EXECUTION_CONFIRMED, Chain
from operators.fill import Fill
from operators.reconcile import Difference, Report, adoptable

ADOPTED = "adopted"
WHY = "apex reconcile --adopt"


@dataclass(frozen=True)
class Adoption:
    book: str  # the book's name; "" for the one book of a pipeline without ``books:``
    ledger: Path
    fill: Fill
    held: Difference  # what the venue and the book held when it was planned

    def line(self) -> str:
        book = f"book {self.book}" if self.book else "the book"
        f = self.fill
        return (f"{f.venue} {f.symbol}: {book} takes {f.signed_qty:.12g} at {f.price:.12g} "
                f"({f.quantity * f.price:,.2f} of its cash; the venue holds {self.held.venue_qty:.12g}, "
                f"the books {self.held.book_qty:.12g})")


def plan(pipeline: Pipeline, report: Report, venues: Mapping[str, Venue], book: str | None,
         now_ms: int) -> tuple[list[Adoption], list[str]]:
    """What would be adopted, and why anything adoptable would not be (one line each).
    ``book``: the book named on the command line (``--book``), None if none was."""
    adoptions: list[Adoption] = []
    refused: list[str] = []
    spent: dict[str, float] = {}  # by book: what earlier adoptions of this plan cost
    for d in report.differences:
        qty = adoptable(d)
        if not qty:
            continue
        where = f"{d.market} {d.symbol}"
        chosen = _book(pipeline, d.market, book)
        if isinstance(chosen, str):
            refused.append(f"not adopted: {where}: {chosen}")
            continue
        price = _price(venues.get(d.market), chosen, d.market, d.symbol)
        if isinstance(price, str):
            refused.append(f"not adopted: {where}: {price}")
            continue
        cost = abs(qty) * price
        cash = _cash(chosen) - spent.get(chosen.book, 0.0)
        if cost > cash:
            refused.append(f"not adopted: {where}: it is worth {cost:,.2f} at {price:.12g}, more than the "
                           f"{cash:,.2f} cash {_name(chosen)} has left; raise its initial_nav_usd first")
            continue
        spent[chosen.book] = spent.get(chosen.book, 0.0) + cost
        aid = f"adopt-{d.market}-{d.symbol}-{now_ms}"
        fill = Fill(aid, aid, ADOPTED, d.market, d.symbol, "buy" if qty > 0 else "sell", abs(qty), price, 0.0,
                    now_ms)
        adoptions.append(Adoption(chosen.book, chosen.ledger_path, fill, d))
    return adoptions, refused


def record(adoption: Adoption) -> None:
    """The adopted fill, its audit event and executions row, in one commit of the book's ledger."""
    fill = adoption.fill
    chain = Chain("", fill.signal_id, fill.ts_ms, "", fill.venue, fill.symbol)
    chain.add(EXECUTION_CONFIRMED, ADOPTED, WHY, size_usd=fill.quantity * fill.price, side=fill.side,
              quantity=fill.quantity, price=fill.price, venue_qty=adoption.held.venue_qty,
              book_qty=adoption.held.book_qty, book=adoption.book)
    rows = {"audit_events": [ev.as_row(fill.ts_ms) for ev in chain.events], "filter_drops": [],
            "executions": [R.execution_row(fill, "adopt")], "trades": []}
    ledger = Ledger(adoption.ledger)
    try:
        ledger.record_adoption(fill, rows)
    finally:
        ledger.close()


def _name(book: Pipeline) -> str:
    return f"book {book.book}" if book.book else "the book"


def _book(pipeline: Pipeline, market: str, named: str | None) -> Pipeline | str:
    """The book that adopts a holding of ``market``, or why none may."""
    books = pipeline.each_book()
    if named is not None:
        if not pipeline.books:
            return "this pipeline has one book: leave --book out"
        chosen = next((b for b in books if b.book == named), None)
        if chosen is None:
            return f"no book {named!r} in {pipeline.path} (its books: {', '.join(b.book for b in books)})"
        if not _trades(chosen, market):
            return f"book {named} takes no {market} signals (books.{named}.takes)"
        return chosen
    trading = [b for b in books if _trades(b, market)]
    if len(trading) > 1:
        return (f"books {', '.join(b.book for b in trading)} all trade {market}: name the one that adopts it "
                "with --book NAME")
    if not trading:
        return f"no book takes {market} signals"
    return trading[0]


def _trades(book: Pipeline, market: str) -> bool:
    return book.takes.venue is None or market in book.takes.venue


def _price(venue: Venue | None, book: Pipeline, market: str, symbol: str) -> float | str:
    """The venue's last price, or else the book's last mark of the symbol; why not, if neither."""
    ask = getattr(venue, "price", None)
    if ask is not None:
        try:
            price = ask(market, symbol)
        except VenueDown as err:
            return f"the venue could not be asked its price: {err}"
        if price:
            return price
    state = _ledger_book(book)
    mark = (state or {}).get("marks", {}).get(symbol)
    if mark:
        return float(mark)
    return "no price for it: the venue gives none and the book has never marked it (run with its prices first)"


def _ledger_book(book: Pipeline) -> dict | None:
    if not book.ledger_path.exists():
        return None
    ledger = Ledger(book.ledger_path)
    try:
        return ledger.book()
    finally:
        ledger.close()


def _cash(book: Pipeline) -> float:
    """The book's cash as a start rebuilds it: its NAV at the start less what its fills cost."""
    cash = book.execute.initial_nav_usd
    if book.ledger_path.exists():
        ledger = Ledger(book.ledger_path)
        try:
            for fill in ledger.fills():
                cash -= fill.signed_qty * fill.price + fill.fee_usd
        finally:
            ledger.close()
    return cash
