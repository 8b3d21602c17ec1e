"""One conformance suite every venue passes, as Hummingbot's connectors share one: the
promises of the venue interface (``connectors/venues/__init__.py``) checked against the
paper venue, OKX through ccxt against ``apex sim okx``, and IBKR through ib_async against
``apex sim ibkr``, by the interface alone.

What "at the venue" means is read from the venue itself (``positions()``) and, for the
simulators, from their own records of what reached them (their order logs): never from
the client's internals.

Where a venue genuinely differs, the case says so and the test checks the difference
rather than skipping it: the paper venue answers at once (its fill is there when
``submit`` returns, with no ACCEPTED before it); OKX keeps a buy's fee in the coin bought,
so a buy's fill (the position it leaves) is the quantity less the fee; the paper venue
trades any symbol of its markets, so the order it refuses is one with no price.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import running as okx_running
from connectors.venues import ACCEPTED, FILLED, PARTIALLY_FILLED, Ack, OrderUpdate, Venue
from connectors.venues.ibkr import IbkrVenue
from connectors.venues.paper import PaperVenue
from helpers import until
from ibkr_fixtures import PRICES as IBKR_PRICES
from okx_fixtures import CREDENTIALS, PRICES, ask, held, okx_venue
from operators.orders import Order, client_order_id

PAPER_FEE_BPS = 5.0
IBKR_PRICE = 123.45


@dataclass
class Case:
    """A venue under test and what it is expected to answer for a plain order."""

    venue: Venue
    good: Callable[[str], Order]  # an order it fills, by signal id
    bad: Callable[[str], Order]  # an order it must refuse
    quantity: Callable[[float], float]  # the fill's quantity for an order of this quantity
    price: float  # the fill price
    fee: float  # the fee in USD of ``good``
    answers_at_once: bool  # the fate is known when submit returns
    sent: Callable[[], list[str]]  # client order ids of every order that reached the venue, in order


def _sent(server) -> list[str]:
    """Every client order id the OKX simulator was sent to place, once per time it came
    (taken or not): what reached the venue, not only what it took."""
    return [cid for cid, n in server.placements().items() for _ in range(n)]


def _logged(path: Path, key: str) -> list[str]:
    return [json.loads(line)[key] for line in path.read_text().splitlines()] if path.exists() else []


def _okx_order(sid: str, symbol: str = "BTC-USDT", price: float = 100.0) -> Order:
    return Order(client_order_id(sid), sid, "open", "okx", symbol, "buy", 0.5, price, 1)


def _ibkr_order(sid: str, symbol: str = "AAPL") -> Order:
    return Order(client_order_id(sid), sid, "open", "ibkr", symbol, "buy", 10, IBKR_PRICE, 1)


@pytest.fixture(params=["paper", "okx", "ibkr"])
def case(request, tmp_path) -> Iterator[Case]:
    if request.param == "paper":
        venue = PaperVenue(tmp_path / "paper.sqlite", fee_bps=PAPER_FEE_BPS)
        yield Case(venue, _okx_order, lambda sid: _okx_order(sid, price=0.0), lambda q: q, 100.0,
                   0.5 * 100.0 * PAPER_FEE_BPS / 10_000, True,
                   lambda: [r[0] for r in venue.db.execute("SELECT client_order_id FROM orders")])
        venue.db.close()
    elif request.param == "okx":
        log = tmp_path / "okx-orders.jsonl"
        with okx_running(orders_log=log, prices=PRICES, credentials=CREDENTIALS) as server:
            venue = okx_venue(server.url)
            # OKX keeps a buy's taker fee (0.1 %) in the coin bought: the account holds, and
            # the fill says, the quantity less the fee; the fee's worth is its USD cost; a
            # market buy pays the ask
            yield Case(venue, _okx_order, lambda sid: _okx_order(sid, "NOPE-USDT"), held, ask("BTC-USDT"),
                       0.5 * 0.001 * ask("BTC-USDT"), False, lambda: _sent(server))
            venue.close()
    else:
        log = tmp_path / "ibkr-orders.jsonl"
        with ibkr_running(orders_log=log, cash=100_000.0, prices=IBKR_PRICES) as gateway:
            gateway.set_price("AAPL", IBKR_PRICE)
            venue = IbkrVenue("127.0.0.1", gateway.port, 7, "DU1234567", connect_timeout=2.0,
                              request_timeout=2.0, fill_timeout=2.0, backoff=(0.02, 0.2))
            # IB's fixed pricing: half a cent a share, at least a dollar
            yield Case(venue, _ibkr_order, lambda sid: _ibkr_order(sid, "NOPE"), lambda q: q, IBKR_PRICE, 1.0,
                       False, lambda: _logged(log, "orderRef"))
            venue.close()


class Heard:
    """Every update a venue tells, by whichever way it tells them: pushed to ``on_update``
    where the venue takes a listener (a sender sets it), and handed over by ``updates()``."""

    def __init__(self, venue: Venue):
        self.venue, self.got, self._lock = venue, [], threading.Lock()
        if hasattr(venue, "on_update"):
            venue.on_update = self._push  # type: ignore[attr-defined]

    def _push(self, u: OrderUpdate) -> None:
        with self._lock:
            self.got.append(u)

    def of(self, cid: str) -> list[OrderUpdate]:
        if not hasattr(self.venue, "on_update") or self.venue.on_update is None:  # type: ignore[attr-defined]
            got = self.venue.updates()
            with self._lock:
                self.got.extend(got)
        with self._lock:
            return [u for u in self.got if u.client_order_id == cid]

    def final(self, cid: str, timeout: float = 30) -> OrderUpdate:
        """The order's FILLED update, waited for (the deadline only bounds a failure)."""
        assert until(lambda: any(u.status == FILLED for u in self.of(cid)), timeout), \
            f"no FILLED update for {cid}: {self.of(cid)}"
        return next(u for u in self.of(cid) if u.status == FILLED)


