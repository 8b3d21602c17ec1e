"""OKX through the real ccxt client (``OkxVenue``) against the loopback simulator: fills,
refusals, unknown outcomes asked and never sent twice, partial fills, OKX's rate limits
kept by the client and enforced by the simulator, and ``apex sim okx`` on the command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import ccxt
import pytest

from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.sims.okx import running
from connectors.venues import (ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED, Instrument, OrderUpdate, Rejected,
                               Venue, VenueDown)
from connectors.venues import okx_limits as limits
from helpers import until
from okx_fixtures import (CREDENTIALS, KEY, PASSPHRASE, PRICES, SECRET, free_port, held, logged,  # noqa: F401
                          okx_sim, okx_venue, order, raw)
from operators.fill import Fill

APEX = str(Path(sys.executable).with_name("apex"))
REPO = Path(__file__).resolve().parents[1]


def _counts(stats: dict) -> dict:
    """The simulator's stats without its request counts."""
    return {k: v for k, v in stats.items() if k != "requests"}


def test_fills_carry_okx_order_ids_and_fees_in_usd(okx_sim):
    buy, sell = order("f1", quantity=0.5), order("f2", side="sell", quantity=0.2)
    fills = okx_sim.venue.place_many([buy, sell])
    log = okx_sim.logged()
    assert [f.order_id for f in fills] == [line["ordId"] for line in log]
    # a market order takes the best level: the buy the ask, the sell the bid, a tick (1 bp) from 100
    assert [isinstance(f, Fill) and f.price for f in fills] == [100.01, 99.99]
    # OKX takes a buy's fee in the coin bought (0.1% of 0.5 BTC at 100) and a sell's in USDT:
    # the buy's position is what the account holds, the fill less the fee's coins
    assert [(f.client_order_id, f.side) for f in fills] == [(buy.client_order_id, "buy"),
                                                          (sell.client_order_id, "sell")]
    assert [f.quantity for f in fills] == pytest.approx([held(0.5), 0.2])
    assert fills[0].fee_usd == pytest.approx(0.5 * 0.001 * 100.01)
    assert fills[1].fee_usd == pytest.approx(0.2 * 0.001 * 99.99)
    # a market buy is sized in the base currency, and the venue read it so
    assert [(line["tgtCcy"], line["sz"], line["accFillSz"]) for line in log] == [
        ("base_ccy", "0.5", "0.5"), ("base_ccy", "0.2", "0.2")]


def test_refusals_come_back_as_rejected_and_the_rest_fill(okx_sim):
    bad_id = replace(order("r4"), client_order_id="ax-not-alphanumeric")  # OKX takes letters and digits only
    results = okx_sim.venue.place_many([order("r1"), order("r2", quantity=1e9), order("r3", symbol="FOO-USDT"),
                                        bad_id])
    assert isinstance(results[0], Fill)
    assert isinstance(results[1], Rejected) and "51008" in str(results[1])  # insufficient balance
    assert isinstance(results[2], Rejected) and "FOO-USDT" in str(results[2])
    assert isinstance(results[3], Rejected) and "51000" in str(results[3])
    assert [line["clOrdId"] for line in okx_sim.logged()] == [order("r1").client_order_id]
    (alone,) = okx_sim.venue.place_many([order("r5", quantity=1e9)])  # a batch refused whole: ccxt raises
    assert isinstance(alone, Rejected) and "51008" in str(alone)
    okx_sim.server.arm("reject", code="51001", msg="Instrument ID does not exist")  # a refusal on demand
    assert [str(r) for r in okx_sim.venue.place_many([order("r6"), order("r7")])] == [
        "okx 51001: Instrument ID does not exist"] * 2
    assert len(okx_sim.logged()) == 1


def test_venue_down_then_up_the_order_is_sent_once(tmp_path):
    port, log = free_port(), tmp_path / "orders.jsonl"
    venue = okx_venue(f"http://127.0.0.1:{port}")
    ex = Executor(Ledger(tmp_path / "ledger.sqlite"), venue)
    o = order("d1")
    assert ex.prepare(o) is None
    with pytest.raises(VenueDown):
        ex.send([o])
    with running(port=port, orders_log=log, prices=PRICES, credentials=CREDENTIALS) as sim:
        assert ex.prepare(o) is None  # asked first: the venue never saw it, so it may go
        (fill,) = ex.send([o])
        assert isinstance(fill, Fill)
        assert ex.prepare(o) == fill  # filled: answered from the ledger, never sent again
        assert sim.placements() == {o.client_order_id: 1}
    assert [line["clOrdId"] for line in logged(log)] == [o.client_order_id]


