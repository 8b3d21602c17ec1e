"""The ``/api/v5`` routes the ccxt okx client calls, answered in OKX's envelope
(``{"code": "0", "msg": "", "data": [...]}``, per-order ``sCode``/``sMsg``), behind the
simulated latency, the armed faults and OKX's rate limits, in that order.

Private routes check the request's OK-ACCESS headers and signature as OKX does (``auth``);
public ones (``public/``, ``market/``) are open. Every envelope carries the gateway's
``inTime`` and ``outTime`` (microseconds), as OKX's do.

Every order in every placement request (``trade/order``, ``trade/batch-orders``) is counted
by clOrdId as it arrives, before faults and limits: what was sent, taken or not."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from connectors.sims.okx import dead_man
from connectors.sims.okx import auth
from connectors.sims.okx.faults import Fault, Faults
from connectors.sims.okx.limits import BATCH_MAX, Windows, costs
from connectors.sims.okx.state import Book, Refusal, now_ms
from connectors.sims.okx.swap import Swaps, is_swap
from connectors.sims.okx.swap_routes import ROUTES as SWAP_ROUTES
from connectors.sims.okx.ws import Credentials, Sockets

TIMED_OUT = "Endpoint request timeout. Does not indicate success or failure of order, please check order status."


class Sim:
    """Everything one running simulator holds: its book, its limits, its armed faults."""

    def __init__(self, book: Book, *, latency_ms: float = 0.0, hang_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, credentials: Credentials | None = None):
        self.book, self.windows, self.faults = book, Windows(clock), Faults()
        self.swaps = Swaps(book)  # perpetual swaps: positions, leverage, funding beside the book's spot
        self.sockets = Sockets(credentials)
        self.credentials = credentials
        book.watchers.append(self.sockets.changed)
        self.latency_ms, self.hang_s = latency_ms, hang_s
        self.clock_skew_s = 0.0  # public/time answers this far from this machine's clock
        self.stopping: asyncio.Event | None = None  # made in the server's loop; ends every hang
        self._requests: Counter[str] = Counter()  # "GET trade/order" -> how many arrived, refused or not
        self._placed: Counter[str] = Counter()  # clOrdId -> how many times it arrived in a placement request
        self._counting = threading.Lock()  # a test's thread reads the counts while the server writes them

    def count(self, method: str, path: str) -> None:
        with self._counting:
            self._requests[f"{method} {path}"] += 1

    def count_placements(self, body: object) -> None:
        orders = body if isinstance(body, list) else [body]
        with self._counting:
            for o in orders:
                self._placed[str(o.get("clOrdId") or "") if isinstance(o, dict) else ""] += 1

    def placements(self) -> dict[str, int]:
        """How many times each clOrdId was sent to be placed ("" for orders without one)."""
        with self._counting:
            return dict(self._placed)

    def requests(self) -> dict[str, int]:
        with self._counting:
            return dict(self._requests)


SIM = web.AppKey("sim", Sim)


def _us() -> str:
    return str(time.time_ns() // 1000)


def reply(data: list, code: str = "0", msg: str = "", status: int = 200) -> web.Response:
    """OKX's envelope; ``inTime`` is filled in when the request arrived (see ``api``)."""
    return web.json_response({"code": code, "msg": msg, "data": data, "inTime": "", "outTime": _us()},
                             status=status)


def bare(code: str, msg: str, status: int) -> web.Response:
    """OKX's answer refusing a request before any route: code and message, no data."""
    return web.json_response({"msg": msg, "code": code}, status=status)


NOT_FOUND = {"code": 404, "data": {}, "detailMsg": "", "error_code": "404", "error_message": "Not Found",
             "msg": "Not Found"}  # OKX's answer for a path it does not serve, code a number


def _ack(o: dict) -> dict:
    return {"clOrdId": o["clOrdId"], "ordId": o["ordId"], "tag": o["tag"], "ts": now_ms(), "sCode": "0",
            "sMsg": "Order placed"}


def _refused(req: object, r: Refusal) -> dict:
    cl, tag = (str(req.get(k) or "") for k in ("clOrdId", "tag")) if isinstance(req, dict) else ("", "")
    return {"clOrdId": cl, "ordId": "", "tag": tag, "ts": now_ms(), "sCode": r.code, "sMsg": r.msg}


def _orders(sim: Sim, reqs: list) -> web.Response:
    """Each order taken or refused on its own: code 0 all taken, 1 none, 2 some."""
    out = []
    for req in reqs:
        try:
            if not isinstance(req, dict):
                raise Refusal("51000", "Parameter error")
            out.append(_ack(sim.swaps.place(req) if is_swap(req.get("instId")) else sim.book.place(req)))
        except Refusal as r:
            out.append(_refused(req, r))
    return _each(out)


def place(sim: Sim, q: dict, body: object) -> web.Response:
    return _orders(sim, [body])


def batch(sim: Sim, q: dict, body: object) -> web.Response:
    if not isinstance(body, list) or not 1 <= len(body) <= BATCH_MAX:
        return reply([], "51000", f"Parameter error: 1 to {BATCH_MAX} orders a request")
    return _orders(sim, body)


