"""The one egress for orders: ledger first, venue second.

Every order (an open, a close, the start-up recovery of one a crash left behind, and
later the kill switch and reconciliation) goes through the ``Executor``: ``prepare``
applies the idempotency rule of ``operators/orders.py`` (looks the client order id up,
writes the intent row before anything is sent; on an intent with no fill, the crash
window between sending and recording, asks the venue what became of it and sends only
if the venue never saw it), and ``send`` is the only place an order reaches a venue,
one commit for a batch's intents before they leave. ``resolve`` answers what became of
an order without ever sending it. The book's trading state (``operators/trading_state.py``)
is checked in ``prepare``, before a new order's intent is written: a refused order leaves
no intent behind, so once the book is ACTIVE again the same order may still go.

A venue across a network (``asynchronous``) is never called from here: its orders
become ``Command``s (``take_commands``), which the book's step emits after its commit
and the order sink hands to the venue's sender (``connectors/sender.py``); their fates
come back as events. The paper venue has no network and knows every fate at once: it
is called in place, and a paper run decides exactly as it always has.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from connectors.ledger import Ledger
from connectors.sender import CANCEL, CHECK, SUBMIT, Command, Gateway
from connectors.venues import Rejected, Venue
from operators.exits import TradeTerms
from operators.orders import ASK_VENUE, DONE, REFUSED, SEND, Order, next_step
from operators.trading_state import ACTIVE, refusal, stricter
from operators.fill import Fill
from operators.signal import VENUES


log = logging.getLogger("apex.execution")


class Working:
    """``prepare``'s answer for an order already at its venue (or maybe): its fate comes as
    an event; the in-flight checker has been asked to find it."""


WORKING = Working()


class TradingRefused(Rejected):
    """A new order the book's trading state does not let out: ``halted`` or ``reducing``."""


class NotCleared(Exception):
    """An order handed to ``send`` that ``prepare`` did not clear: it would bypass the rule."""