@pytest.mark.parametrize("fault", ["drop", "code_50004", "hang"])
def test_an_order_taken_without_an_answer_is_looked_up_not_sent_again(okx_sim, fault):
    """The venue takes the order, then the connection drops, or it answers 50004, or it
    answers after the client gave up: the fill is found by client order id."""
    venue = okx_venue(okx_sim.url, timeout_ms=300)
    okx_sim.server.arm(fault)
    o = order("u-" + fault)
    (fill,) = venue.place_many([o])
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(held(0.5))
    assert [line["ordId"] for line in okx_sim.logged()] == [fill.order_id]
    assert okx_sim.server.placements() == {o.client_order_id: 1}  # asked about, never sent again


def test_duplicated_client_order_id_of_an_open_order_is_looked_up_not_placed_again(okx_sim):
    """51016: another process (or a lost answer) placed it already and it is still open; OKX's
    record is the answer. OKX keeps a clOrdId unique among open orders only: that a finished
    order is never sent again is the sender's to make sure (it asks first)."""
    okx_sim.server.set_fill_ratio(0)  # the first rests open
    o = order("dup")
    other = okx_venue(okx_sim.url)
    try:
        (first,) = other.submit([o])
        (again,) = okx_sim.venue.submit([o])
    finally:
        other.close()
    assert first.accepted and again.accepted and not again.unknown
    assert okx_sim.server.placements() == {o.client_order_id: 2}  # sent twice, placed once
    assert len(okx_sim.logged()) == 1


def test_a_5xx_takes_nothing_and_the_retry_asks_before_sending(okx_sim, tmp_path):
    ex = Executor(Ledger(tmp_path / "ledger.sqlite"), okx_sim.venue)
    okx_sim.server.arm("http_5xx")
    o = order("5xx")
    assert ex.prepare(o) is None
    with pytest.raises(VenueDown):
        ex.send([o])
    assert okx_sim.logged() == []
    assert ex.prepare(o) is None
    (fill,) = ex.send([o])
    assert isinstance(fill, Fill) and len(okx_sim.logged()) == 1
    # sent twice: the 5xx took nothing, and the retry went only once the venue said it had none
    assert okx_sim.server.placements() == {o.client_order_id: 2}


def test_a_partial_fill_has_its_remainder_cancelled(okx_sim):
    okx_sim.server.set_fill_ratio(0.5)
    o = order("p1", quantity=0.5)
    (fill,) = okx_sim.venue.place_many([o])
    assert isinstance(fill, Fill) and fill.quantity == pytest.approx(held(0.25))
    assert okx_sim.venue.open_orders() == []
    assert okx_sim.venue.lookup(o) == fill


def test_lookup_unknown_is_none_and_cancelled_unfilled_is_rejected(okx_sim):
    assert okx_sim.venue.lookup(order("never")) is None
    okx_sim.server.set_fill_ratio(0.0)
    o = order("c1")
    (result,) = okx_sim.venue.place_many([o])
    assert isinstance(result, Rejected)
    with pytest.raises(Rejected):
        okx_sim.venue.lookup(o)
    # another process, knowing nothing of the order, finds it too (under each instrument)
    with pytest.raises(Rejected):
        okx_venue(okx_sim.url).lookup(o)


def test_lookup_finds_what_a_restarted_simulator_kept(tmp_path):
    state, o = tmp_path / "okx-state.json", order("kept")
    with running(state_file=state, prices=PRICES, credentials=CREDENTIALS) as sim:
        (fill,) = okx_venue(sim.url).place_many([o])
    with running(state_file=state, prices=PRICES, credentials=CREDENTIALS) as sim:
        venue = okx_venue(sim.url)
        assert venue.lookup(o).order_id == fill.order_id
        assert venue.balances()["BTC"] == pytest.approx(0.4995)


