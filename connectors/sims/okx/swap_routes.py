"""The ``/api/v5`` routes only swaps need (positions, account mode, leverage, bills,
funding rates), answered from the simulator's ``Swaps`` in OKX's envelope. ``server.py``
adds them to its table and sends swap instruments, tickers and orders here by instType."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from connectors.sims.okx.state import Refusal

if TYPE_CHECKING:
    from connectors.sims.okx.server import Sim


def _reply(data: list, code: str = "0", msg: str = "") -> web.Response:
    return web.json_response({"code": code, "msg": msg, "data": data})


def _answer(make: Callable[[], list]) -> web.Response:
    try:
        return _reply(make())
    except Refusal as r:
        return _reply([], r.code, r.msg)


def positions(sim: Sim, q: dict, body: object) -> web.Response:
    return _answer(lambda: sim.swaps.position_records(q.get("instId", ""), q.get("instType", "")))


def set_leverage(sim: Sim, q: dict, body: object) -> web.Response:
    return _answer(lambda: [sim.swaps.set_leverage(body if isinstance(body, dict) else {})])


def funding_rate(sim: Sim, q: dict, body: object) -> web.Response:
    return _answer(lambda: [sim.swaps.funding_rate(q.get("instId", ""))])


def bills(sim: Sim, q: dict, body: object) -> web.Response:
    return _answer(lambda: sim.swaps.bills_of(q)[: min(100, int(q.get("limit") or 100))])


ROUTES: dict[tuple[str, str], Callable[[Sim, dict, object], web.Response]] = {
    ("GET", "account/positions"): positions,
    ("GET", "account/config"): lambda sim, q, b: _reply(sim.swaps.config()),
    ("POST", "account/set-leverage"): set_leverage,
    ("GET", "account/bills"): bills,
    ("GET", "account/bills-archive"): bills,
    ("GET", "public/funding-rate"): funding_rate,
}