def test_a_submitted_order_is_acknowledged_and_its_fill_reaches_the_updates(case):
    heard = Heard(case.venue)
    a, b = case.good("conf-a"), case.good("conf-b")
    acks = case.venue.submit([a, b])
    # one Ack an order, in the order submitted, each taken
    assert [(ack.client_order_id, ack.accepted) for ack in acks] == [(a.client_order_id, True),
                                                                      (b.client_order_id, True)]
    assert all(isinstance(ack, Ack) and not ack.unknown and ack.sent for ack in acks)
    if case.answers_at_once:  # the paper venue: the fate is known before submit returns
        assert [u.status for u in heard.of(a.client_order_id)] == [FILLED]
    for order in (a, b):
        done = heard.final(order.client_order_id)
        # the fill is cumulative: the whole order's quantity, its average price and its fee in all
        assert done.fill is not None and done.fill.client_order_id == order.client_order_id
        assert (done.fill.quantity, done.fill.price, done.fill.fee_usd) == pytest.approx(
            (case.quantity(order.quantity), case.price, case.fee))
        assert (done.fill.venue, done.fill.symbol, done.fill.side) == (order.venue, order.symbol, order.side)
        # nothing but progress before the fill, and nothing after it
        statuses = [u.status for u in heard.of(order.client_order_id)]
        assert statuses[-1] == FILLED and set(statuses[:-1]) <= {ACCEPTED, PARTIALLY_FILLED}, statuses
    assert sorted(case.sent()) == sorted([a.client_order_id, b.client_order_id])