class Executor:
    def __init__(self, ledger: Ledger, venues: Venue | Mapping[str, Venue], gateway: Gateway | None = None,
                 book: str = ""):
        """``venues``: one venue for every market, or one by the market an order names.
        ``gateway``: where commands for asynchronous venues go (this process's senders);
        ``book``: the name events for this book's orders come back under."""
        self.ledger = ledger
        if isinstance(venues, Mapping):
            self.venues = dict(venues)
            distinct = {id(v): v for v in self.venues.values()}
            # the usual case, one connection for every market: no grouping on the way out
            whole = len(distinct) == 1 and set(VENUES) <= set(self.venues)
            self._only: Venue | None = next(iter(distinct.values())) if whole else None
        else:
            self.venues, self._only = {}, venues
        self.book = book
        self.gateway = gateway if gateway is not None else Gateway()
        self.has_remote = False  # any venue across a network: its orders leave as commands
        for market in VENUES:
            venue = self._only if self._only is not None else self.venues.get(market)
            if venue is not None and is_remote(venue):
                self.gateway.register(book, market, venue)
                self.has_remote = True
        self._cleared: set[str] = set()  # client order ids ``prepare`` left to send
        self._commands: list[Command] = []  # for the step to emit after its commit
        self.trading = ACTIVE  # the book's trading state, as its ledger holds it

    def venue_for(self, market: str) -> Venue:
        if self._only is not None:
            return self._only
        try:
            return self.venues[market]
        except KeyError:
            raise Rejected(f"no venue for {market}") from None

    def remote(self, market: str) -> bool:
        """Whether the market's venue is across a network (its fates come as events)."""
        try:
            return is_remote(self.venue_for(market))
        except Rejected:
            return False

    def take_commands(self) -> list[Command]:
        out, self._commands = self._commands, []
        return out

    def prepare(self, order: Order, reason: str = "", trade: tuple[TradeTerms, str] | None = None,
                wait: bool = True, held: float = 0.0) -> Fill | Working | None:
        """The fill if this order was already resolved (by the ledger, or by asking the venue
        about an intent a crash left behind); None when it must be sent, its intent now
        recorded. Raises ``Rejected`` for an order the venue refused before. In the dataflow
        (``wait`` False) a remote venue is not asked here: ``WORKING``, and the in-flight
        checker is asked instead (its fate comes as an event). A new order the trading state
        refuses raises ``TradingRefused`` (``held``: the book's position in its instrument);
        one already under way (an intent a crash left) is followed whatever the state."""
        row = self.ledger.execution(order)
        step = next_step(row[0] if row is not None else None, row[5] if row is not None else None)
        if step == SEND:
            why = refusal(self.state(), order, held, reason)
            if why is not None:
                raise TradingRefused(why)
            self.ledger.record_intent(order, reason, trade)
        elif step == REFUSED:
            raise Rejected(row[1] or row[0])  # type: ignore[index]
        elif step == ASK_VENUE and not wait and self.remote(order.venue):
            self.check(order)
            return WORKING
        else:
            known = self._resolved(order, step, row)
            if known is not None:
                return known
        self._cleared.add(order.client_order_id)
        return None

    def state(self) -> str:
        """The trading state in force: the book's own, or the stricter one of a control
        command its reader has read and the book has not carried out yet (a kill read while
        the book's step was held up halts what that step decides next)."""
        return stricter(self.trading, self.gateway.commanded.get(self.book, ACTIVE))

    def check(self, order: Order, deadline: float | None = None) -> None:
        """Ask the in-flight checker about an order (start-up, a redelivery): sent only if
        its venue never had it."""
        self._commands.append(Command(CHECK, self.book, order, deadline))

    def cancel(self, order: Order) -> None:
        self._commands.append(Command(CANCEL, self.book, order))

    def resolve(self, order: Order) -> Fill | None:
        """What became of an order, never sending it: its fill from the ledger, or for an
        intent with no outcome, from the venue (recorded); None if it has none."""
        row = self.ledger.execution(order)
        step = next_step(row[0] if row is not None else None, row[5] if row is not None else None)
        return self._resolved(order, step, row) if step in (DONE, ASK_VENUE) else None

    def _resolved(self, order: Order, step: str, row: tuple | None) -> Fill | None:
        if step == DONE:
            _, order_id, price, fee, filled_ms, quantity = row  # type: ignore[misc]
            return self._fill(order, order_id, price, fee, filled_ms, quantity)
        assert step == ASK_VENUE
        venue = self.venue_for(order.venue)
        try:
            known = venue.lookup(order)
        except Rejected as refused:  # it reached the venue, which refused or cancelled it
            self.ledger.record_rejection(order, str(refused))
            raise
        if known is not None:
            known = as_ours(order, known)
            self.ledger.record_fill(known)
        return known

    def send(self, orders: list[Order], wait: bool = True,
             deadlines: Mapping[str, float] | None = None) -> list[Fill | Rejected | None]:
        """The egress. Orders ``prepare`` cleared. In the dataflow (``wait`` False), to a remote
        venue: a command each, None each (working): they leave through the order sink once
        the batch's transaction has committed, and ``deadlines`` (wall-clock seconds, by
        client order id) says when an open that has not left must no longer go. Otherwise
        (the paper venue, or a caller outside the dataflow that may wait): one commit makes
        all their intents durable (the batch's one mid-point; ``PortfolioLogic.on_batch``
        owns its begin and commit), then they leave together (``place_many``) and their
        fates are recorded."""
        cleared = self._cleared
        for order in orders:
            if order.client_order_id not in cleared:
                raise NotCleared(order.client_order_id)
        for order in orders:
            cleared.discard(order.client_order_id)
        only = self._only
        if only is not None and (wait or not is_remote(only)):  # the usual case: one venue, answering here
            self.ledger.checkpoint()
            results: list[Fill | Rejected | None] = list(only.place_many(orders))
            self._record(orders, range(len(orders)), results)
            return results
        results = [None] * len(orders)
        here: list[int] = []
        for i, order in enumerate(orders):
            try:
                venue = self.venue_for(order.venue)
            except Rejected as err:
                results[i] = err
                continue
            if is_remote(venue) and not wait:
                deadline = deadlines.get(order.client_order_id) if deadlines else None
                self._commands.append(Command(SUBMIT, self.book, order, deadline))
            else:
                here.append(i)
        if not here:
            return results
        self.ledger.checkpoint()
        by_venue: dict[int, tuple[Venue, list[int]]] = {}
        for i in here:
            venue = self.venue_for(orders[i].venue)
            by_venue.setdefault(id(venue), (venue, []))[1].append(i)
        for venue, idx in by_venue.values():
            for i, r in zip(idx, venue.place_many([orders[i] for i in idx]), strict=True):
                results[i] = r
        self._record(orders, here, results)
        return results

    def _record(self, orders: list[Order], idx, results: list[Fill | Rejected | None]) -> None:
        """The fates a venue answered at once, in the ledger."""
        for i in idx:
            order, r = orders[i], results[i]
            if isinstance(r, Rejected):
                self.ledger.record_rejection(order, str(r))
            elif r is not None:
                results[i] = r = as_ours(order, r)
                self.ledger.record_fill(r)

    def execute(self, order: Order, reason: str = "") -> tuple[Fill, bool]:
        """One order now, waited for: the paper venue, or a caller outside the dataflow (a
        remote venue's order is asked about in place, never left to the checker). Returns
        the fill and whether this call sent the order (False: resolved without sending)."""
        known = self.prepare(order, reason)
        if isinstance(known, Fill):
            return known, False
        (result,) = self.send([order])
        if isinstance(result, Rejected):
            raise result
        assert result is not None
        return result, True

    @staticmethod
    def _fill(order: Order, order_id: str, price: float, fee: float, ts: int, quantity: float) -> Fill:
        return Fill(order.signal_id, order.client_order_id, order_id, order.venue, order.symbol,
                    order.side, quantity, price, fee, ts)


def is_remote(venue: Venue) -> bool:
    """A venue across a network: its orders leave through a sender, its fates come as events."""
    return bool(getattr(venue, "asynchronous", False))


def as_ours(order: Order, fill: Fill) -> Fill:
    """The venue's fill under the order's own identity: a venue knows the client order id
    but not always the signal it was for (IB keeps no such field across sessions). Its time
    is its order's, on the run's one clock (the stream's: the wall clock live, the
    recording's in a replay), whichever venue filled it: a venue's own clock is another (IB's
    in whole seconds, before the decision; in a replay, months from the recording's), and
    the audit trail, a trade's holding time and its exit deadline must read on one timeline
    (README, "One clock per run")."""
    if (fill.signal_id == order.signal_id and fill.client_order_id == order.client_order_id
            and fill.ts_ms == order.ts_ms):
        return fill
    return replace(fill, signal_id=order.signal_id, client_order_id=order.client_order_id, venue=order.venue,
                   symbol=order.symbol, side=order.side, ts_ms=order.ts_ms)
