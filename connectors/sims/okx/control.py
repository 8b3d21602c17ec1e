"""The ``/sim`` routes, apart from OKX's own: what a test or a demo sets while the simulator
runs (prices, balances, the share that fills, latency, faults, dropped sockets) and what it
counts (``stats``, ``placements`` by clOrdId, ``sockets``). ``sim_routes.CONTROLS`` describes
each for ``apex sim okx --help``: a route added here is added there."""

from __future__ import annotations

import json

from aiohttp import web

from connectors.sims.okx.matching import Depth
from connectors.sims.okx.server import SIM, Sim
from connectors.sims.okx.state import Refusal


def stats(sim: Sim) -> dict:
    return {"accepted": sim.book.accepted(), "rate_limited": sim.windows.refused,
            "requests": sim.requests()}


def depth(doc: dict) -> Depth:
    """The market drawn around each last price, from a /sim/depth body (omitted keys: the defaults)."""
    from decimal import Decimal

    plain = Depth()
    return Depth(half_spread_bps=Decimal(str(doc.get("half_spread_bps", plain.half_spread_bps))),
                 step_bps=Decimal(str(doc.get("step_bps", plain.step_bps))),
                 levels=int(doc.get("levels", plain.levels)),
                 level_notional=Decimal(str(doc.get("level_notional", plain.level_notional))))


async def _body(request: web.Request) -> dict:
    try:
        doc = json.loads(await request.text() or "{}")
    except ValueError:
        raise web.HTTPBadRequest(text="a JSON object, please") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text="a JSON object, please")
    return doc


async def control(request: web.Request) -> web.Response:
    sim: Sim = request.app[SIM]
    what = request.match_info["what"]
    if request.method == "GET" and what == "stats":
        return web.json_response(stats(sim))
    if request.method == "GET" and what == "placements":
        return web.json_response(sim.placements())
    if request.method == "GET" and what == "sockets":
        return web.json_response(sim.sockets.stats())
    doc = await _body(request)
    try:
        if what == "fault":
            sim.faults.arm(str(doc["kind"]), times=int(doc.get("times", 1)),
                           paths=doc.get("paths", ("trade/order", "trade/batch-orders")),
                           accept=bool(doc.get("accept", True)), status=int(doc.get("status", 503)),
                           code=str(doc.get("code", "51008")), msg=str(doc.get("msg", "Order failed")))
        elif what == "clear-faults":
            sim.faults.clear()
        elif what == "price":
            sim.book.set_price(str(doc["instId"]), float(doc["px"]), float(doc.get("vol", 0)))
        elif what == "balance":
            sim.book.set_balance(str(doc["ccy"]), float(doc["amount"]))
        elif what == "fill-ratio":
            ratio = float(doc["ratio"])
            if not 0 <= ratio <= 1:
                raise ValueError("ratio must be from 0 to 1")
            sim.book.set_fill_ratio(ratio)
        elif what == "depth":
            sim.book.set_depth(depth(doc))
        elif what == "drop-sockets":
            sim.sockets.drop(refuse=bool(doc.get("refuse", False)))
        elif what == "clock":
            sim.clock_skew_s = float(doc["skew_s"])
        elif what == "funding":
            rate = doc.get("rate")
            sim.swaps.fund(None if rate is None else float(rate), str(doc.get("instId", "")))
        elif what == "latency":
            sim.latency_ms = max(0.0, float(doc["latency_ms"]))
        else:
            raise web.HTTPNotFound(text=f"no control {what!r}")
    except Refusal as r:
        raise web.HTTPBadRequest(text=f"{what}: {r.msg}") from None
    except (KeyError, TypeError, ValueError, ArithmeticError) as e:
        raise web.HTTPBadRequest(text=f"{what}: {e}") from None
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", "/sim/{what}", control)
