"""The way out and the way back (``connectors/sender.py``) against the real OKX simulator,
through the real ccxt client: commands go into a ``Gateway``, venue events come out of
its queue. What is checked is what the venue saw (the simulator's order log: orders
taken; its placement count by clOrdId: orders sent, taken or not) against the events the
book would receive. Every wait is on a condition; its deadline only bounds a failure."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter

import pytest

from connectors.sender import CHECK, SUBMIT, Command, Gateway, SenderSettings
from connectors.sims.ibkr import running as ibkr_running
from connectors.sims.okx import SimServer, running
from connectors.venues.ibkr import IbkrVenue
from helpers import until
from ibkr_fixtures import PRICES as IBKR_PRICES
from okx_fixtures import CREDENTIALS, PRICES, ask, free_port, held, logged, okx_venue, raw
from operators.order_fsm import ACCEPTED, DENIED, FILLED, UNKNOWN, VenueEvent, legal
from operators.orders import Order, client_order_id

SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "ADA-USDT", "DOT-USDT"]
FAR = 3600.0  # a TTL nothing here reaches


def _order(sid: str, symbol: str = "BTC-USDT", quantity: float = 0.5) -> Order:
    return Order(client_order_id(sid), sid, "open", "okx", symbol, "buy", quantity, PRICES[symbol], 1)


class Flow:
    """A gateway with one OKX venue registered, and every event it has put out so far."""

    def __init__(self, url: str, *, ask_after_s: float = 10.0, timeout_ms: int = 1000):
        self.venue = okx_venue(url, timeout_ms=timeout_ms)
        self.gateway = Gateway({"okx": SenderSettings(lanes=4, ask_after_s=ask_after_s, retry_s=(0.02, 0.2))})
        self.gateway.register("book-a", "okx", self.venue)
        self.events: list[VenueEvent] = []

    def submit(self, order: Order, ttl: float | None = FAR) -> None:
        deadline = None if ttl is None else time.time() + ttl
        self.gateway.dispatch(Command(SUBMIT, "book-a", order, deadline))

    def of(self, order: Order) -> list[VenueEvent]:
        self.events += self.gateway.drain()
        return [e for e in self.events if e.client_order_id == order.client_order_id]

    def statuses(self, order: Order) -> list[str]:
        return [e.status for e in self.of(order)]

    def ended(self, *orders: Order, status: str = FILLED, timeout: float = 60) -> bool:
        return until(lambda: all(status in self.statuses(o) for o in orders), timeout)

    def close(self) -> None:
        self.gateway.close()


def _legal_path(statuses: list[str]) -> bool:
    """Each event a legal change from the one before, starting from an intent."""
    src = "intent"
    for dst in statuses:
        if dst != src and not legal(src, dst):
            return False
        src = dst
    return True


@pytest.fixture
def sim(tmp_path):
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES, hang_s=5,
                 credentials=CREDENTIALS) as server:
        server.log = tmp_path / "okx-orders.jsonl"
        yield server


def test_commands_in_events_out_accepted_then_filled_across_instruments(sim):
    flow = Flow(sim.url)
    try:
        orders = [_order(f"snd-{i}", SYMBOLS[i % len(SYMBOLS)]) for i in range(12)]
        for o in orders:  # twelve in flight at once, over six instruments and four lanes
            flow.submit(o)
        assert flow.ended(*orders), {o.signal_id: flow.statuses(o) for o in orders}
        for o in orders:
            assert flow.statuses(o) == [ACCEPTED, FILLED]
            done = flow.of(o)[-1]
            assert done.book == "book-a" and done.fill is not None
            assert (done.fill.quantity, done.fill.price) == pytest.approx((held(0.5), ask(o.symbol)))
        assert flow.gateway.live() == 0  # every fate told: nothing left to follow
    finally:
        flow.close()
    taken = [line["clOrdId"] for line in logged(sim.log)]
    assert sorted(taken) == sorted(o.client_order_id for o in orders)
    assert set(sim.placements().values()) == {1}, "an order was sent twice"


def test_a_command_past_its_deadline_is_denied_and_never_sent(sim):
    flow = Flow(sim.url)
    try:
        late, fresh = _order("snd-late"), _order("snd-fresh")
        flow.submit(late, ttl=-1.0)  # its signal's TTL ran out before it could leave
        flow.submit(fresh)
        assert flow.ended(late, status=DENIED) and flow.ended(fresh)
        assert flow.statuses(late) == [DENIED] and "TTL" in flow.of(late)[0].reason
    finally:
        flow.close()
    assert late.client_order_id not in sim.placements()
    assert [line["clOrdId"] for line in logged(sim.log)] == [fresh.client_order_id]


def test_orders_wait_for_a_simulator_not_started_yet_and_go_once_it_is_up(tmp_path, caplog):
    port = free_port()
    flow = Flow(f"http://127.0.0.1:{port}")
    log = tmp_path / "okx-orders.jsonl"
    server = None
    try:
        orders = [_order(f"up-{i}", SYMBOLS[i % 3]) for i in range(6)]
        short = _order("up-short", "SOL-USDT")
        with caplog.at_level(logging.WARNING, logger="apex.sender"):
            for o in orders:
                flow.submit(o)
            deadline = time.time() + 0.5
            flow.gateway.dispatch(Command(SUBMIT, "book-a", short, deadline))
            # the sender found the venue away and holds its orders; the short one's TTL runs out
            assert until(lambda: "went away" in caplog.text, 30), caplog.text
            assert until(lambda: time.time() > deadline, 30)
            server = SimServer(port=port, orders_log=log, prices=PRICES, credentials=CREDENTIALS).start()
            assert flow.ended(*orders), {o.signal_id: flow.statuses(o) for o in orders}
            assert flow.ended(short, status=DENIED)
            assert until(lambda: "is back after" in caplog.text, 30)
        for o in orders:
            assert FILLED in flow.statuses(o) and _legal_path(flow.statuses(o)), flow.statuses(o)
    finally:
        flow.close()
        if server is not None:
            server.stop()
    taken = Counter(line["clOrdId"] for line in logged(log))
    assert taken == Counter(o.client_order_id for o in orders), "an order was taken twice, or one was lost"
    assert short.client_order_id not in server.placements()  # its TTL ran out while OKX was away: never sent


@pytest.mark.parametrize("fault", ["http_5xx", "code_50004", "drop", "hang"])
def test_orders_through_an_outage_are_sent_once_it_ends_and_none_twice(sim, fault):
    """The simulator's placements and lookups fail (``/sim/fault``) for a while: the orders
    wait and go once it answers. ``http_5xx`` takes nothing, so an order may be sent again;
    the others take the order and lose the answer, so it must be asked about, never sent
    again."""
    status, _ = raw(sim.url, "POST", "/sim/fault", {"kind": fault, "times": 4})
    assert status == 200
    flow = Flow(sim.url)
    try:
        orders = [_order(f"out-{fault}-{i}", SYMBOLS[i % 3]) for i in range(6)]
        for o in orders:
            flow.submit(o)
        assert flow.ended(*orders, timeout=120), {o.signal_id: flow.statuses(o) for o in orders}
        for o in orders:
            statuses = flow.statuses(o)
            assert _legal_path(statuses) and statuses.count(FILLED) == 1 and statuses[-1] == FILLED, statuses
            assert flow.of(o)[-1].fill.quantity == pytest.approx(held(0.5))  # type: ignore[union-attr]
    finally:
        flow.close()
    taken = Counter(line["clOrdId"] for line in logged(sim.log))
    assert taken == Counter(o.client_order_id for o in orders), "an order was taken twice, or one was lost"
    if fault != "http_5xx":  # what may have arrived is asked about, never sent again
        assert set(sim.placements().values()) == {1}, sim.placements()


@pytest.mark.parametrize("fault", ["drop", "hang"])
def test_an_order_whose_answer_was_lost_is_found_by_asking_and_never_placed_again(sim, fault):
    """The placement is taken and its answer lost, and so are the venue's first answers when
    asked: the order may or may not be there. It is UNKNOWN, and the in-flight checker
    (``ask_after_s`` small) asks until the venue answers: one placement at the venue."""
    # the batch's answer, the venue's own ask that follows it, and the sender's first ask: an
    # ask that gets no answer is no "not there", and must not send the order again
    sim.arm(fault, times=3)
    flow = Flow(sim.url, ask_after_s=0.2)
    try:
        order = _order(f"lost-{fault}")
        flow.submit(order)
        assert flow.ended(order), flow.statuses(order)
        # the venue says it may or may not have it; the in-flight checker asks until it answers
        assert flow.statuses(order) == [UNKNOWN, FILLED]
        assert flow.of(order)[-1].reason == "found by asking the venue"
        assert flow.of(order)[-1].fill.quantity == pytest.approx(held(0.5))  # type: ignore[union-attr]
    finally:
        flow.close()
    assert sim.placements() == {order.client_order_id: 1}
    assert [line["clOrdId"] for line in logged(sim.log)] == [order.client_order_id]
    assert sim.stats()["requests"].get("GET trade/order", 0) >= 3  # asked by clOrdId until it answered


def test_an_order_whose_fate_is_never_told_is_found_by_the_in_flight_checker(sim):
    """The venue took the order but can learn nothing of its fate (its order lists fail):
    the in-flight checker asks by client order id once ``ask_after_s`` passes without news."""
    sim.arm("http_5xx", times=10**6, paths=("trade/orders-pending", "trade/orders-history"))
    flow = Flow(sim.url, ask_after_s=0.2)
    try:
        order = _order("quiet")
        flow.submit(order)
        assert flow.ended(order), flow.statuses(order)
        assert flow.statuses(order) == [ACCEPTED, FILLED]
        assert flow.of(order)[-1].fill.quantity == pytest.approx(held(0.5))  # type: ignore[union-attr]
    finally:
        flow.close()
        sim.clear_faults()
    assert sim.placements() == {order.client_order_id: 1}


def test_a_check_of_an_order_the_venue_never_had_sends_it_once(sim):
    """A restart's check of an intent a crash left unsent: the venue has no record of it,
    so it is sent, once, however many times it is asked about."""
    flow = Flow(sim.url)
    try:
        order = _order("never-left")
        for _ in range(3):
            flow.gateway.dispatch(Command(CHECK, "book-a", order, time.time() + FAR))
        assert flow.ended(order), flow.statuses(order)
    finally:
        flow.close()
    assert sim.placements() == {order.client_order_id: 1}


def test_close_returns_while_a_request_hangs(tmp_path):
    """A venue that holds its answer far longer than the run may wait: ``close`` does not wait
    for it (the rest is the next start's to ask)."""
    with running(orders_log=tmp_path / "okx-orders.jsonl", prices=PRICES, hang_s=600,
                 credentials=CREDENTIALS) as server:
        server.arm("hang")
        flow = Flow(server.url, timeout_ms=300_000)  # the client would wait five minutes
        order = _order("hung")
        flow.submit(order)
        assert until(lambda: order.client_order_id in server.placements(), 30)  # the request is out
        closer = threading.Thread(target=flow.close, daemon=True)
        closer.start()
        closer.join(60)  # bounds a failure only: a close waiting on the request would take 300 s
        assert not closer.is_alive(), "close() waited for a hanging request"
        assert flow.gateway.closed


def test_an_answer_lost_at_ibkr_is_unknown_then_filled_and_placed_once(tmp_path):
    """The path of a lost answer where the venue says so: IB takes and fills the order and
    the socket drops before any answer. The IBKR venue acknowledges it as unknown and the sender says UNKNOWN; its fill
    comes by asking (the in-flight checker, ``ask_after_s`` small) or from the venue's own
    resync after reconnecting, whichever is first; IB has it once. (That the checker alone
    finds a fate the venue never tells is an OKX test above.)"""
    log = tmp_path / "ibkr-orders.jsonl"
    with ibkr_running(orders_log=log, cash=100_000.0, prices=IBKR_PRICES) as gateway:
        gateway.faults.drop_orders = 1
        venue = IbkrVenue("127.0.0.1", gateway.port, 7, "DU1234567", connect_timeout=2.0, request_timeout=2.0,
                          fill_timeout=2.0, backoff=(0.02, 0.2))
        gw = Gateway({"ibkr": SenderSettings(lanes=2, ask_after_s=0.2, retry_s=(0.02, 0.2))})
        gw.register("", "ibkr", venue)
        order = Order(client_order_id("ib-lost"), "ib-lost", "open", "ibkr", "AAPL", "buy", 10, 100.0, 1)
        events: list[VenueEvent] = []
        try:
            gw.dispatch(Command(SUBMIT, "", order, time.time() + FAR))
            assert until(lambda: events.extend(gw.drain()) or FILLED in [e.status for e in events], 60), events
        finally:
            gw.close()
    statuses = [e.status for e in events]
    assert statuses[0] == UNKNOWN and statuses[-1] == FILLED and _legal_path(statuses), statuses
    assert events[-1].fill is not None and events[-1].fill.quantity == 10
    assert [json.loads(line)["orderRef"] for line in log.read_text().splitlines()] == [order.client_order_id]
