"""The IBKR venue as the engine's sender uses it: ``submit`` answers once IB has answered
(or cannot), bounded, and every change of an order's fate is pushed to ``on_update`` as
ib_async's events bring it, named by IB's execId with the fill cumulative. An order whose
outcome is unknown (IB's error 103, a dropped socket) is asked about, never refused nor
sent again. ib_async's own log lines never reach the operator."""

from __future__ import annotations

import json
import logging
import subprocess
import threading

import pytest

from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.sender import Gateway
from operators import order_fsm as fsm
from connectors.venues import ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED, Rejected, VenueDown
from connectors.venues.ibkr import IbkrVenue
from tests.helpers import APEX, until
from tests.ibkr_fixtures import PRICES as IBKR_PRICES
from tests.ibkr_fixtures import accepted, connect, gateway, order  # noqa: F401  (fixtures)


class Heard:
    """What a venue pushed to ``on_update`` (from its own thread)."""

    def __init__(self, venue: IbkrVenue):
        self._lock = threading.Lock()
        self._updates: list = []
        venue.on_update = self._add

    def _add(self, update) -> None:
        with self._lock:
            self._updates.append(update)

    def of(self, cid: str) -> list:
        with self._lock:
            return [u for u in self._updates if u.client_order_id == cid]

    def statuses(self, cid: str) -> list[str]:
        return [u.status for u in self.of(cid)]


def test_a_fill_is_pushed_to_on_update_once_whole_with_ibs_exec_id(gateway, connect):
    venue = connect()
    heard = Heard(venue)
    o = order("u1", "AAPL", 10)
    (ack,) = venue.submit([o])
    assert ack.accepted and not ack.unknown
    cid = o.client_order_id
    assert until(lambda: FILLED in heard.statuses(cid), 10)
    assert heard.statuses(cid) == [FILLED]  # IB's first word was "Filled": told once, its commission in
    filled = heard.of(cid)[-1]
    (execution,) = gateway.executions()
    assert filled.fill_id == execution.exec_id
    assert (filled.fill.quantity, filled.fill.price, filled.fill.fee_usd) == (10, 100.0, 1.0)
    assert venue.updates() == []  # pushed, not kept as well


def test_a_partial_fill_is_told_with_its_quantity_so_far_then_the_final_fill(gateway, connect):
    gateway.faults.partial = 0.3
    venue = connect()
    heard = Heard(venue)
    o = order("pf1", "AAPL", 10)
    cid = o.client_order_id
    (ack,) = venue.submit([o])
    assert ack.accepted
    assert until(lambda: PARTIALLY_FILLED in heard.statuses(cid), 10)
    (partial,) = [u for u in heard.of(cid) if u.status == PARTIALLY_FILLED]
    (first,) = gateway.executions()
    assert (partial.fill.quantity, partial.fill.fee_usd, partial.fill_id) == (3, 1.0, first.exec_id)
    assert gateway.fill_open() == 1  # the market takes the rest
    assert until(lambda: FILLED in heard.statuses(cid), 10)
    assert heard.statuses(cid) == [ACCEPTED, PARTIALLY_FILLED, FILLED]
    final = heard.of(cid)[-1]
    second = gateway.executions()[1]
    # cumulative: the whole quantity and both executions' fees, named by the latest execution
    assert (final.fill.quantity, final.fill.fee_usd, final.fill_id) == (10, 2.0, second.exec_id)


def test_cancel_stops_what_is_left_and_the_cancellation_arrives_as_an_update(gateway, connect):
    gateway.faults.partial = 0.5
    venue = connect()
    heard = Heard(venue)
    o = order("c1", "AAPL", 10)
    cid = o.client_order_id
    venue.submit([o])
    assert until(lambda: PARTIALLY_FILLED in heard.statuses(cid), 10)
    venue.cancel(o)
    assert until(lambda: CANCELLED in heard.statuses(cid), 10)
    cancelled = heard.of(cid)[-1]
    assert cancelled.fill.quantity == 5  # what filled before the cancel stays filled
    assert [x.status for x in gateway.orders()] == ["Cancelled"]


def test_error_103_on_submit_is_an_unknown_outcome_resolved_by_asking_never_a_refusal(gateway, connect, tmp_path):
    venue = connect()
    heard = Heard(venue)
    gateway.faults.error_103 = 1  # IB took and filled the order, but answered only "duplicate order id"
    o = order("e103")
    (ack,) = venue.submit([o])
    assert ack.unknown and ack.sent and not ack.accepted
    assert venue.lookup(o).quantity == 10  # asked: IB holds it, filled
    assert until(lambda: FILLED in heard.statuses(o.client_order_id), 10)  # and told, once known
    assert REJECTED not in heard.statuses(o.client_order_id)
    assert len(accepted(tmp_path)) == 1  # never sent again


