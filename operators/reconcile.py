"""Start-up reconciliation: does each venue hold what the book says it holds?

Before trading starts, the book (rebuilt from the ledger) is compared with what the
venue reports. A position may differ only by what the orders caught in the crash
window may have filled; each of them may have filled anywhere from nothing to all of
its quantity (a market order can fill in part), so a difference is explained when it
lies between the sum of their sells and the sum of their buys. Anything else is a
difference the book cannot explain, and trading must not start on a book that is wrong.

Quantities are whole lots, so anything within half a lot is float noise, not a
difference. What the venue holds beyond the book, on the same side, by less than the
instrument's minimum size is dust (what a fee leaves of a coin, leftovers no order could
sell on their own): set aside, not a difference. So are the venue's quote and fee
currencies and the instruments ``venues.<name>.ignore`` lists (``connectors/reconcile.py``). Open orders carrying an Apex client order id the ledger does not know are
reported: something placed them that this book never saw. Other open orders (the
operator's own, another system's) are not Apex's business and are only listed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from operators.orders import Order

Key = tuple[str, str]  # (market, symbol)

POSITION_MISMATCH = "position_mismatch"
UNKNOWN_OPEN_ORDER = "unknown_open_order"
VENUE_UNREACHABLE = "venue_unreachable"
IGNORED_BUT_BOOKED = "ignored_but_booked"  # the ignore list names an instrument a book holds

# operators/orders.py's client_order_id: "ax" and 30 hex digits
_APEX_ID = re.compile(r"ax[0-9a-f]{30}")
# within this fraction of a quantity, two quantities of an instrument with unknown lots agree
_RELATIVE_NOISE = 1e-9


@dataclass(frozen=True, slots=True)
class Difference:
    reason: str
    venue: str  # the name of the connection asked
    market: str = ""
    symbol: str = ""
    book_qty: float = 0.0
    venue_qty: float = 0.0
    in_flight: int = 0  # orders in the crash window on this instrument (they did not explain it)
    client_order_id: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Aside:
    """Something a venue holds that is not a position of any book: said at start, never a
    difference. ``why``: the venue's fee currency, the ignore list, dust."""

    venue: str
    market: str
    symbol: str
    quantity: float
    why: str