def test_a_burst_across_instruments_draws_no_rate_limit_refusal(okx_sim):
    """1,200 orders over ten instruments pass the account-wide limit (1,000 orders in two
    seconds): the client paces itself, and learns their fates from the order lists."""
    symbols = sorted(PRICES)
    burst = [order(f"b{i}", symbol=symbols[i % len(symbols)], quantity=0.01) for i in range(1200)]
    results = okx_sim.venue.place_many(burst)
    assert all(isinstance(r, Fill) for r in results)
    assert _counts(okx_sim.server.stats()) == {"accepted": 1200, "rate_limited": 0}
    assert _gets(okx_sim.server) < len(burst) / 20 + 5
    assert len({r.order_id for r in results}) == 1200


def test_the_simulator_refuses_requests_beyond_okx_limits():
    """Sent raw, with the simulator's clock stopped so that every request falls in one window."""
    with running(prices=PRICES, credentials=CREDENTIALS, clock=lambda: 0.0) as sim:
        url = sim.url
        codes = [raw(url, "GET", "/api/v5/trade/order?instId=BTC-USDT&clOrdId=x")[1]["code"] for _ in range(61)]
        assert codes == ["51603"] * 60 + ["50011"]
        batch = [{"instId": "ETH-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "0.01",
                  "tgtCcy": "base_ccy", "clOrdId": f"e{i}"} for i in range(20)]
        answers = [raw(url, "POST", "/api/v5/trade/batch-orders", [dict(b, clOrdId=f"{b['clOrdId']}n{n}")
                                                                   for b in batch]) for n in range(16)]
        assert [a[1]["code"] for a in answers] == ["0"] * 15 + ["50011"]
        assert answers[-1][0] == 429
        assert _counts(sim.stats()) == {"accepted": 300, "rate_limited": 2}
    # account-wide: 1,000 orders, each counted
    with running(prices=PRICES, credentials=CREDENTIALS, clock=lambda: 0.0) as sim:
        symbols = sorted(PRICES)
        batches = [[{"instId": symbols[n % 10], "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "0.01",
                     "tgtCcy": "base_ccy", "clOrdId": f"a{n}x{i}"} for i in range(20)] for n in range(51)]
        codes = [raw(sim.url, "POST", "/api/v5/trade/batch-orders", b)[1]["code"] for b in batches]
        assert codes == ["0"] * 50 + ["50011"]


def test_the_simulator_honours_tgtccy_and_answers_okx_codes():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        url = sim.url
        spend = {"instId": "BTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "100.01",
                 "clOrdId": "q1"}
        status, body = raw(url, "POST", "/api/v5/trade/order", spend)
        assert (status, body["code"], body["data"][0]["sCode"]) == (200, "0", "0")
        _, got = raw(url, "GET", "/api/v5/trade/order?instId=BTC-USDT&clOrdId=q1")
        assert (got["data"][0]["accFillSz"], got["data"][0]["tgtCcy"]) == ("1", "quote_ccy")  # 100.01 USDT at the ask
        refused = {**spend, "instId": "NOPE-USDT", "clOrdId": "q2"}
        assert raw(url, "POST", "/api/v5/trade/order", refused)[1]["data"][0]["sCode"] == "51001"
        sim.set_fill_ratio(0)
        rests = {**spend, "clOrdId": "q3"}
        assert raw(url, "POST", "/api/v5/trade/order", rests)[1]["data"][0]["sCode"] == "0"
        assert raw(url, "POST", "/api/v5/trade/order", rests)[1]["data"][0]["sCode"] == "51016"  # q3 is open


def test_an_unmodified_ccxt_client_trades_with_the_simulator(okx_sim):
    """Default options but the URL: every market type and the currency table are asked for."""
    ex = ccxt.okx({"apiKey": KEY, "secret": SECRET, "password": PASSPHRASE})
    ex.urls["api"]["rest"] = okx_sim.url
    assert "BTC/USDT" in ex.load_markets() and "USDT" in ex.currencies
    placed = ex.create_order("ETH/USDT", "market", "buy", 2, None, {"clientOrderId": "plain1"})
    got = ex.fetch_order(None, "ETH/USDT", {"clientOrderId": "plain1"})
    assert (got["id"], got["status"], got["filled"], got["average"]) == (placed["id"], "closed", 2.0, 50.005)
    assert okx_sim.logged()[0]["tgtCcy"] == "base_ccy"  # ccxt's own default for spot orders


