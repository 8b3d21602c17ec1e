"""The OKX simulator's rules where a correct client depends on them being OKX's: clOrdId
unique among open orders only, every private request signed, funds held by open orders,
``tdMode`` required, and the order types (market, limit, post_only, ioc, fok) meeting a
book with a bid, an ask and depth rather than the last price."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from connectors.sims.okx import Credentials, running
from connectors.sims.okx.matching import Depth, book_side, tick_for, walk
from connectors.sims.okx.records import inst_id_code
from connectors.sims.okx.ws import sign as login_sign
from okx_fixtures import CREDENTIALS, KEY, PASSPHRASE, PRICES, SECRET, raw, signed

BUY = {"instId": "BTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "1", "tgtCcy": "base_ccy"}
ORDER = "/api/v5/trade/order"


def _place(url: str, **fields) -> dict:
    return raw(url, "POST", ORDER, {**BUY, **fields})[1]


def _get(url: str, cl: str, inst: str = "BTC-USDT") -> dict:
    return raw(url, "GET", f"{ORDER}?instId={inst}&clOrdId={cl}")[1]["data"][0]


def _balance(url: str, ccy: str) -> dict:
    details = raw(url, "GET", "/api/v5/account/balance")[1]["data"][0]["details"]
    return next(d for d in details if d["ccy"] == ccy)


def test_a_clordid_is_refused_only_while_its_order_is_open_and_every_send_is_counted():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        first = _place(sim.url, clOrdId="same1")["data"][0]
        assert _get(sim.url, "same1")["state"] == "filled"
        second = _place(sim.url, clOrdId="same1")["data"][0]  # OKX places it again: the first is finished
        assert second["sCode"] == "0" and second["ordId"] != first["ordId"]
        assert _get(sim.url, "same1")["ordId"] == second["ordId"]  # "the latest one" under the clOrdId
        resting = {"ordType": "limit", "px": "90", "clOrdId": "same2"}
        assert _place(sim.url, **resting)["data"][0]["sCode"] == "0"
        assert _place(sim.url, **resting)["data"][0]["sCode"] == "51016"  # open: refused
        assert sim.placements() == {"same1": 2, "same2": 2} and sim.stats()["accepted"] == 3


def _headers(**changed: str) -> dict[str, str]:
    return {**signed("GET", "/api/v5/account/balance", ""), **changed}


def test_private_requests_are_refused_as_okx_refuses_them_and_public_ones_are_open():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        def answer(headers: dict[str, str]) -> tuple[int, str, str]:
            status, body = raw(sim.url, "GET", "/api/v5/account/balance", headers=headers)
            return status, body.get("code", ""), body.get("msg", "")

        assert answer(_headers())[:2] == (200, "0")
        assert answer({}) == (401, "50103", 'Request header "OK-ACCESS-KEY" cannot be empty.')
        assert answer(_headers(**{"OK-ACCESS-KEY": "someone-else"})) == (401, "50111", "Invalid OK-ACCESS-KEY")
        assert answer(_headers(**{"OK-ACCESS-SIGN": "c2lnbmVk"})) == (401, "50113", "Invalid Sign")
        assert answer(_headers(**{"OK-ACCESS-PASSPHRASE": "guess"}))[:2] == (401, "50105")
        assert answer(_headers(**{"OK-ACCESS-TIMESTAMP": "2020-01-01T00:00:00.000Z"}))[:2] == (401, "50102")
        # signed for another body than the one sent: the signature covers the body
        stale = signed("POST", ORDER, json.dumps({**BUY, "sz": "2"}))
        status, body = raw(sim.url, "POST", ORDER, BUY, headers=stale)
        assert (status, body["code"]) == (401, "50113") and sim.stats()["accepted"] == 0
        assert raw(sim.url, "GET", "/api/v5/market/ticker?instId=BTC-USDT", headers={})[1]["code"] == "0"
        assert raw(sim.url, "GET", "/api/v5/public/time", headers={})[1]["code"] == "0"
    with running(prices=PRICES) as sim:  # no credentials given: any key, but every header still
        assert raw(sim.url, "GET", "/api/v5/account/balance", headers={})[0] == 401
        other = signed("GET", "/api/v5/account/balance", "", Credentials("any", "thing", "goes"))
        assert raw(sim.url, "GET", "/api/v5/account/balance", headers=other)[0] == 200


def test_open_orders_hold_their_funds_and_a_cancel_frees_them():
    with running(prices=PRICES, credentials=CREDENTIALS, balances={"USDT": 1000.0}) as sim:
        # two resting buys of 60% of the balance each: the second does not fit beside the first
        first = _place(sim.url, ordType="limit", px="60", sz="10", clOrdId="hold1")
        assert first["data"][0]["sCode"] == "0"
        usdt = _balance(sim.url, "USDT")
        assert (usdt["cashBal"], usdt["frozenBal"], usdt["availBal"]) == ("1000", "600", "400")
        second = _place(sim.url, ordType="limit", px="60", sz="10", clOrdId="hold2")
        assert (second["code"], second["data"][0]["sCode"]) == ("1", "51008")
        assert second["msg"] == "All operations failed"
        cancelled = raw(sim.url, "POST", "/api/v5/trade/cancel-order", {"instId": "BTC-USDT", "clOrdId": "hold1"})
        assert cancelled[1]["data"][0]["sCode"] == "0"
        assert _balance(sim.url, "USDT")["availBal"] == "1000"
        assert _place(sim.url, ordType="limit", px="60", sz="10", clOrdId="hold3")["data"][0]["sCode"] == "0"
        # a sell holds the coins it sells
        sim.set_balance("ETH", 3)
        assert _place(sim.url, instId="ETH-USDT", side="sell", ordType="limit", px="70", sz="2",
                      clOrdId="sell1")["data"][0]["sCode"] == "0"
        assert _balance(sim.url, "ETH")["availBal"] == "1"
        late = _place(sim.url, instId="ETH-USDT", side="sell", sz="2", clOrdId="sell2")["data"][0]
        assert late["sCode"] == "51008"


def test_an_order_without_tdmode_is_refused():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        body = {k: v for k, v in BUY.items() if k != "tdMode"}
        answer = raw(sim.url, "POST", ORDER, {**body, "clOrdId": "notd"})[1]
        assert (answer["data"][0]["sCode"], answer["data"][0]["sMsg"]) == ("51000", "Parameter tdMode error")
        assert sim.stats()["accepted"] == 0


def test_a_market_order_pays_the_spread_and_walks_the_depth():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        ticker = raw(sim.url, "GET", "/api/v5/market/ticker?instId=BTC-USDT")[1]["data"][0]
        assert (ticker["bidPx"], ticker["last"], ticker["askPx"]) == ("99.99", "100", "100.01")
        sim.set_depth(level_notional=1000)  # about 10 BTC a level
        _place(sim.url, sz="25", clOrdId="walk1")
        got = _get(sim.url, "walk1")
        fills = raw(sim.url, "GET", f"/api/v5/trade/fills?instId=BTC-USDT&ordId={got['ordId']}")[1]["data"]
        prices = sorted(Decimal(f["fillPx"]) for f in fills)
        assert len(fills) == 3 and prices[0] == Decimal("100.01") and prices[-1] > prices[0]
        assert sum(Decimal(f["fillSz"]) for f in fills) == Decimal("25") and got["state"] == "filled"
        assert prices[0] < Decimal(got["avgPx"]) < prices[-1]
        assert len({f["tradeId"] for f in fills}) == 3 and got["tradeId"] == fills[0]["tradeId"]  # newest first
        trades = raw(sim.url, "GET", "/api/v5/market/trades?instId=BTC-USDT&limit=2")[1]["data"]
        assert [t["tradeId"] for t in trades] == [f["tradeId"] for f in fills[:2]]


def test_limit_post_only_ioc_and_fok_as_okx_takes_them():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        sim.set_depth(level_notional=1000)
        # a limit buy at the ask takes the level at its price (about 10 BTC), and rests with the rest
        _place(sim.url, ordType="limit", px="100.01", sz="15", clOrdId="lim1")
        lim = _get(sim.url, "lim1")
        assert lim["state"] == "partially_filled" and Decimal(lim["accFillSz"]) < 15
        # post_only that would take is cancelled (OKX's cancelSource 31); below the ask it rests
        _place(sim.url, ordType="post_only", px="100.5", clOrdId="po1")
        assert (_get(sim.url, "po1")["state"], _get(sim.url, "po1")["cancelSource"]) == ("canceled", "31")
        _place(sim.url, ordType="post_only", px="99", clOrdId="po2")
        assert _get(sim.url, "po2")["state"] == "live"
        # ioc takes what its price allows and cancels the rest; fok fills whole or not at all
        _place(sim.url, ordType="ioc", px="100.01", sz="15", clOrdId="ioc1")
        ioc = _get(sim.url, "ioc1")
        assert ioc["state"] == "canceled" and ioc["cancelSource"] == "14" and 0 < Decimal(ioc["accFillSz"]) < 15
        _place(sim.url, ordType="fok", px="100.01", sz="15", clOrdId="fok1")
        assert (_get(sim.url, "fok1")["state"], _get(sim.url, "fok1")["accFillSz"]) == ("canceled", "0")
        _place(sim.url, ordType="fok", px="100.01", sz="5", clOrdId="fok2")
        assert (_get(sim.url, "fok2")["state"], _get(sim.url, "fok2")["accFillSz"]) == ("filled", "5")


def _login() -> str:
    ts = str(int(__import__("time").time()))
    return json.dumps({"op": "login", "args": [{"apiKey": KEY, "passphrase": PASSPHRASE, "timestamp": ts,
                                                "sign": login_sign(SECRET, ts)}]})


def test_a_resting_limit_fills_when_the_price_crosses_it_and_the_fill_is_pushed():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        async def watch() -> list[dict]:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(sim.url.replace("http://", "ws://") + "/ws/v5/private") as ws:
                    await ws.send_str(_login())
                    await ws.send_str(json.dumps({"op": "subscribe",
                                                  "args": [{"channel": "orders", "instType": "SPOT"}]}))
                    for _ in range(2):
                        await asyncio.wait_for(ws.receive(), 10)
                    await asyncio.to_thread(_place, sim.url, ordType="limit", px="95", sz="2", clOrdId="cross1")
                    await asyncio.to_thread(sim.set_price, "BTC-USDT", 97.0)  # the ask 97.01: not yet
                    await asyncio.to_thread(sim.set_price, "BTC-USDT", 94.5)  # the ask 94.51: crossed
                    return [json.loads((await asyncio.wait_for(ws.receive(), 10)).data)["data"][0]
                            for _ in range(2)]

        live, filled = asyncio.run(watch())
    assert (live["state"], live["clOrdId"]) == ("live", "cross1")
    assert (filled["state"], filled["fillPx"], filled["fillSz"], filled["execType"]) == ("filled", "95", "2", "M")
    assert filled["fillFee"] == "-0.0016" and filled["fillFeeCcy"] == "BTC"  # a maker's fee, in the coin bought


def test_instruments_carry_a_fixed_instidcode_and_the_venue_tells_its_time():
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        listed = raw(sim.url, "GET", "/api/v5/public/instruments?instType=SPOT")[1]["data"]
        codes = {i["instId"]: i["instIdCode"] for i in listed}
        assert codes == {inst: inst_id_code(inst) for inst in PRICES}
        assert len(set(codes.values())) == len(codes) and all(isinstance(c, int) for c in codes.values())
        (now,) = raw(sim.url, "GET", "/api/v5/public/time")[1]["data"]
        assert now["ts"].isdigit()
        assert raw(sim.url, "GET", "/api/v5/market/trades?instId=NOPE-USDT")[1]["code"] == "51001"


@given(last=st.decimals(min_value="0.001", max_value="100000", places=3),
       want=st.decimals(min_value="0.00000001", max_value="5000", places=8),
       side=st.sampled_from(["buy", "sell"]), away=st.integers(min_value=-30, max_value=30))
def test_a_walk_never_fills_more_than_asked_nor_beyond_its_limit(last, want, side, away):
    lot = Decimal("0.00000001")
    depth = Depth(level_notional=Decimal(1000))
    tick = tick_for(last)
    levels = book_side(last, side, depth, tick, lot)
    limit = last + away * tick
    fills = walk(levels, side, base=want, limit=limit, lot=lot)
    assert sum((f.sz for f in fills), Decimal(0)) <= want
    assert all((f.px <= limit) if side == "buy" else (f.px >= limit) for f in fills)
    assert all((f.px > last) if side == "buy" else (f.px < last) for f in fills)  # the spread is paid
    pxs = [f.px for f in fills]
    assert pxs == sorted(pxs, reverse=side == "sell")  # best first
