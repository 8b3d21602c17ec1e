"""The OKX simulator's answers held against OKX's own (``tests/data/okx-real/``, recorded by
other projects; its README and manifest say where each came from): every key OKX sends is
there, typed as OKX types it, and the codes and messages of refusals are OKX's.

Captured and quoted payloads decide; documented, edited and synthetic ones are compared and
their differences reported as the skip reason (``pytest -rs``), never deciding. Each answer
is drawn from one simulator put through a session a client would have: an order filled, one
resting, one cancelled, refusals, a rate limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.sims.okx import running
from okx_fixtures import CREDENTIALS, PRICES, okx_sim, raw  # noqa: F401

REAL = Path(__file__).parent / "data" / "okx-real"
MANIFEST = json.loads((REAL / "manifest.json").read_text())
DECIDING = ("captured", "quoted")
ORDER = {"instId": "LTC-USDT", "tdMode": "cash", "side": "buy", "ordType": "market", "sz": "0.1",
         "tgtCcy": "base_ccy"}


def _type(v: object) -> str:
    return "string" if isinstance(v, str) else "bool" if isinstance(v, bool) else \
        "number" if isinstance(v, (int, float)) else "list" if isinstance(v, list) else \
        "object" if isinstance(v, dict) else "null"


def differences(real: object, ours: object, where: str = "") -> list[str]:
    """Each key of ``real`` that ``ours`` lacks or types otherwise, by its path."""
    if _type(real) != _type(ours):
        return [f"{where or 'body'}: OKX sends a {_type(real)}, the simulator a {_type(ours)}"]
    if isinstance(real, dict) and isinstance(ours, dict):
        out = []
        for key, value in real.items():
            at = f"{where}.{key}" if where else key
            out += [f"{at}: missing"] if key not in ours else differences(value, ours[key], at)
        return out
    return []


def _records(body: dict, where: str) -> list[dict]:
    if where == "data[0].details":
        return body["data"][0]["details"]
    return body["data"]


@pytest.fixture(scope="module")
def answers() -> dict[str, tuple[int, dict]]:
    """One answer of the simulator for each endpoint and behaviour the manifest names."""
    got: dict[str, tuple[int, dict]] = {}
    with running(prices=PRICES, credentials=CREDENTIALS) as sim:
        url = sim.url
        placed = raw(url, "POST", "/api/v5/trade/order", {**ORDER, "clOrdId": "fid1", "tag": "apex"})
        got["POST trade/order"] = placed
        ord_id = placed[1]["data"][0]["ordId"]
        got["POST trade/batch-orders"] = raw(url, "POST", "/api/v5/trade/batch-orders",
                                             [{**ORDER, "clOrdId": "fid2"}])
        got["GET trade/order (ordId)"] = raw(url, "GET", f"/api/v5/trade/order?instId=LTC-USDT&ordId={ord_id}")
        got["GET trade/order (clOrdId)"] = raw(url, "GET", "/api/v5/trade/order?instId=LTC-USDT&clOrdId=fid1")
        rest = {**ORDER, "ordType": "post_only", "px": "40", "clOrdId": "fid3"}
        assert raw(url, "POST", "/api/v5/trade/order", rest)[1]["code"] == "0"
        got["GET trade/orders-pending"] = raw(url, "GET", "/api/v5/trade/orders-pending?instType=SPOT")
        got["POST trade/cancel-order"] = raw(url, "POST", "/api/v5/trade/cancel-order",
                                             {"instId": "LTC-USDT", "clOrdId": "fid3"})
        got["GET trade/orders-history"] = raw(url, "GET", "/api/v5/trade/orders-history?instType=SPOT&state=filled")
        got["GET trade/fills"] = raw(url, "GET", "/api/v5/trade/fills?instId=LTC-USDT")
        got["GET trade/fills-history"] = raw(url, "GET", "/api/v5/trade/fills-history?instType=SPOT")
        got["GET market/trades"] = raw(url, "GET", "/api/v5/market/trades?instId=LTC-USDT")
        got["GET market/ticker"] = raw(url, "GET", "/api/v5/market/ticker?instId=BTC-USDT")
        got["GET public/instruments"] = raw(url, "GET", "/api/v5/public/instruments?instType=SPOT")
        got["GET public/time"] = raw(url, "GET", "/api/v5/public/time")
        got["GET account/balance"] = got["GET account/balance details[]"] = raw(url, "GET", "/api/v5/account/balance")
        swap = {"instId": "BTC-USDT-SWAP", "tdMode": "isolated", "side": "buy", "ordType": "market", "sz": "1",
                "clOrdId": "fidswap"}
        assert raw(url, "POST", "/api/v5/trade/order", swap)[1]["code"] == "0"  # a position to list
        got["GET account/positions"] = raw(url, "GET", "/api/v5/account/positions")
        got["51008 insufficient balance"] = raw(url, "POST", "/api/v5/trade/order",
                                                {**ORDER, "sz": "100000000", "clOrdId": ""})
        got["51001 unknown instId"] = raw(url, "POST", "/api/v5/trade/batch-orders", [
            {**ORDER, "sz": "-1", "clOrdId": "bad1"}, {**ORDER, "instId": "NOPE-USDT", "clOrdId": "bad2"}])
        assert raw(url, "POST", "/api/v5/trade/order", {**rest, "clOrdId": "fid4"})[1]["code"] == "0"
        got["batch with one bad order"] = raw(url, "POST", "/api/v5/trade/cancel-batch-orders", [
            {"instId": "LTC-USDT", "clOrdId": "fid4"}, {"instId": "LTC-USDT", "ordId": "590908544950571222"}])
        got["order refused (envelope)"] = got["51001 unknown instId"]
        got["unknown /api/v5 path"] = raw(url, "GET", "/api/v5/trade/nothing-here")
        got["invalid OK-ACCESS-KEY"] = raw(url, "GET", "/api/v5/account/balance",
                                           headers={"OK-ACCESS-KEY": "nobody", "OK-ACCESS-SIGN": "x",
                                                    "OK-ACCESS-PASSPHRASE": "p",
                                                    "OK-ACCESS-TIMESTAMP": _now_iso()})
    with running(prices=PRICES, credentials=CREDENTIALS, clock=lambda: 0.0) as sim:
        for _ in range(10):  # OKX's 10 balance requests in two seconds, then the 11th
            assert raw(sim.url, "GET", "/api/v5/account/balance")[0] == 200
        got["50011 rate limit"] = raw(sim.url, "GET", "/api/v5/account/balance")
    return got


def _now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cases() -> list:
    out = []
    for s in MANIFEST["samples"]:
        if "websocket" in s:
            continue  # held against the orders channel's push in test_okx_ws_push_has_okx_fields
        for what in s.get("endpoints") or [s["behaviour"]]:
            out.append(pytest.param(s, what, id=f"{s['file']}:{what}"))
    return out


@pytest.mark.parametrize(("sample", "what"), _cases())
def test_the_simulator_answers_as_okx_does(answers, sample, what):
    real = json.loads((REAL / sample["file"]).read_text())
    status, ours = answers[what]
    found = []
    if "http_status" in sample and status != sample["http_status"]:
        found.append(f"HTTP {status}, OKX {sample['http_status']}")
    if sample["records"] == "none":
        found += differences(real, ours)
        found += [f"{k}: {ours.get(k)!r}, OKX {real[k]!r}" for k in ("code", "msg") if ours.get(k) != real[k]]
    else:
        found += differences({k: v for k, v in real.items() if k != "data"}, ours)
        kept = {k: v for k, v in sample.get("only_records_with", {}).items()}
        theirs = [r for r in _records(real, sample["records"]) if all(r.get(k) == v for k, v in kept.items())]
        mine = _records(ours, sample["records"])
        assert mine, f"{what}: the simulator answered no record: {ours}"
        for r in theirs:
            found += differences(r, mine[0], sample["records"])
        if "behaviour" in sample:  # a refusal: OKX's codes, each order's in turn
            found += [f"code {ours['code']!r}, OKX {real['code']!r}"] if ours["code"] != real["code"] else []
            codes = [r["sCode"] for r in _records(real, "data")]
            if [r["sCode"] for r in mine] != codes:
                found.append(f"sCodes {[r['sCode'] for r in mine]}, OKX {codes}")
        if sample.get("filled_spot_order"):
            found += _same_kind(theirs[0], mine[0])
    if sample["kind"] not in DECIDING:
        pytest.skip(f"{sample['kind']}, reported only: " + ("; ".join(found) or "no difference"))
    assert not found, f"{sample['file']} ({what}): " + "; ".join(found)


def _same_kind(real: dict, ours: dict) -> list[str]:
    """A filled spot market buy sized in the base currency, as OKX records one."""
    out = [f"{k}: {ours[k]!r}, OKX {real[k]!r}" for k in ("instType", "ordType", "side", "state", "tdMode",
                                                           "tgtCcy", "posSide", "category", "rebateCcy")
           if ours.get(k) != real[k]]
    if ours["feeCcy"] != ours["instId"].split("-")[0]:
        out.append(f"feeCcy {ours['feeCcy']}: OKX takes a spot buy's fee in the coin bought")
    if not float(ours["fee"]) < 0 or ours["accFillSz"] != ours["sz"] or not ours["tradeId"]:
        out.append("a filled order carries its negative fee, its whole size filled and its latest tradeId")
    return out


def test_the_orders_channel_pushes_okx_fields(okx_sim):
    """Held against the orders push recorded from OKX (edited there only in clOrdId and
    execType, which do not change its keys): what the book tells the sockets to push."""
    real = json.loads((REAL / "nautilus_ws_orders.json").read_text())["data"][0]
    pushes: list[dict] = []
    okx_sim.server.sim.book.watchers.append(pushes.append)
    raw(okx_sim.url, "POST", "/api/v5/trade/order", {**ORDER, "clOrdId": "push1"})
    assert [p["state"] for p in pushes] == ["live", "filled"]
    assert differences(real, pushes[-1]) == []
    assert pushes[-1]["execType"] == "T" and pushes[-1]["fillSz"] == "0.1"
