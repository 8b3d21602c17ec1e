"""Start-up reconciliation's questions to the venues: each connection is asked once for
its positions and open orders, and what it says is compared with the book
(``operators/reconcile.py``). A venue that cannot be asked is a difference of its own:
a book that cannot be checked is not known to be right."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from connectors.venues import Venue, VenueDown
from operators.orders import Order
from operators.reconcile import (Key, Report, compare_open_orders, compare_positions, format_report,
                                 in_flight_quantities, unreachable)

__all__ = ["reconcile", "format_report", "Report"]


def reconcile(venues: Mapping[str, Venue], book_positions: Mapping[Key, float], known_ids: Collection[str],
              in_flight: Iterable[Order] = ()) -> Report:
    """``venues``: by market, as the pipeline routes them (several may share one connection).
    ``known_ids``: every client order id the ledger holds; ``in_flight``: its orders with an
    intent and no outcome."""
    in_flight = list(in_flight)
    known = set(known_ids) | {o.client_order_id for o in in_flight}
    pending = in_flight_quantities(in_flight)
    connections: dict[int, tuple[Venue, list[str]]] = {}
    for market, venue in venues.items():
        connections.setdefault(id(venue), (venue, []))[1].append(market)
    report = Report()
    for venue, markets in connections.values():
        report += _one(venue, markets, book_positions, known, pending)
    return report


def _one(venue: Venue, markets: list[str], book: Mapping[Key, float], known: set[str],
         pending: Mapping[Key, list[float]]) -> Report:
    served = set(markets)
    try:
        held = {k: q for k, q in venue.positions().items() if k[0] in served}
        orders = venue.open_orders()
        ours = {k: q for k, q in book.items() if k[0] in served}
        lots = {}
        for market, symbol in set(ours) | set(held):
            instrument = venue.instrument(market, symbol)
            if instrument is not None:
                lots[(market, symbol)] = instrument.lot_size
    except VenueDown as err:
        return Report((unreachable(venue.name, markets, str(err) or type(err).__name__),))
    positions = Report(tuple(compare_positions(venue.name, ours, held, pending, lots)))
    return positions + compare_open_orders(venue.name, orders, known)