def test_the_simulator_is_steered_through_its_control_routes():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        url = sim.url
        assert raw(url, "POST", "/sim/price", {"instId": "BTC-USDT", "px": 250})[0] == 200
        assert raw(url, "GET", "/api/v5/market/ticker?instId=BTC-USDT")[1]["data"][0]["last"] == "250"
        assert raw(url, "POST", "/sim/fault", {"kind": "http_5xx", "status": 502})[0] == 200
        spend = {"instId": "BTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "1",
                 "tgtCcy": "base_ccy", "clOrdId": "c1"}
        assert raw(url, "POST", "/api/v5/trade/order", spend)[0] == 502
        assert raw(url, "POST", "/api/v5/trade/order", spend)[1]["code"] == "0"
        assert raw(url, "POST", "/sim/fault", {"kind": "melt"})[0] == 400
        stats = raw(url, "GET", "/sim/stats")[1]
        assert _counts(stats) == {"accepted": 1, "rate_limited": 0}
        assert stats["requests"] == {"POST trade/order": 2, "GET market/ticker": 1}
        # each order sent to be placed is counted, the one the 502 turned away too
        assert raw(url, "GET", "/sim/placements")[1] == {"c1": 2}
        assert raw(url, "GET", "/sim/sockets")[1] == {"open": 0, "logged_in": 0, "subscribed": 0,
                                                      "logins": {"accepted": 0, "refused": 0}}
        assert raw(url, "POST", "/sim/drop-sockets", {"refuse": True})[0] == 200


def test_submitted_orders_report_their_fates_as_updates(okx_sim):
    venue = okx_sim.venue
    acks = venue.submit([order("s1"), order("s2", quantity=1e9)])
    assert [a.accepted for a in acks] == [True, False]
    seen = []
    assert until(lambda: seen.extend(venue.updates()) or any(u.status == FILLED for u in seen), 10)
    # OKX pushes "live" before "filled": whether it is told depends on when the push lands,
    # but the refusal comes first, the fill last, and nothing steps back after it
    assert [u.status for u in seen if u.status != ACCEPTED] == [REJECTED, FILLED]
    assert seen[-1].fill is not None and seen[-1].fill.quantity == pytest.approx(held(0.5))
    assert seen[-1].fill_id == "1"  # OKX's tradeId of the fill
    assert ACCEPTED not in [u.status for u in venue.updates()]


def _collect(venue, seen: list[OrderUpdate], done) -> bool:
    """Drains the venue's updates into ``seen``; whether ``done(seen)`` holds yet."""
    seen.extend(venue.updates())
    return done(seen)


def _gets(server) -> int:
    return sum(n for what, n in server.stats()["requests"].items() if what.startswith("GET "))


def test_submit_answers_before_the_fates_are_known_and_updates_asks_nothing(okx_sim):
    """The poller's first look at the working orders hangs until the client gives up, so the
    fates cannot be known when ``submit`` returns; the next look learns them. Once they are
    in, ``updates()`` hands them over with the simulator stopped: it never asks OKX. (The
    WebSocket is kept out, or its pushes would tell the fates before the look.)"""
    okx_sim.server.drop_sockets(refuse=True)
    venue = okx_sim.venue
    okx_sim.server.arm("hang", paths="trade/orders-pending")
    taken, refused = order("a1"), order("a2", quantity=1e9)
    acks = venue.submit([taken, refused])
    assert [(a.client_order_id, a.accepted) for a in acks] == [(taken.client_order_id, True),
                                                              (refused.client_order_id, False)]
    assert "51008" in acks[1].reason
    assert [u.status for u in venue.updates()] == [REJECTED]  # the refusal is known; the fill is not yet
    assert until(lambda: venue.in_flight() == 0, 10)
    asked = okx_sim.server.stats()["requests"]
    okx_sim.server.stop()
    (filled,) = venue.updates()
    assert (filled.client_order_id, filled.status) == (taken.client_order_id, FILLED)
    assert filled.fill.quantity == pytest.approx(held(0.5))
    assert filled.fill.order_id == okx_sim.logged()[0]["ordId"]
    assert venue.updates() == []
    assert okx_sim.server.stats()["requests"] == asked