def get_order(sim: Sim, q: dict, body: object) -> web.Response:
    if not q.get("instId") or not (q.get("ordId") or q.get("clOrdId")):
        return reply([], "51000", "Parameter instId and ordId or clOrdId required")
    o = sim.book.order(q["instId"], q.get("ordId", ""), q.get("clOrdId", ""))
    return reply([o]) if o is not None else reply([], "51603", "Order does not exist")


def _cancel_one(book: Book, req: object) -> dict:
    req = req if isinstance(req, dict) else {}
    try:
        o = book.cancel(str(req.get("instId", "")), str(req.get("ordId", "")), str(req.get("clOrdId", "")))
    except Refusal as r:
        return {"clOrdId": str(req.get("clOrdId", "")), "ordId": str(req.get("ordId", "")), "sCode": r.code,
                "sMsg": r.msg, "ts": now_ms()}
    return {"clOrdId": o["clOrdId"], "ordId": o["ordId"], "sCode": "0", "sMsg": "", "ts": now_ms()}


def _each(out: list[dict]) -> web.Response:
    """Per-order answers in OKX's envelope: code 0 all done, 1 none, 2 some."""
    failed = sum(1 for o in out if o["sCode"] != "0")
    if failed == 0:
        return reply(out)
    if failed == len(out):
        return reply(out, "1", "All operations failed")
    return reply(out, "2", "Bulk operation partially successful")


def cancel(sim: Sim, q: dict, body: object) -> web.Response:
    return _each([_cancel_one(sim.book, body)])


def cancel_batch(sim: Sim, q: dict, body: object) -> web.Response:
    if not isinstance(body, list) or not 1 <= len(body) <= BATCH_MAX:
        return reply([], "51000", f"Parameter error: 1 to {BATCH_MAX} orders a request")
    return _each([_cancel_one(sim.book, req) for req in body])


def instruments(sim: Sim, q: dict, body: object) -> web.Response:
    if q.get("instType") == "SWAP":
        return reply(sim.swaps.instruments())
    return reply(sim.book.instruments() if q.get("instType", "SPOT") == "SPOT" else [])


def ticker(sim: Sim, q: dict, body: object) -> web.Response:
    try:
        inst = q.get("instId", "")
        return reply([sim.swaps.ticker(inst) if is_swap(inst) else sim.book.ticker(inst)])
    except Refusal as r:
        return reply([], r.code, r.msg)


def candles(sim: Sim, q: dict, body: object) -> web.Response:
    """1-minute candlesticks (the only bar the simulator keeps), newest first, ``limit`` of them
    (100 unless told, 300 at most, as OKX's recent candles)."""
    if q.get("bar", "1m") != "1m":
        return reply([], "51000", "Parameter bar error: the simulator keeps 1m bars only")
    try:
        limit = min(300, max(1, int(q.get("limit", 100))))
    except ValueError:
        return reply([], "51000", "Parameter limit error")
    try:
        return reply(sim.book.candles(q.get("instId", ""), limit))
    except Refusal as r:
        return reply([], r.code, r.msg)


def trades(sim: Sim, q: dict, body: object) -> web.Response:
    """The latest public trades of an instrument (at most ``limit``, 100 unless told, 500 at most)."""
    try:
        limit = min(500, max(1, int(q.get("limit", 100))))
    except ValueError:
        return reply([], "51000", "Parameter limit error")
    try:
        return reply(sim.book.trades(q.get("instId", ""), limit))
    except Refusal as r:
        return reply([], r.code, r.msg)


def _page(q: dict, records: list[dict], key: str) -> list[dict]:
    """One page of ``records`` (newest first), as OKX pages them by the id in ``key``:
    ``after`` older than that id, ``before`` newer (the ones next to it), at most
    ``limit`` (100 at most, the default). Raises ValueError for a cursor that is no id."""
    try:
        limit = min(100, max(1, int(q.get("limit", 100))))
    except ValueError:
        limit = 100
    after, before = q.get("after", ""), q.get("before", "")
    if after:
        records = [r for r in records if int(r[key]) < int(after)]
    if before:
        records = [r for r in records if int(r[key]) > int(before)]
        return records[-limit:]  # the newer records next to the cursor, still newest first
    return records[:limit]


Records = Callable[[Sim, dict], list[dict]]


def paged(records: Records, key: str) -> Callable[[Sim, dict, object], web.Response]:
    """A route answering one page of what ``records`` lists for the query."""
    def answer(sim: Sim, q: dict, body: object) -> web.Response:
        try:
            return reply(_page(q, records(sim, q), key))
        except ValueError:
            return reply([], "51000", "Parameter after or before error")
    return answer


def _history(sim: Sim, q: dict) -> list[dict]:
    return sim.book.history(q["instType"], q.get("instId", ""), q.get("state", ""))


def history(sim: Sim, q: dict, body: object) -> web.Response:
    """Completed orders of one instrument type (OKX requires it), newest first."""
    if not q.get("instType"):
        return reply([], "51000", "Parameter instType error")
    if q.get("state", "") not in ("", "filled", "canceled"):
        return reply([], "51000", "Parameter state error")
    return paged(_history, "ordId")(sim, q, body)


