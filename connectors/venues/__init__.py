"""The venue interface every venue implements (the paper venue now; OKX and IBKR later)
and the data it answers in.

An order is submitted and its fate learnt later: accepted, partially filled, filled,
rejected or cancelled. A venue that knows the fate at once (the paper venue) answers
``place_many`` with it directly, which is what the engine uses; ``submit`` and
``updates`` are the same conversation for venues that answer later. Instrument rules
(lot size, tick size, minimum size) are data a venue lists, never a branch on its name.

Two failures are kept apart: ``VenueDown`` (retry later: the stream entry stays
pending) and ``Rejected`` (the venue said no: a terminal outcome)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from operators.orders import Order
from operators.fill import Fill


class VenueDown(Exception):
    pass


class Rejected(Exception):
    pass


# the fate of an order, as a venue reports it
ACCEPTED = "accepted"
PARTIALLY_FILLED = "partially_filled"
FILLED = "filled"
REJECTED = "rejected"
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Instrument:
    """What a venue trades and in what steps. ``venue`` is the market a signal names
    (okx, ibkr): one connection may serve several, as the paper venue does."""

    venue: str
    symbol: str
    lot_size: float  # quantities are whole multiples of it
    tick_size: float  # prices are whole multiples of it
    min_size: float  # the smallest quantity it takes


@dataclass(frozen=True, slots=True)
class Ack:
    """The venue's receipt of a submitted order: taken to work on, or refused outright.
    ``unknown``: it may or may not have reached the venue (a timeout, a dropped connection):
    it is asked about later, never sent again. ``sent`` False: it did not leave (the
    connection was down before it could): the sender may hand it over again later."""

    client_order_id: str
    accepted: bool
    reason: str = ""
    unknown: bool = False
    sent: bool = True


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """A change in an order's fate. ``fill``: what has filled so far (partial or whole):
    the quantity filled in all, its average price and the fee in all, so the same update
    told twice changes nothing. ``fill_id``: the venue's id of the latest execution in it
    (OKX's tradeId, IB's execId), "" where the venue names none."""

    client_order_id: str
    status: str
    fill: Fill | None = None
    reason: str = ""
    fill_id: str = ""


class Venue(Protocol):
    name: str
    # True: the engine submits and keeps deciding, learning fates from ``updates`` (which must
    # never wait on the network); False: it waits in ``place_many`` (the paper venue)
    asynchronous: bool

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        """Submit and wait for each order's fate: its fill or its refusal, in order."""
        ...

    def submit(self, orders: list[Order]) -> list[Ack]: ...

    def updates(self) -> list[OrderUpdate]:
        """The fates learnt since the last call, oldest first; never waits on the network."""
        ...

    # Set by the engine's sender: when not None, the venue calls it (from a thread of its own)
    # with each update as it learns it, instead of keeping it for ``updates``.
    on_update: Callable[[OrderUpdate], None] | None

    def cancel(self, order: Order) -> bool | None:
        """Asks the venue to cancel what is left of the order; what it comes to arrives as an
        update. ``VenueDown`` when it cannot be asked; False when this connection may not
        cancel it (IB: another client id placed it)."""
        ...

    def lookup(self, order: Order) -> Fill | None:
        """What the venue filled under this order's client order id (asked under its
        instrument, which some venues need); None only if it never took it. Raises
        ``Rejected`` for an order it took and then refused or cancelled with nothing
        filled, and ``VenueDown`` when it cannot be asked: "no answer" is never "not there"."""
        ...

    def open_orders(self) -> list[Order]: ...

    def positions(self) -> dict[tuple[str, str], float]:
        """Signed quantity by (venue, symbol)."""
        ...

    def balances(self) -> dict[str, float]:
        """Amount by currency."""
        ...

    def instruments(self) -> list[Instrument]: ...

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        """The rules of one instrument; None if this venue does not trade it."""
        ...

    # Optional: ``positions`` and, from the same answer, what the account holds that is not a
    # position, (market, symbol, quantity, why) each (OKX's fee coin), for start-up to say.
    # ``free``: only what no open order holds, what a sale may sell.
    # def holdings(self, free: bool = False) -> tuple[dict[tuple[str, str], float], list[tuple[str, str, float, str]]]
    # Optional: an instrument's last price at the venue (None: it gives none), for an adoption.
    # def price(self, venue: str, symbol: str) -> float | None

    # Optional, for a remote venue: ``instrument`` from what it holds already, never the
    # network; ``PENDING`` when it would have to ask (the caller asks off its own path).
    # def instrument_now(self, venue: str, symbol: str) -> Instrument | None | object


# what ``instrument_now`` answers for an instrument a venue would have to ask the network about
PENDING = object()

Venues = Mapping[str, Venue]  # by the market a signal names: several may share one connection
VenueFactory = Callable[[], Venues]  # opened in the worker that sends, not where the flow is built