def test_a_burst_on_one_instrument_is_resolved_by_its_order_lists(okx_sim):
    """Three hundred orders on one instrument (all OKX takes in two seconds), the WebSocket
    down: their fates come from a look at the working orders and a few pages of the
    history, not a query each."""
    okx_sim.server.drop_sockets(refuse=True)
    burst = [order(f"one{i}", quantity=0.01) for i in range(300)]
    venue = okx_sim.venue
    assert all(a.accepted for a in venue.submit(burst))
    seen: list[OrderUpdate] = []
    assert until(lambda: _collect(venue, seen, lambda s: len(s) == 300), 30)
    assert {u.status for u in seen} == {FILLED}
    assert sorted(u.client_order_id for u in seen) == sorted(o.client_order_id for o in burst)
    stats = okx_sim.server.stats()
    assert stats["rate_limited"] == 0 and stats["requests"]["POST trade/batch-orders"] == 15
    assert _gets(okx_sim.server) < len(burst) / 20 + 5
    assert "GET trade/order" not in stats["requests"]
    (fill,) = okx_sim.venue.place_many([order("one-more", quantity=0.01)])
    assert isinstance(fill, Fill)
    assert _gets(okx_sim.server) < len(burst) / 20 + 10


@pytest.mark.parametrize("ratio, filled", [(0.5, 0.25), (0.0, 0.0)])
def test_what_is_left_after_the_bound_is_cancelled_and_told(okx_sim, ratio, filled):
    okx_sim.server.drop_sockets(refuse=True)  # read from the lists: the steps told are then certain
    okx_sim.server.set_fill_ratio(ratio)
    venue, o = okx_sim.venue, order(f"left{int(ratio * 10)}", quantity=0.5)
    (ack,) = venue.submit([o])
    assert ack.accepted
    seen: list[OrderUpdate] = []
    assert until(lambda: _collect(venue, seen, lambda s: s and s[-1].status == CANCELLED), 10)
    assert [u.status for u in seen] == [PARTIALLY_FILLED if filled else ACCEPTED, CANCELLED]
    if filled:
        assert [u.fill.quantity for u in seen] == pytest.approx([held(filled)] * 2)
    else:
        assert seen[-1].fill is None and "nothing filled" in seen[-1].reason
    assert venue.open_orders() == []


def test_place_many_and_updates_each_hear_their_own_orders(okx_sim):
    """``updates()`` tells the fates of submitted orders; ``place_many`` keeps those of the
    orders it placed, unless it gave up on them: then ``updates()`` tells them. (The
    WebSocket is kept out: the fates come from the lists, which can then be made to fail.)"""
    okx_sim.server.drop_sockets(refuse=True)
    venue = okx_sim.venue
    mine, its = order("mine"), order("its")
    venue.submit([mine])
    (fill,) = venue.place_many([its])
    assert isinstance(fill, Fill) and fill.client_order_id == its.client_order_id
    seen: list[OrderUpdate] = []
    assert until(lambda: _collect(venue, seen, lambda s: venue.in_flight() == 0 and s), 10)
    assert [(u.client_order_id, u.status) for u in seen + venue.updates()] == [(mine.client_order_id, FILLED)]

    okx_sim.server.arm("http_5xx", times=3, paths="trade/orders-pending")  # the poller cannot see
    given_up = order("given-up")
    with pytest.raises(VenueDown):
        venue.place_many([given_up])
    seen.clear()
    assert until(lambda: _collect(venue, seen, lambda s: any(u.status == FILLED for u in s)), 10)
    assert [(u.client_order_id, u.status) for u in seen] == [(given_up.client_order_id, FILLED)]
    assert len(okx_sim.logged()) == 3