def test_the_ledger_never_says_rejected_for_an_order_ib_answered_103_for(gateway, connect, tmp_path):
    """The engine's path: the order's intent in the ledger, its command through a sender, IB's
    103 an UNKNOWN event and then the fill; applied through the state machine as the book's
    step applies them, the ledger ends filled and never passes through rejected."""
    venue = connect()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    executor = Executor(ledger, venue, Gateway(), book="")
    gateway.faults.error_103 = 1
    o = order("e103-ledger")
    assert executor.prepare(o, wait=False) is None
    assert executor.send([o], wait=False) == [None]  # no socket from here: a command
    (cmd,) = executor.take_commands()
    executor.gateway.dispatch(cmd)
    state, seen = fsm.OrderState(o), []
    try:
        while not state.final:
            got = executor.gateway.events.get(timeout=20)
            seen.append(got.status)
            change = fsm.apply(state, got)
            if change.moved:
                ledger.record_change(state, change, got.fill_id, got.reason, 0)
                assert ledger.execution(o)[0] != "rejected"
    finally:
        executor.gateway.close()
    assert state.status == "filled" and ledger.execution(o)[0] == "filled" and REJECTED not in seen
    assert len(accepted(tmp_path)) == 1


def test_a_socket_dropped_during_submit_answers_unknown_for_what_left_and_unsent_for_the_rest(
        gateway, connect, tmp_path):
    # a request timeout far beyond the test's patience: only the drop can end the wait
    venue = connect(request_timeout=120.0)
    venue.instrument("ibkr", "AAPL")  # defined before: the batch is only orders
    gateway.faults.drop_orders = 1  # the first order fills at IB, then the socket drops before any answer
    batch = [order(f"d{i}", "AAPL", 1) for i in range(60)]  # more than ib_async lets out in a second
    acks = venue.submit(batch)
    unknown = {a.client_order_id for a in acks if a.unknown}
    unsent = {a.client_order_id for a in acks if not a.sent}
    assert not any(a.accepted for a in acks)
    assert unknown and unsent and unknown | unsent == {o.client_order_id for o in batch}
    assert unknown.isdisjoint(unsent)
    at_ib = {line["orderRef"] for line in accepted(tmp_path)}
    assert at_ib == {batch[0].client_order_id} and at_ib <= unknown  # nothing IB holds is "not sent"
    assert venue.lookup(batch[0]).quantity == 1
    gateway.refuse_connections(True)  # the gateway stays away: nothing of a new batch can leave
    assert until(lambda: not venue.connected(), 10)
    with pytest.raises(VenueDown):
        venue.submit([order("d-late")])
    assert len(accepted(tmp_path)) == 1


def test_no_ib_async_line_reaches_the_log_and_a_refusal_is_one_line_of_apex(tmp_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(IBKR_PRICES))  # as a user would: it has no prices of its own
    proc = subprocess.Popen([APEX, "sim", "ibkr", "--port", "0", "--drop-orders", "1", "--partial", "0.5",
                             "--reject", "TSLA", "--prices", str(prices)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    venue = None
    try:
        port = int(proc.stdout.readline().split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
        venue = IbkrVenue("127.0.0.1", port, 4, "DU1234567", connect_timeout=2.0, request_timeout=2.0,
                          fill_timeout=0.2, backoff=(0.02, 0.2))
        heard = Heard(venue)
        dropped, partial, refused = order("l1"), order("l2"), order("l3", "TSLA")
        (ack,) = venue.submit([dropped])  # the socket drops under it
        assert ack.unknown
        assert venue.lookup(dropped).quantity == 5  # a half, and the rest cancelled: "Canceled order" at ib_async
        acks = venue.submit([partial, refused, order("l4", "NOPE")])  # Error 201, Error 200 at ib_async
        assert [a.accepted for a in acks] == [True, False, False]
        assert until(lambda: PARTIALLY_FILLED in heard.statuses(partial.client_order_id), 10)
        venue.cancel(partial)
        assert until(lambda: CANCELLED in heard.statuses(partial.client_order_id), 10)
        (fill,) = venue.place_many([order("l5")])  # its remainder cancelled after the fill bound
        assert fill.quantity == 5
    finally:
        if venue is not None:
            venue.close()
        proc.terminate()
        proc.communicate(timeout=30)
        logging.getLogger().removeHandler(handler)
    assert [r.getMessage() for r in records if r.name.startswith("ib_async")] == []
    refusals = [r.getMessage() for r in records if refused.client_order_id in r.getMessage()]
    assert len(refusals) == 1 and "201" in refusals[0]


def test_close_ends_the_socket_and_the_loop_also_while_the_gateway_is_away(gateway, connect):
    up = connect(client_id=21)
    up.close()
    assert until(lambda: gateway.connected_clients() == 0, 10)
    away = connect(client_id=22)
    gateway.refuse_connections(True)  # its link keeps trying, with pauses, until closed
    assert until(lambda: not away.connected(), 10)
    away.close()
    assert {"ibkr-venue-21", "ibkr-venue-22"}.isdisjoint(t.name for t in threading.enumerate())


def test_an_order_twice_in_a_batch_is_placed_once(gateway, connect, tmp_path):
    venue = connect()
    o = order("twice")
    assert [a.accepted for a in venue.submit([o, o])] == [True, True]
    assert len(accepted(tmp_path)) == 1
