"""The IBKR venue through the real ib_async client against the loopback gateway: fills
named by IB's ids with IB's commission, refusals, a gateway that is down, a socket that
drops mid-order, fills made while disconnected, and the rule that an order whose outcome
is unknown is asked about, never sent again."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from ib_async import IB, MarketOrder, Stock

from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.sims.ibkr import running
from connectors.venues import CANCELLED, FILLED, PARTIALLY_FILLED, Instrument, Rejected, VenueDown
from connectors.venues.ibkr import IbkrVenue
from operators.fill import Fill
from tests.helpers import APEX, until
from tests.ibkr_fixtures import PRICES as IBKR_PRICES
from tests.ibkr_fixtures import accepted, connect, gateway, order  # noqa: F401  (fixtures)


def test_a_market_order_fills_under_ibs_perm_id_with_ibs_commission(gateway, connect, tmp_path):
    gateway.set_price("AAPL", 123.45)
    venue = connect()
    buy, sell = order("s1", "AAPL", 10), order("s2", "MSFT", 400, "sell")
    fills = venue.place_many([buy, sell])
    log = accepted(tmp_path)
    assert [f.order_id for f in fills] == [str(line["permId"]) for line in log]
    assert [line["orderRef"] for line in log] == [buy.client_order_id, sell.client_order_id]
    aapl, msft = fills
    assert isinstance(aapl, Fill) and isinstance(msft, Fill)
    assert (aapl.signal_id, aapl.side, aapl.quantity, aapl.price, aapl.fee_usd) == ("s1", "buy", 10, 123.45, 1.0)
    assert (msft.side, msft.quantity, msft.price, msft.fee_usd) == ("sell", 400, 300.0, 2.0)  # half a cent a share
    assert venue.positions() == {("ibkr", "AAPL"): 10, ("ibkr", "MSFT"): -400}
    assert venue.balances() == {"USD": pytest.approx(100_000 - 1234.5 + 120_000 - 3.0)}
    assert venue.available_funds() == pytest.approx(100_000 - 1234.5 + 120_000 - 3.0)
    assert venue.instrument("ibkr", "AAPL") == Instrument("ibkr", "AAPL", 1.0, 0.01, 1.0)
    assert venue.instrument("okx", "BTC-USDT") is None
    assert {i.symbol for i in venue.instruments()} == {"AAPL", "MSFT"}
    assert venue.lookup(buy) == aapl


def test_orders_ib_refuses_are_rejected_and_never_reach_its_book(gateway, connect, tmp_path):
    gateway.faults.reject.add("TSLA")
    venue = connect()
    refused, unknown, too_big, fractional = venue.place_many(
        [order("r1", "TSLA"), order("r2", "NOPE"), order("r3", "AAPL", 5_000), order("r4", "AAPL", 1.5)])
    assert isinstance(refused, Rejected) and "201" in str(refused)
    assert isinstance(unknown, Rejected) and "NOPE" in str(unknown)
    assert isinstance(too_big, Rejected) and "Insufficient funds" in str(too_big)
    assert isinstance(fractional, Rejected)
    assert accepted(tmp_path) == []
    assert venue.instrument("ibkr", "NOPE") is None
    with pytest.raises(Rejected):  # IB saw it and refused it: a terminal answer, not "never taken"
        venue.lookup(order("r1", "TSLA"))


def test_a_gateway_that_is_down_is_venue_down_and_the_order_is_sent_once_it_is_up(gateway, connect, tmp_path):
    gateway.refuse_connections(True)
    venue = connect()
    executor = Executor(Ledger(tmp_path / "ledger.sqlite"), venue)
    o = order("d1")
    with pytest.raises(VenueDown):
        executor.execute(o)
    with pytest.raises(VenueDown):
        venue.lookup(o)
    gateway.refuse_connections(False)
    fill, sent = executor.execute(o)  # the intent is there: the venue is asked first, then it is sent
    assert sent and fill.quantity == 10
    assert [line["orderRef"] for line in accepted(tmp_path)] == [o.client_order_id]
    assert executor.execute(o) == (fill, False)


def test_a_socket_dropped_mid_order_is_reconnected_and_the_fill_recorded_once(gateway, connect, tmp_path):
    venue = connect()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    executor = Executor(ledger, venue)
    gateway.faults.drop_orders = 1  # filled at IB, then the socket drops before any answer
    o = order("m1")
    fill, sent = executor.execute(o)
    assert sent and (fill.quantity, fill.price, fill.fee_usd) == (10, 100.0, 1.0)
    assert fill.order_id == str(accepted(tmp_path)[0]["permId"])
    assert [f.client_order_id for f in ledger.fills()] == [o.client_order_id]
    assert executor.execute(o) == (fill, False)
    assert len(accepted(tmp_path)) == 1
    assert until(lambda: gateway.connected_clients() == 1, 10)


def test_orders_ib_never_answered_before_the_socket_dropped_are_unknown_not_accepted(gateway, connect, tmp_path):
    """An order with no word from IB may never have reached it: "accepted" would have it asked
    about forever and never sent (issue 23's bench left such orders live); unknown, it is
    asked, and IB's answer settles it: found filled, or absent and sent by the sender."""
    venue = connect()
    gateway.faults.drop_orders = 1  # the first is filled at IB, then the socket drops
    gateway.faults.refuse_first = 1_000_000  # and stays down: the wait for IB's word ends with it
    first, second = order("d1"), order("d2")
    acks = venue.submit([first, second])
    gateway.faults.refuse_first = 0
    assert [a.client_order_id for a in acks] == [first.client_order_id, second.client_order_id]
    assert not any(a.accepted for a in acks) and all(a.unknown for a in acks), acks
    assert [line["orderRef"] for line in accepted(tmp_path)] == [first.client_order_id]  # not the second
    answers: dict = {}

    def asked() -> bool:  # as the sender asks: "no answer" (VenueDown) is asked again, never "not there"
        try:
            answers["first"], answers["second"] = venue.lookup(first), venue.lookup(second)
        except VenueDown:
            return False
        return True

    assert until(asked, 30)
    assert answers["first"] is not None and answers["first"].quantity == 10
    assert answers["second"] is None


def test_error_103_means_maybe_placed_and_the_order_is_looked_up_not_sent_again(gateway, connect, tmp_path):
    venue = connect()
    gateway.faults.error_103 = 1  # IB took and filled the order, but answered "duplicate order id"
    (fill,) = venue.place_many([order("e1")])
    assert isinstance(fill, Fill) and fill.quantity == 10
    assert len(accepted(tmp_path)) == 1


def test_a_fill_made_while_disconnected_is_found_after_reconnecting(gateway, connect, tmp_path):
    gateway.faults.partial = 0.5
    venue = connect()
    o = order("w1")
    (ack,) = venue.submit([o])
    assert ack.accepted
    seen: list = []
    assert until(lambda: any(u.status == PARTIALLY_FILLED for u in _more(seen, venue)), 10)
    gateway.refuse_connections(True)  # the socket drops and the gateway stays away ...
    assert gateway.fill_open() == 1  # ... while the rest of the order fills
    gateway.refuse_connections(False)
    assert until(lambda: any(u.status == FILLED for u in _more(seen, venue)), 10)
    (filled,) = [u for u in seen if u.status == FILLED]
    assert filled.client_order_id == o.client_order_id
    assert (filled.fill.quantity, filled.fill.fee_usd) == (10, 2.0)  # two executions, a dollar each
    assert venue.lookup(o) == filled.fill
    assert len(accepted(tmp_path)) == 1


def _more(seen: list, venue) -> list:
    seen.extend(venue.updates())
    return seen


def test_a_partial_fill_has_its_remainder_cancelled_and_the_part_returned(gateway, connect, tmp_path):
    gateway.faults.partial = 0.3
    venue = connect(fill_timeout=0.3)
    sent = order("p1", "AAPL", 10)
    (fill,) = venue.place_many([sent])
    assert isinstance(fill, Fill) and fill.quantity == 3
    assert [o.status for o in gateway.orders()] == ["Cancelled"]
    assert venue.open_orders() == []
    assert venue.lookup(sent) == fill


def test_an_order_left_working_is_listed_and_its_updates_say_cancelled_once_it_is(gateway, connect):
    gateway.faults.partial = 0.0  # nothing fills: the order works
    venue = connect()
    o = order("o1")
    venue.submit([o])
    assert until(lambda: [x.client_order_id for x in venue.open_orders()] == [o.client_order_id], 10)
    with pytest.raises(Rejected):  # asked, it is cancelled: it never filled
        venue.lookup(o)
    seen: list = []
    assert until(lambda: any(u.status == CANCELLED for u in _more(seen, venue)), 10)


def test_lookup_of_an_order_ib_never_saw_is_none(connect):
    assert connect().lookup(order("never")) is None


def test_a_restarted_client_and_gateway_find_the_earlier_order(tmp_path):
    state = tmp_path / "gateway.json"
    o = order("r1")
    with running(state_file=state, latency_ms=5, prices=IBKR_PRICES) as gw:
        first = IbkrVenue("127.0.0.1", gw.port, 3, connect_timeout=2.0, request_timeout=2.0)
        try:
            (fill,) = first.place_many([o])
        finally:
            first.close()
    with running(state_file=state, prices=IBKR_PRICES) as gw:
        second = IbkrVenue("127.0.0.1", gw.port, 3, connect_timeout=2.0, request_timeout=2.0)
        try:
            found = second.lookup(o)
            assert second.positions() == {("ibkr", "AAPL"): 10}
        finally:
            second.close()
    assert found is not None
    assert (found.order_id, found.quantity, found.price, found.fee_usd) == (
        fill.order_id, fill.quantity, fill.price, fill.fee_usd)


def test_the_plain_ib_async_client_connects_qualifies_trades_and_sees_its_fill(gateway, tmp_path):
    ib = IB()
    ib.connect("127.0.0.1", gateway.port, clientId=11, timeout=4)
    try:
        assert ib.managedAccounts() == ["DU1234567"]
        (stock,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
        assert stock.conId > 0
        trade = ib.placeOrder(stock, MarketOrder("BUY", 5, orderRef="plain-1"))
        deadline = time.monotonic() + 10
        while not (trade.isDone() and trade.fills and trade.fills[0].commissionReport.execId):
            assert time.monotonic() < deadline, trade
            ib.sleep(0.01)
        assert trade.orderStatus.status == "Filled" and trade.orderStatus.avgFillPrice == 100.0
        assert trade.fills[0].execution.orderRef == "plain-1"
        assert trade.fills[0].commissionReport.commission == 1.0
        assert trade.order.permId == accepted(tmp_path)[0]["permId"]
    finally:
        ib.disconnect()


def test_the_command_has_help_and_a_bad_port_is_one_line_and_exit_2():
    shown = subprocess.run([APEX, "sim", "ibkr", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--orders-log" in shown.stdout
    bad = subprocess.run([APEX, "sim", "ibkr", "--port", "99999"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--port" in bad.stderr


def test_a_batch_larger_than_ib_async_sends_in_a_second_is_waited_for_not_sent_twice(gateway, connect, tmp_path):
    venue = connect(fill_timeout=0.3)  # shorter than the batch takes to leave at 45 requests a second
    orders = [order(f"b{i}", "AAPL", 1) for i in range(60)]
    fills = venue.place_many(orders)
    assert all(isinstance(f, Fill) for f in fills)
    assert sorted(line["orderRef"] for line in accepted(tmp_path)) == sorted(o.client_order_id for o in orders)


def test_an_order_ib_already_holds_is_answered_from_ib_not_placed_again(gateway, connect, tmp_path):
    o = order("h1")
    (first,) = connect(client_id=7).place_many([o])
    (again,) = connect(client_id=8).place_many([o])  # another process, which never asked
    assert isinstance(again, Fill) and again.order_id == first.order_id and again.quantity == 10
    assert len(accepted(tmp_path)) == 1


def test_fill_prices_follow_the_redis_price_stream(redis_server, tmp_path):
    r = redis_server.client()
    r.xadd("argus:prices:stream", {"symbol": "AAPL", "price": "101.5"})
    r.xadd("argus:prices:stream", {"symbol": "BTC-USDT", "price": "90000"})  # not a stock: not defined
    with running(redis_url=redis_server.url) as gw:
        assert until(lambda: gw.price("AAPL") == 101.5, 10)
        r.xadd("argus:prices:stream", {"symbol": "NVDA", "price": "130.25"})
        assert until(lambda: gw.price("NVDA") == 130.25, 10)
        venue = IbkrVenue("127.0.0.1", gw.port, 5, connect_timeout=2.0, request_timeout=2.0)
        try:
            fill, unknown = venue.place_many([order("f1", "NVDA", 2), order("f2", "BTC-USDT", 1)])
        finally:
            venue.close()
    assert isinstance(fill, Fill) and fill.price == 130.25
    assert isinstance(unknown, Rejected)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_until_stopped_and_stops_without_a_traceback(stop, tmp_path):
    proc = subprocess.Popen([APEX, "sim", "ibkr", "--port", "0", "--orders-log", str(tmp_path / "o.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once it listens
        port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=1, timeout=4)
        assert ib.managedAccounts() == ["DU1234567"]
        ib.disconnect()
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "stopped" in out