def test_an_unanswered_batch_comes_back_unknown_and_stops_the_rest(okx_sim):
    """The first batch is taken without an answer: its orders come back unknown (to be asked
    about, never sent again) and nothing more is sent: the rest come back not sent. Asked,
    the first batch is found filled and the rest are not there."""
    okx_sim.server.arm("drop", paths="trade/batch-orders")
    burst = [order(f"stop{i}", quantity=0.01) for i in range(60)]
    acks = okx_sim.venue.submit(burst)
    assert [(a.accepted, a.unknown, a.sent) for a in acks] == [(False, True, True)] * 20 + [(False, False, False)] * 40
    first = {o.client_order_id for o in burst[:20]}
    assert {line["clOrdId"] for line in okx_sim.logged()} == first
    assert okx_sim.server.placements() == {cid: 1 for cid in first}
    assert all(isinstance(okx_sim.venue.lookup(o), Fill) for o in burst[:20])
    assert all(okx_sim.venue.lookup(o) is None for o in burst[20:])
    assert okx_sim.server.stats()["requests"]["POST trade/batch-orders"] == 1


def test_a_batch_that_cannot_have_left_is_venue_down_and_a_lost_one_unknown(tmp_path):
    """Nothing listening (the connection refused): nothing of the batch can have left, so
    VenueDown. A request lost on the way (the connection cut before an answer, the venue
    taking nothing) may have arrived for all the client knows: unknown, never VenueDown."""
    port = free_port()
    with running(port=port, prices=PRICES, credentials=CREDENTIALS) as sim:
        venue = okx_venue(sim.url)
        assert venue.instruments()  # the markets are known: only the placement fails below
        sim.arm("drop", paths="trade/batch-orders", accept=False)
        (lost,) = venue.submit([order("lost")])
        assert (lost.accepted, lost.unknown, lost.sent) == (False, True, True)
        assert venue.lookup(order("lost")) is None
    with pytest.raises(VenueDown):
        venue.submit([order("refused-connection")])
    venue.close()


def test_the_simulator_pages_completed_orders_newest_first():
    with running(prices=PRICES, credentials=CREDENTIALS, clock=lambda: 0.0) as sim:
        url = sim.url
        for n in range(8):
            batch = [{"instId": "BTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "0.01",
                      "tgtCcy": "base_ccy", "clOrdId": f"h{n}x{i}"} for i in range(20)]
            assert raw(url, "POST", "/api/v5/trade/batch-orders", batch)[1]["code"] == "0"
        sim.set_fill_ratio(0)
        assert raw(url, "POST", "/api/v5/trade/order", dict(batch[0], clOrdId="open1"))[1]["code"] == "0"
        history = "/api/v5/trade/orders-history?instType=SPOT"
        first = raw(url, "GET", history)[1]["data"]
        ids = [int(o["ordId"]) for o in first]
        assert len(ids) == 100 and ids == sorted(ids, reverse=True)
        assert {o["state"] for o in first} == {"filled"} and first[0]["clOrdId"] == "h7x19"
        rest = raw(url, "GET", f"{history}&after={ids[-1]}")[1]["data"]
        assert len(rest) == 60 and int(rest[0]["ordId"]) < ids[-1] and rest[-1]["clOrdId"] == "h0x0"
        newer = raw(url, "GET", f"{history}&before={ids[-1]}&limit=2")[1]["data"]
        assert [int(o["ordId"]) for o in newer] == ids[-3:-1]
        assert raw(url, "GET", "/api/v5/trade/orders-history")[1]["code"] == "51000"  # instType is required
        pending = raw(url, "GET", "/api/v5/trade/orders-pending?instType=SPOT")[1]["data"]
        assert [o["clOrdId"] for o in pending] == ["open1"]
        for _ in range(36):
            raw(url, "GET", history)
        status, body = raw(url, "GET", history)  # the 41st in two seconds
        assert (status, body["code"]) == (429, "50011")
        assert sim.stats()["requests"]["GET trade/orders-history"] == 41


def test_ccxt_reads_the_simulators_order_history(okx_sim):
    ex = ccxt.okx({"apiKey": KEY, "secret": SECRET, "password": PASSPHRASE})
    ex.urls["api"]["rest"] = okx_sim.url
    ex.options["fetchMarkets"] = {"types": ["spot"]}
    ex.create_order("ETH/USDT", "market", "buy", 2, None, {"clientOrderId": "hist1"})
    okx_sim.server.set_fill_ratio(0)
    ex.create_order("ETH/USDT", "market", "buy", 2, None, {"clientOrderId": "hist2"})
    ex.cancel_order(None, "ETH/USDT", {"clientOrderId": "hist2"})
    assert [(o["clientOrderId"], o["status"], o["filled"]) for o in ex.fetch_closed_orders("ETH/USDT")] == [
        ("hist1", "closed", 2.0)]
    assert [(o["clientOrderId"], o["status"]) for o in ex.fetch_canceled_orders("ETH/USDT")] == [
        ("hist2", "canceled")]


