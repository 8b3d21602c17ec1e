"""OKX's private WebSocket: the simulator serves it as OKX does (login checked, the orders
channel, ping/pong), the venue learns fates from ccxt pro's ``watch_orders`` and reads the
order lists only while the socket is down, and ``close`` ends every thread and socket."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from connectors.sims.okx import Credentials, running
from connectors.sims.okx.ws import sign
from connectors.venues import CANCELLED, FILLED, OrderUpdate
from helpers import until
from okx_fixtures import KEY, PASSPHRASE, PRICES, SECRET, okx_sim, okx_venue, order, raw  # noqa: F401

LISTS = ("GET trade/orders-pending", "GET trade/orders-history", "GET trade/order")


def _lists_read(server) -> int:
    """Requests for the order lists or one order: what the poller asks."""
    return sum(n for what, n in server.stats()["requests"].items() if what in LISTS)


def _filled(told: list[OrderUpdate]) -> set[str]:
    return {u.client_order_id for u in list(told) if u.status == FILLED}


def _socket(url: str, messages: list[str], answers: int) -> list:
    """Sends each message on a fresh private socket; the first ``answers`` answers."""
    async def talk() -> list:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url.replace("http://", "ws://") + "/ws/v5/private") as ws:
                for m in messages:
                    await ws.send_str(m)
                got = []
                while len(got) < answers:
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    got.append(msg.data if msg.data == "pong" else json.loads(msg.data))
                return got
    return asyncio.run(talk())


def _login(key: str, passphrase: str, secret: str, ts: str | None = None) -> str:
    ts = ts or str(int(time.time()))
    return json.dumps({"op": "login", "args": [{"apiKey": key, "passphrase": passphrase, "timestamp": ts,
                                                "sign": sign(secret, ts)}]})


def _without_conn(doc: dict) -> dict:
    assert doc.pop("connId")  # OKX names the connection in every event
    return doc


def test_the_simulator_checks_a_login_as_okx_does():
    with running(prices=PRICES, credentials=Credentials(KEY, SECRET, PASSPHRASE)) as sim:
        subscribe = json.dumps({"op": "subscribe", "args": [{"channel": "orders", "instType": "SPOT"}]})
        assert [_without_conn(a) for a in _socket(sim.url, [_login(KEY, PASSPHRASE, SECRET + "x")], 1)] == [
            {"event": "error", "code": "60007", "msg": "Invalid sign"}]
        assert _without_conn(_socket(sim.url, [_login("other", PASSPHRASE, SECRET)], 1)[0])["code"] == "60005"
        assert _without_conn(_socket(sim.url, [_login(KEY, "other", SECRET)], 1)[0])["code"] == "60024"
        stale = str(int(time.time()) - 60)
        assert _without_conn(_socket(sim.url, [_login(KEY, PASSPHRASE, SECRET, stale)], 1)[0]) == {
            "event": "error", "code": "60006", "msg": "Timestamp request expired"}
        assert _without_conn(_socket(sim.url, [subscribe], 1)[0]) == {
            "event": "error", "code": "60011", "msg": "Please log in"}
        # logged in, then subscribed; a ping is answered
        got = _socket(sim.url, [_login(KEY, PASSPHRASE, SECRET), subscribe, "ping"], 3)
        assert [_without_conn(a) for a in got[:2]] == [
            {"event": "login", "code": "0", "msg": ""},
            {"event": "subscribe", "arg": {"channel": "orders", "instType": "SPOT"}}]
        assert got[2] == "pong"
        assert sim.sockets()["logins"] == {"accepted": 1, "refused": 4}


def test_the_simulator_pushes_each_order_change_with_okx_fields():
    with running(prices=PRICES) as sim:
        async def watch() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(sim.url.replace("http://", "ws://") + "/ws/v5/private") as ws:
                    await ws.send_str(_login("any", "any", "any"))
                    await ws.send_str(json.dumps({"op": "subscribe",
                                                  "args": [{"channel": "orders", "instType": "SPOT"}]}))
                    for _ in range(2):
                        await asyncio.wait_for(ws.receive(), 10)
                    await asyncio.to_thread(raw, sim.url, "POST", "/api/v5/trade/order", {
                        "instId": "ETH-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "2",
                        "tgtCcy": "base_ccy", "clOrdId": "push1"})
                    return [json.loads((await asyncio.wait_for(ws.receive(), 10)).data) for _ in range(2)]

        live, filled = asyncio.run(watch())
    assert live["arg"] == {"channel": "orders", "instType": "SPOT", "uid": "1"}
    (live,), (filled,) = live["data"], filled["data"]
    assert (live["state"], live["accFillSz"], live["fillSz"], live["tradeId"]) == ("live", "0", "0", "")
    assert (filled["state"], filled["accFillSz"], filled["avgPx"], filled["fillSz"], filled["fillPx"]) == (
        "filled", "2", "50.005", "2", "50.005")  # at the ask, 1 bp above the last price
    assert (filled["tradeId"], filled["fee"], filled["feeCcy"], filled["clOrdId"]) == ("1", "-0.002", "ETH", "push1")
    for field in ("ordId", "uTime", "cTime", "instId", "side", "ordType", "sz", "fillTime", "execType"):
        assert filled[field] != "" and field in live


def test_fates_come_through_watch_orders_and_the_lists_are_not_read(okx_sim):
    venue = okx_sim.venue
    venue.listen()
    assert until(lambda: venue.streaming, 10)
    told: list[OrderUpdate] = []
    venue.on_update = told.append
    orders = [order("ws1"), order("ws2", symbol="ETH-USDT", quantity=2), order("ws3", side="sell", quantity=1e9)]
    acks = venue.submit(orders)
    assert [a.accepted for a in acks] == [True, True, False]
    assert until(lambda: _filled(told) == {o.client_order_id for o in orders[:2]}, 10)
    assert _lists_read(okx_sim.server) == 0  # every fate was pushed
    trades = {f["clOrdId"]: f["tradeId"] for f in okx_sim.server.sim.book.fills_of()}
    for u in told:
        if u.status == FILLED:
            assert u.fill_id == trades[u.client_order_id] and u.fill.price in (100.01, 50.005)
    assert venue.updates() == []  # handed to on_update, none kept


def test_a_dropped_socket_falls_back_to_the_lists_and_comes_back(okx_sim):
    venue = okx_sim.venue
    venue.listen()
    assert until(lambda: venue.streaming, 10)
    told: list[OrderUpdate] = []
    venue.on_update = told.append
    okx_sim.server.drop_sockets(refuse=True)  # the link is cut and stays cut
    assert until(lambda: not venue.streaming, 10)
    down = order("fb-down")
    venue.submit([down])
    assert until(lambda: down.client_order_id in _filled(told), 10)
    read_while_down = _lists_read(okx_sim.server)
    assert read_while_down > 0  # learnt from the lists
    okx_sim.server.drop_sockets(refuse=False)  # the link is back
    assert until(lambda: venue.streaming, 10)
    up = order("fb-up")
    venue.submit([up])
    assert until(lambda: up.client_order_id in _filled(told), 10)
    assert _lists_read(okx_sim.server) == read_while_down  # pushed again, not read


def test_an_order_taken_while_the_socket_was_down_is_caught_up_when_it_returns(okx_sim):
    """OKX pushes nothing at subscription: an order that changed while the socket was down
    and the lists could not be read is found by one look at them once it is back."""
    okx_sim.server.set_fill_ratio(0)
    venue = okx_venue(okx_sim.url, fill_wait_s=600)
    venue.listen()
    assert until(lambda: venue.streaming, 10)
    told: list[OrderUpdate] = []
    venue.on_update = told.append
    o = order("cu1")
    assert venue.submit([o])[0].accepted
    okx_sim.server.drop_sockets(refuse=True)
    assert until(lambda: not venue.streaming, 10)
    okx_sim.server.arm("http_5xx", times=10**6, paths=("trade/orders-pending", "trade/orders-history",
                                                        "trade/order"))  # the lists cannot be read either
    raw(okx_sim.url, "POST", "/api/v5/trade/cancel-order", {"instId": "BTC-USDT", "clOrdId": o.client_order_id})
    okx_sim.server.drop_sockets(refuse=False)
    assert until(lambda: venue.streaming, 10)
    okx_sim.server.clear_faults()  # only now could a look at the lists see the cancel
    assert until(lambda: any(u.status == CANCELLED for u in told), 10)
    venue.close()


def test_a_wrong_secret_is_refused_on_the_socket_and_over_rest_and_nothing_is_placed():
    """OKX checks every private request's signature as it checks a login's: a client with the
    wrong secret streams nothing and places nothing."""
    with running(prices=PRICES, credentials=Credentials(KEY, SECRET, PASSPHRASE)) as sim:
        wrong = okx_venue(sim.url, secret="not-the-secret")
        wrong.listen()
        assert until(lambda: sim.sockets()["logins"]["refused"] >= 1, 10)
        assert not wrong.streaming
        o = order("refused-login")
        (ack,) = wrong.submit([o])
        assert not ack.accepted and "AuthenticationError" in ack.reason
        assert sim.placements() == {o.client_order_id: 1} and sim.stats()["accepted"] == 0
        right = okx_venue(sim.url)
        right.listen()
        assert until(lambda: right.streaming, 10) and sim.sockets()["logins"]["accepted"] == 1
        wrong.close()
        right.close()


def test_close_ends_every_thread_and_socket(okx_sim):
    venue = okx_sim.venue
    okx_sim.server.set_fill_ratio(0)
    venue.listen()
    assert until(lambda: venue.streaming, 10)
    venue.submit([order("cl1")])  # still working: the poller waits to cancel it
    threads = [venue._io_now.thread, venue._poller._thread]  # noqa: SLF001 - what close must end
    assert all(t is not None and t.is_alive() for t in threads)
    venue.close()
    assert not any(t.is_alive() for t in threads)
    assert until(lambda: okx_sim.server.sockets()["open"] == 0, 10)


def test_close_cuts_a_request_the_poller_waits_on(okx_sim):
    """The socket down, the poller asks for the working orders and OKX holds the answer far
    longer than the client would wait: ``close`` does not wait for it, it cuts it."""
    okx_sim.server.drop_sockets(refuse=True)
    okx_sim.server.arm("hang", paths="trade/orders-pending")
    venue = okx_venue(okx_sim.url, timeout_ms=600_000)
    venue.submit([order("held-look")])
    assert until(lambda: okx_sim.server.stats()["requests"].get("GET trade/orders-pending", 0) >= 1, 10)
    threads = [venue._io_now.thread, venue._poller._thread]  # noqa: SLF001 - what close must end
    venue.close()
    assert not any(t.is_alive() for t in threads)


def test_a_closed_venue_still_sends_and_answers_but_starts_nothing(okx_sim):
    venue = okx_sim.venue
    venue.close()
    (ack,) = venue.submit([order("after-close")])
    assert ack.accepted and isinstance(venue.lookup(order("after-close")).quantity, float)
    assert venue._io_now is None and venue._poller._thread is None  # noqa: SLF001 - nothing started again