def _fills(sim: Sim, q: dict) -> list[dict]:
    return sim.book.fills_of(q.get("instId", ""), q.get("ordId", ""))


def server_time(sim: Sim, q: dict, body: object) -> web.Response:
    """OKX's ``public/time``: the server's clock in ms, set off by ``clock_skew_s``."""
    return reply([{"ts": str(int((time.time() + sim.clock_skew_s) * 1000))}])


ROUTES: dict[tuple[str, str], Callable[[Sim, dict, object], web.Response]] = {
    ("GET", "public/time"): server_time,
    ("GET", "public/instruments"): instruments,
    ("GET", "market/ticker"): ticker,
    ("GET", "market/trades"): trades,
    ("GET", "market/candles"): candles,
    ("GET", "asset/currencies"): lambda sim, q, b: reply(sim.book.currencies()),
    ("GET", "account/balance"): lambda sim, q, b: reply(sim.book.balance()),
    ("POST", "trade/order"): place,
    ("POST", "trade/batch-orders"): batch,
    ("GET", "trade/order"): get_order,
    ("GET", "trade/orders-pending"): paged(lambda sim, q: sim.book.pending(q.get("instId", ""),
                                                                           q.get("instType", "")), "ordId"),
    ("GET", "trade/orders-history"): history,
    ("POST", "trade/cancel-order"): cancel,
    ("POST", "trade/cancel-all-after"): dead_man.route,  # the dead man's switch (dead_man.py)
    ("POST", "trade/cancel-batch-orders"): cancel_batch,
    ("GET", "trade/fills"): paged(_fills, "billId"),
    ("GET", "trade/fills-history"): paged(_fills, "billId"),
    **SWAP_ROUTES,
}


async def api(request: web.Request) -> web.StreamResponse:
    arrived = _us()
    answer = await _api(request)
    if isinstance(answer, web.Response) and answer.body and answer.content_type == "application/json":
        doc = json.loads(answer.body)
        if isinstance(doc, dict) and doc.get("inTime") == "":
            doc["inTime"] = arrived  # when the gateway took the request, as OKX stamps it
            answer.body = json.dumps(doc).encode()
    return answer


async def _api(request: web.Request) -> web.StreamResponse:
    sim: Sim = request.app[SIM]
    path, method = request.match_info["path"], request.method
    handler = ROUTES.get((method, path))
    sim.count(method, path if handler is not None else "(unknown)")  # on arrival, before the latency
    if sim.latency_ms > 0:
        await asyncio.sleep(sim.latency_ms / 1000)
    if handler is None:
        return web.json_response(NOT_FOUND, status=404)
    text = await request.text() if method == "POST" else ""
    body: object = None
    if method == "POST":
        try:
            body = json.loads(text or "null")
        except ValueError:
            return reply([], "50002", "Invalid JSON")
        if path in ("trade/order", "trade/batch-orders"):
            sim.count_placements(body)  # what was sent, whether or not the venue takes it
    if auth.is_private(path):
        refused = auth.refusal(request.headers, method, request.raw_path, text, sim.credentials, time.time())
        if refused is not None:
            return bare(*refused, status=401)
    query = dict(request.query)
    fault = sim.faults.take(path)
    if fault is not None and fault.kind == "reject":
        orders = body if isinstance(body, list) else [body]
        return reply([_refused(o, Refusal(fault.code, fault.msg)) for o in orders], "1", "All operations failed")
    if fault is not None and (fault.kind == "http_5xx" or not fault.accept):
        return await _fail(sim, request, fault, None)
    if (fault is not None and fault.kind == "rate_limit") or not sim.windows.admit(costs(method, path, query, body)):
        return bare("50011", "Too Many Requests", status=429)
    answer = handler(sim, query, body)
    if method == "POST":
        sim.book.save()
        sim.swaps.save()
    return answer if fault is None else await _fail(sim, request, fault, answer)


async def _fail(sim: Sim, request: web.Request, fault: Fault, answer: web.Response | None) -> web.StreamResponse:
    """Answers as the armed fault says; ``answer``: what the venue did, if it took the request."""
    if fault.kind == "http_5xx":
        return web.Response(status=fault.status, text="Service Unavailable")
    if fault.kind == "code_50004":
        return reply([], "50004", TIMED_OUT)
    if fault.kind == "hang":
        assert sim.stopping is not None
        try:
            await asyncio.wait_for(sim.stopping.wait(), sim.hang_s)
        except asyncio.TimeoutError:
            pass
        return answer if answer is not None else reply([], "50004", TIMED_OUT)
    # drop: the connection closes with no answer, as when a link fails after the venue took the order
    if request.transport is not None:
        request.transport.abort()
    return web.Response()  # written to a closed connection: nobody reads it


def make_app(sim: Sim, control: Callable[[web.Application], None]) -> web.Application:
    app = web.Application()
    app[SIM] = sim
    app.router.add_route("*", "/api/v5/{path:.*}", api)
    app.router.add_get("/ws/v5/private", sim.sockets.serve)
    control(app)
    return app