def test_holdings_balances_and_instruments(okx_sim):
    venue: Venue = okx_sim.venue
    venue.place_many([order("h1", quantity=0.5)])
    assert venue.positions() == {("okx", "BTC-USDT"): pytest.approx(held(0.5))}
    assert venue.balances()["USDT"] == pytest.approx(1_000_000 - 0.5 * 100.01)  # bought at the ask
    assert venue.instrument("okx", "BTC-USDT") == Instrument("okx", "BTC-USDT", 1e-8, 0.01, 1e-5)
    assert venue.instrument("ibkr", "BTC-USDT") is None and venue.instrument("okx", "FOO-USDT") is None
    assert {i.symbol for i in venue.instruments()} == set(PRICES)


def test_free_holdings_leave_out_what_an_open_sale_holds(okx_sim):
    """What a sale may sell is what no open order holds: OKX refuses a spot sale of more
    (51008), which is how the kill switch's sale of the whole holding was once refused."""
    venue: Venue = okx_sim.venue
    venue.place_many([order("f1", quantity=0.5)])
    total = venue.holdings()[0][("okx", "BTC-USDT")]
    okx_sim.server.set_fill_ratio(0)  # the sale below rests, holding its coins
    (taken,) = venue.submit([order("f2", side="sell", quantity=0.2)])
    assert taken.accepted
    assert venue.holdings()[0] == {("okx", "BTC-USDT"): pytest.approx(total)}
    free = venue.holdings(free=True)[0][("okx", "BTC-USDT")]
    assert free == pytest.approx(total - 0.2)
    okx_sim.server.set_fill_ratio(1)
    (refused,) = venue.place_many([order("f3", side="sell", quantity=total)])
    assert isinstance(refused, Rejected) and "51008" in str(refused)
    (sold,) = venue.place_many([order("f4", side="sell", quantity=float(f"{free:.8f}"))])
    assert isinstance(sold, Fill)


def test_credentials_stay_out_of_reprs_errors_and_log_lines(caplog):
    """The venue knows the markets and has logged in on the WebSocket; then nothing
    listens any more: every call fails on a connection error, and the WebSocket keeps
    failing to connect. No error and no log line (ccxt's own, at DEBUG, included) shows
    the API key, the secret or the passphrase."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="ccxt")  # whatever an earlier in-process run set it to
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        venue = okx_venue(sim.url)
        venue.listen()
        assert venue.instruments() and until(lambda: venue.streaming, 10)
    errors = [repr(venue)]
    for call in (lambda: venue.place_many([order("x")]), lambda: venue.submit([order("y")]),
                 lambda: venue.lookup(order("z")), venue.balances, lambda: venue.cancel(order("c"))):
        with pytest.raises(VenueDown) as down:
            call()
        errors.append(str(down.value))
    assert until(lambda: any("order stream down" in r.getMessage() for r in caplog.records), 10)
    venue.close()
    said = errors + [r.getMessage() for r in caplog.records]
    assert any("Request" in line for line in said)  # ccxt's request lines, headers and all, were written
    for secret in (KEY, SECRET, PASSPHRASE):
        assert not [line for line in said if secret in line]


def test_apex_sim_okx_on_the_command_line(tmp_path):
    res = subprocess.run([APEX, "sim", "okx", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--port" in res.stdout
    bad = subprocess.run([APEX, "sim", "okx", "--port", "70000"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["--port must be a whole number from 0 to 65535, not '70000'"]

    log, prices = tmp_path / "orders.jsonl", tmp_path / "prices.json"
    prices.write_text(json.dumps({"BTC-USDT": 100.0}))  # as a user would: it has no prices of its own
    proc = subprocess.Popen([APEX, "sim", "okx", "--port", "0", "--orders-log", str(log), "--prices", str(prices)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]  # "okx simulator listening on URL"
        (fill,) = okx_venue(url).place_many([order("cli")])
        assert isinstance(fill, Fill)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in stderr
    assert [line["ordId"] for line in logged(log)] == [fill.order_id]


def test_market_orders_fill_at_the_last_price_on_the_redis_price_stream(redis_server):
    r = redis_server.client()
    r.xadd("argus:prices:stream", {"symbol": "ETH-USDT", "price": "61.5", "ts": "2026-01-01T10:00:00Z"})
    with running(prices=PRICES, credentials=CREDENTIALS, redis_url=redis_server.url) as sim:
        venue = okx_venue(sim.url)
        assert until(lambda: raw(sim.url, "GET", "/api/v5/market/ticker?instId=ETH-USDT")[1]["data"][0]["last"]
                     == "61.5", 10)
        (fill,) = venue.place_many([order("px", symbol="ETH-USDT", quantity=1.0)])
        assert fill.price == 61.507  # the ask: 1 bp above the last price, rounded up to the tick (0.001)


def test_the_pacer_waits_exactly_until_a_limit_has_room():
    """On a clock of its own: the 61st order query on one instrument waits until two seconds
    after the first was answered, no longer; another instrument's queries do not wait."""
    now, waits = [0.0], []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    pacer = limits.Pacer(clock=lambda: now[0], sleep=sleep)
    for i in range(60):
        with pacer.slot(limits.get_order("BTC-USDT")):
            now[0] += 0.01  # each answered 10 ms after it left
    with pacer.slot(limits.get_order("ETH-USDT")):
        pass
    assert waits == []
    with pacer.slot(limits.get_order("BTC-USDT")):
        pass
    assert now[0] == pytest.approx(0.01 + limits.WINDOW_S)