@dataclass(frozen=True)
class Report:
    differences: tuple[Difference, ...] = ()
    foreign_orders: tuple[str, ...] = ()  # open orders not Apex's, ignored
    aside: tuple[Aside, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.differences

    def __add__(self, other: Report) -> Report:
        return Report(self.differences + other.differences, self.foreign_orders + other.foreign_orders,
                      self.aside + other.aside)


def is_apex_id(client_order_id: str) -> bool:
    return bool(_APEX_ID.fullmatch(client_order_id))


def signed(order: Order) -> float:
    return order.quantity if order.side == "buy" else -order.quantity


def in_flight_quantities(orders: Iterable[Order]) -> dict[Key, list[float]]:
    out: dict[Key, list[float]] = {}
    for order in orders:
        out.setdefault((order.venue, order.symbol), []).append(signed(order))
    return out


def tolerance(lot_size: float | None, *quantities: float) -> float:
    """Half a lot; with no lot size known, a hair of the quantities themselves."""
    if lot_size and lot_size > 0:
        return lot_size / 2
    return _RELATIVE_NOISE * max([1.0, *(abs(q) for q in quantities)])


def explained(difference: float, in_flight: Sequence[float], tol: float) -> bool:
    """Whether some fill of the in-flight orders, each from none to all of it, is ``difference``."""
    low = sum(q for q in in_flight if q < 0)
    high = sum(q for q in in_flight if q > 0)
    return low - tol <= difference <= high + tol


def is_dust(ours: float, theirs: float, min_size: float | None) -> bool:
    """The venue holds more than the book, on the book's side (or the book holds nothing),
    by less than the smallest order the instrument takes: no order could trade it away on
    its own, and no exit of the book's is short of it. Less at the venue is never dust:
    an exit would then sell what is not there."""
    return bool(min_size) and ours * theirs >= 0 and 0 < abs(theirs) - abs(ours) < min_size  # type: ignore[operator]


def compare_holdings(venue: str, book: Mapping[Key, float], held: Mapping[Key, float],
                     in_flight: Mapping[Key, Sequence[float]] | None = None,
                     lots: Mapping[Key, float] | None = None,
                     min_sizes: Mapping[Key, float] | None = None) -> tuple[list[Difference], list[Aside]]:
    """``compare_positions``, and the dust it set aside (``min_sizes``: each instrument's)."""
    in_flight, lots, min_sizes = in_flight or {}, lots or {}, min_sizes or {}
    out, dust = [], []
    for key in sorted(set(book) | set(held)):
        ours, theirs = book.get(key, 0.0), held.get(key, 0.0)
        pending = in_flight.get(key, ())
        if explained(theirs - ours, pending, tolerance(lots.get(key), ours, theirs)):
            continue
        if is_dust(ours, theirs, min_sizes.get(key)):
            dust.append(Aside(venue, key[0], key[1], theirs - ours,
                              f"dust below the minimum size {_qty(min_sizes[key])}"))
            continue
        out.append(Difference(POSITION_MISMATCH, venue, key[0], key[1], ours, theirs, len(pending)))
    return out, dust


def compare_positions(venue: str, book: Mapping[Key, float], held: Mapping[Key, float],
                      in_flight: Mapping[Key, Sequence[float]] | None = None,
                      lots: Mapping[Key, float] | None = None,
                      min_sizes: Mapping[Key, float] | None = None) -> list[Difference]:
    """``book`` and ``held``: signed quantities of the same markets, the book's and the venue's."""
    return compare_holdings(venue, book, held, in_flight, lots, min_sizes)[0]


def adoptable(d: Difference) -> float:
    """What ``apex reconcile --adopt`` may take into a book of a difference (signed; 0:
    nothing): a holding the book lacks, or more of one it has on the same side, with no
    order of the book's in the crash window on it (the next start settles those first).
    Less at the venue than in the book is never adopted: the book's trades are gone, and
    only the operator can say where."""
    if d.reason != POSITION_MISMATCH or d.in_flight or d.book_qty * d.venue_qty < 0:
        return 0.0
    return d.venue_qty - d.book_qty if abs(d.venue_qty) > abs(d.book_qty) else 0.0


def compare_open_orders(venue: str, open_orders: Iterable[Order], known_ids: Collection[str]) -> Report:
    differences, foreign = [], []
    for order in open_orders:
        cid = order.client_order_id
        if not is_apex_id(cid):
            foreign.append(cid)
        elif cid not in known_ids:
            differences.append(Difference(UNKNOWN_OPEN_ORDER, venue, order.venue, order.symbol,
                                          venue_qty=signed(order), client_order_id=cid))
    return Report(tuple(differences), tuple(foreign))


def unreachable(venue: str, markets: Iterable[str], why: str) -> Difference:
    return Difference(VENUE_UNREACHABLE, venue, ", ".join(markets), detail=why)


def format_report(report: Report) -> list[str]:
    """One sentence per difference for the operator, then what it meant; nothing when all agree."""
    lines = [_sentence(d) for d in report.differences]
    if report.foreign_orders:
        lines.append(f"{len(report.foreign_orders)} open order(s) at the venues are not Apex's "
                     "(their client order ids are not Apex's); they were left alone")
    away = sum(d.reason == VENUE_UNREACHABLE for d in report.differences)
    differ = len(report.differences) - away
    if differ:
        lines.append(f"trading did not start: {differ} difference(s) between the book and the venues; settle "
                     "them (at the venue, or by finding the ledger that placed the orders) and start again")
    elif away:
        lines.append(f"trading did not start: {away} venue(s) could not be asked, so the book could not be "
                     "checked against them; start again once they answer")
    return lines


def format_aside(report: Report) -> list[str]:
    """One line for each holding set aside (the fee coin, ignored, dust), and the foreign
    open orders once nothing differs (else ``format_report`` says them)."""
    lines = [f"ignored: venue {a.venue}, {a.market} {a.symbol}: {_qty(a.quantity)} held, {a.why}; "
             "not a position of any book" for a in report.aside]
    if report.ok and report.foreign_orders:
        lines.append(f"ignored: {len(report.foreign_orders)} open order(s) at the venues are not Apex's "
                     "(their client order ids are not Apex's); they were left alone")
    return lines


def _sentence(d: Difference) -> str:
    if d.reason == POSITION_MISMATCH:
        gap = d.venue_qty - d.book_qty
        pending = (f", and the {d.in_flight} order(s) in the crash window cannot account for it"
                   if d.in_flight else "")
        return (f"{POSITION_MISMATCH}: venue {d.venue}, {d.market} {d.symbol}: the book holds {_qty(d.book_qty)}, "
                f"the venue holds {_qty(d.venue_qty)} ({_qty(abs(gap))} {'more' if gap > 0 else 'less'} "
                f"at the venue{pending})")
    if d.reason == IGNORED_BUT_BOOKED:
        return (f"{IGNORED_BUT_BOOKED}: venue {d.venue}, {d.market} {d.symbol}: venues.{d.market}.ignore lists it, "
                f"but the book holds {_qty(d.book_qty)} of it, which its exits would trade; close the position "
                "first, or take it off the list")
    if d.reason == UNKNOWN_OPEN_ORDER:
        side = "buy" if d.venue_qty > 0 else "sell"
        return (f"{UNKNOWN_OPEN_ORDER}: venue {d.venue}: open order {d.client_order_id} ({side} "
                f"{_qty(abs(d.venue_qty))} {d.symbol} on {d.market}) carries an Apex client order id this "
                "ledger does not know; cancel it at the venue, or run from the ledger that placed it")
    return (f"{VENUE_UNREACHABLE}: venue {d.venue} ({d.market}) could not be asked for its positions and "
            f"open orders: {d.detail}")


def _qty(q: float) -> str:
    return f"{q:.12g}"
