"""The way out and back through a real venue: commands to a ``Gateway``, IB's answers as
events, against the IBKR simulator through ib_async, with the socket dropped mid-batch."""

from __future__ import annotations

import queue
from collections import Counter

from connectors.sender import SUBMIT, Command, Gateway, SenderSettings
from operators import order_fsm as fsm
from tests.ibkr_fixtures import accepted, connect, gateway, order  # noqa: F401  (fixtures)


def _finish(gw: Gateway, states: dict[str, fsm.OrderState], bound_s: float = 60.0) -> list[str]:
    """Apply the events as the book's step does until every order is final; what was seen."""
    seen = []
    while not all(s.final for s in states.values()):
        try:
            ev = gw.events.get(timeout=bound_s)
        except queue.Empty:
            raise AssertionError(f"no news within {bound_s} s: {[(c, s.status) for c, s in states.items()]}")
        seen.append(ev.status)
        fsm.apply(states[ev.client_order_id], ev)
    return seen


def test_a_batch_cut_by_a_dropped_socket_is_finished_by_events_and_nothing_goes_twice(gateway, connect, tmp_path):
    """IB takes and fills the first order of a batch, then the socket drops before any answer:
    the taken order's fill is booked from IB's own record once the venue is back (no
    redelivery of anything), the others are asked or sent once, none reaches IB twice."""
    venue = connect()
    gw = Gateway({"ibkr": SenderSettings(lanes=1, ask_after_s=0.5, retry_s=(0.02, 0.2))})
    gw.register("", "ibkr", venue)
    gateway.faults.drop_orders = 1
    orders = [order(f"cut-{i}") for i in range(5)]
    states = {o.client_order_id: fsm.OrderState(o) for o in orders}
    try:
        for o in orders:
            gw.dispatch(Command(SUBMIT, "", o))
        seen = _finish(gw, states)
    finally:
        gw.close()
    assert {s.status for s in states.values()} == {"filled"}
    assert all(s.filled == 10 for s in states.values())
    assert "rejected" not in seen
    sent = Counter(line["orderRef"] for line in accepted(tmp_path))
    assert sent == Counter({o.client_order_id: 1 for o in orders})


def test_an_order_past_its_deadline_is_denied_and_never_reaches_the_venue(gateway, connect, tmp_path):
    venue = connect()
    gw = Gateway()
    gw.register("", "ibkr", venue)
    late, fine = order("late"), order("fine")
    states = {late.client_order_id: fsm.OrderState(late), fine.client_order_id: fsm.OrderState(fine)}
    try:
        gw.dispatch(Command(SUBMIT, "", late, deadline=0.0))  # its signal's TTL ran out long ago
        gw.dispatch(Command(SUBMIT, "", fine))
        _finish(gw, states)
    finally:
        gw.close()
    assert (states[late.client_order_id].status, states[fine.client_order_id].status) == ("denied", "filled")
    assert [line["orderRef"] for line in accepted(tmp_path)] == [fine.client_order_id]