# --- what `apex sim okx --help` and the example pipeline tell a user (issue 24, mistakes 4) ------

def test_the_help_lists_every_fault_kind_and_every_control_it_answers(okx_sim):
    from connectors.sims.okx.faults import KINDS
    from connectors.sims.okx.sim_routes import CONTROLS

    res = subprocess.run([APEX, "sim", "okx", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0
    assert set(KINDS) == {"drop", "hang", "http_5xx", "code_50004", "reject", "rate_limit"}
    for kind in KINDS:
        assert f" {kind}  " in res.stdout, kind
    listed = [route for route, _ in CONTROLS]
    for route in listed:
        assert route in res.stdout, route
    assert {"POST /sim/fault", "POST /sim/price", "POST /sim/balance", "POST /sim/fill-ratio", "POST /sim/latency",
            "GET /sim/placements", "POST /sim/drop-sockets"} <= set(listed)
    # and each route the help lists is one the simulator answers
    for route in listed:
        method, path = route.split()
        status, _ = raw(okx_sim.url, method, path, {"kind": "http_5xx", "times": 1, "instId": "BTC-USDT", "px": 1.0,
                                                      "ccy": "USDT", "amount": 1.0, "ratio": 1.0, "latency_ms": 0,
                                                      "refuse": False, "skew_s": 0} if method == "POST" else None)
        assert status == 200, route


def test_the_example_pipelines_header_gives_commands_that_start(tmp_path):
    header = [line.removeprefix("#").strip() for line in (REPO / "docs" / "pipeline-venues.example.yaml")
              .read_text().splitlines() if line.startswith("#   ")]
    sims = [line.split("&")[0].split() for line in header if line.startswith("apex sim ")]
    ports = {cmd[2]: cmd[cmd.index("--port") + 1] for cmd in sims}
    (run,) = [line for line in header if " apex run " in line]
    assert f"APEX_OKX_URL=http://127.0.0.1:{ports['okx']} " in run and f"APEX_IBKR_PORT={ports['ibkr']} " in run
    assert (REPO / run.split()[-1]).is_file()
    for cmd in sims:  # as written, but on a free port: the one written may be taken on this machine
        args = cmd[1:cmd.index("--port") + 1] + ["0"] + cmd[cmd.index("--port") + 2:]
        proc = subprocess.Popen([APEX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO)  # its paths are the repository's, as a user runs them
        try:
            said = proc.stdout.readline()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
        assert "listening on" in said, (cmd, stderr)