def test_lookup_of_a_filled_order_is_its_fill_and_of_one_never_sent_is_none(case):
    heard = Heard(case.venue)
    order = case.good("conf-look")
    case.venue.submit([order])
    done = heard.final(order.client_order_id)
    found = case.venue.lookup(order)
    assert found is not None and done.fill is not None
    assert (found.client_order_id, found.quantity, found.price, found.fee_usd) == pytest.approx(
        (order.client_order_id, done.fill.quantity, done.fill.price, done.fill.fee_usd))
    assert case.venue.lookup(case.good("conf-never")) is None


def test_a_second_submit_of_the_same_client_order_id_never_fills_twice(case):
    heard = Heard(case.venue)
    order = case.good("conf-twice")
    case.venue.submit([order])
    first = heard.final(order.client_order_id).fill
    # the same order again, as a retry after a lost answer would send it: the venue's answer
    # may differ (OKX and IB answer with the order they hold; the paper venue refuses it as a
    # duplicate), but it never fills a second time
    again = case.venue.submit([order])
    assert [a.client_order_id for a in again] == [order.client_order_id]
    if case.answers_at_once:
        assert not again[0].accepted and "duplicate" in again[0].reason
    assert first is not None
    assert until(lambda: case.venue.lookup(order) is not None, 10)
    assert case.venue.lookup(order).quantity == pytest.approx(first.quantity)  # type: ignore[union-attr]
    position = case.venue.positions()[(order.venue, order.symbol)]
    assert position == pytest.approx(case.quantity(order.quantity))
    fills = [u.fill.quantity for u in heard.of(order.client_order_id) if u.fill is not None]
    assert fills and max(fills) == pytest.approx(first.quantity), "a fill beyond the first was told"
    assert case.sent().count(order.client_order_id) == 1, "the order reached the venue twice"


def test_a_refused_order_is_refused_with_a_reason_and_never_reaches_the_venue(case):
    heard = Heard(case.venue)
    bad = case.bad("conf-bad")
    (ack,) = case.venue.submit([bad])
    assert (ack.client_order_id, ack.accepted, ack.unknown) == (bad.client_order_id, False, False)
    assert ack.reason, "a refusal must say why"
    # no fill ever follows a refusal, and the venue holds nothing of it
    assert not [u for u in heard.of(bad.client_order_id) if u.fill is not None]
    assert case.venue.lookup(bad) is None
    assert bad.client_order_id not in case.sent()
    assert case.venue.positions().get((bad.venue, bad.symbol), 0) == 0


def test_cancel_of_a_filled_order_is_harmless(case):
    if not hasattr(case.venue, "cancel"):  # said, never skipped: the interface requires one
        pytest.fail(f"{type(case.venue).__name__} has no cancel()")
    heard = Heard(case.venue)
    order = case.good("conf-cancel")
    case.venue.submit([order])
    done = heard.final(order.client_order_id)
    case.venue.cancel(order)  # type: ignore[attr-defined]
    # a later order's fill as a barrier: updates come oldest first, so whatever the cancel
    # was going to tell about the first order has been told by then (no sleep, no guess)
    case.venue.submit([case.good("conf-barrier")])
    heard.final(case.good("conf-barrier").client_order_id)
    # still filled, with the same fill: a cancel cannot undo a fill, nor may it be told as one
    found = case.venue.lookup(order)
    assert found is not None and done.fill is not None
    assert found.quantity == pytest.approx(done.fill.quantity)
    # the order and the barrier, each once
    assert case.venue.positions()[(order.venue, order.symbol)] == pytest.approx(2 * case.quantity(order.quantity))
    # what the venue tells after the fill may only repeat it (a cumulative fill told twice
    # changes nothing: OKX tells the fill again when asked to cancel); never a cancel, never more
    later = heard.of(order.client_order_id)
    after = later[[u.status for u in later].index(FILLED):]
    assert all(u.status == FILLED and u.fill is not None for u in after), [u.status for u in later]
    assert {(u.fill.quantity, u.fill.price, u.fill.fee_usd) for u in after} == {  # type: ignore[union-attr]
        (done.fill.quantity, done.fill.price, done.fill.fee_usd)}
