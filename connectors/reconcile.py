"""Start-up reconciliation's questions to the venues: each connection is asked once for
its positions and open orders, and what it says is compared with the book
(``operators/reconcile.py``). A venue that cannot be asked is a difference of its own:
a book that cannot be checked is not known to be right.

Not every holding is a position: the venue's quote currency is its cash and its fee coin
is left out by the venue itself (``holdings``), the instruments ``venues.<name>.ignore``
lists are left alone whatever either side holds, and dust is set aside by the comparison.
Each is said at start (``Report.aside``), none is a difference."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from connectors.venues import Venue, VenueDown
from operators.orders import Order
from operators.reconcile import (IGNORED_BUT_BOOKED, Aside, Difference, Key, Report, compare_holdings,
                                 compare_open_orders, format_aside, format_report, in_flight_quantities, tolerance,
                                 unreachable)

__all__ = ["reconcile", "format_report", "format_aside", "Report"]
IGNORED = "listed in venues.{market}.ignore"


def reconcile(venues: Mapping[str, Venue], book_positions: Mapping[Key, float], known_ids: Collection[str],
              in_flight: Iterable[Order] = (), ignored: Mapping[str, Collection[str]] | None = None) -> Report:
    """``venues``: by market, as the pipeline routes them (several may share one connection).
    ``known_ids``: every client order id the ledger holds; ``in_flight``: its orders with an
    intent and no outcome. ``ignored``: by market, the instruments Apex leaves alone."""
    in_flight = list(in_flight)
    known = set(known_ids) | {o.client_order_id for o in in_flight}
    pending = in_flight_quantities(in_flight)
    connections: dict[int, tuple[Venue, list[str]]] = {}
    for market, venue in venues.items():
        connections.setdefault(id(venue), (venue, []))[1].append(market)
    report = Report()
    for venue, markets in connections.values():
        report += _one(venue, markets, book_positions, known, pending, ignored or {})
    return report


def _one(venue: Venue, markets: list[str], book: Mapping[Key, float], known: set[str],
         pending: Mapping[Key, list[float]], ignored: Mapping[str, Collection[str]]) -> Report:
    served = set(markets)
    try:
        holdings = getattr(venue, "holdings", None)
        everything, aside = holdings() if holdings is not None else (venue.positions(), [])
        held = {k: q for k, q in everything.items() if k[0] in served}
        orders = venue.open_orders()
        ours = {k: q for k, q in book.items() if k[0] in served}
        set_aside = [Aside(venue.name, *a) for a in aside if a[0] in served]
        booked_ignored = []
        for key in sorted(set(held) | set(ours)):
            if key[1] in ignored.get(key[0], ()):
                # left alone: what the venue holds is only said; a book holding it is a contradiction,
                # since its exits would trade what the list says Apex leaves alone
                qty, mine = held.pop(key, 0.0), ours.pop(key, 0.0)
                if qty:
                    set_aside.append(Aside(venue.name, *key, qty, IGNORED.format(market=key[0])))
                if abs(mine) > tolerance(None, mine):
                    booked_ignored.append(Difference(IGNORED_BUT_BOOKED, venue.name, *key, mine, qty))
        lots, min_sizes = {}, {}
        for market, symbol in set(ours) | set(held):
            instrument = venue.instrument(market, symbol)
            if instrument is not None:
                lots[(market, symbol)] = instrument.lot_size
                min_sizes[(market, symbol)] = instrument.min_size
    except VenueDown as err:
        return Report((unreachable(venue.name, markets, str(err) or type(err).__name__),))
    differences, dust = compare_holdings(venue.name, ours, held, pending, lots, min_sizes)
    positions = Report(tuple(booked_ignored + differences), aside=tuple(set_aside + dust))
    return positions + compare_open_orders(venue.name, orders, known)
