"""OKX's documented request limits, which the simulator enforces: a request beyond one is
refused whole with 50011, as OKX does, so a client that paces itself wrongly finds out.

Each limit counts over a sliding two-second window: a request is admitted only if every
limit it counts towards has room for it, and only admitted requests are counted."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

WINDOW_S = 2.0
PLACE_PER_INSTRUMENT = 60  # POST trade/order requests, per instrument
BATCH_PER_INSTRUMENT = 300  # orders in POST trade/batch-orders, per instrument
ORDERS_PER_ACCOUNT = 1000  # orders placed by either, account-wide
BATCH_MAX = 20  # orders in one batch request
GET_ORDER_PER_INSTRUMENT = 60
PENDING = 60
HISTORY = 40  # GET trade/orders-history (the last seven days), per user
CANCEL_PER_INSTRUMENT = 60
BALANCE = 10
POSITIONS = 10
FILLS_HISTORY = 10

Costs = dict[tuple[str, ...], tuple[int, int]]  # limit -> (what this request counts, the limit)


def costs(method: str, path: str, query: dict, body: object) -> Costs:
    """What one request counts towards each limit it falls under."""
    orders = body if isinstance(body, list) else [body] if isinstance(body, dict) else []
    if method == "POST" and path == "trade/order":
        inst = str(orders[0].get("instId", "")) if orders else ""
        return {("order", inst): (1, PLACE_PER_INSTRUMENT), ("account",): (1, ORDERS_PER_ACCOUNT)}
    if method == "POST" and path == "trade/batch-orders":
        out: Costs = {("account",): (len(orders), ORDERS_PER_ACCOUNT)}
        for o in orders:
            key = ("batch", str(o.get("instId", "")) if isinstance(o, dict) else "")
            out[key] = (out.get(key, (0, 0))[0] + 1, BATCH_PER_INSTRUMENT)
        return out
    if method == "POST" and path == "trade/cancel-order":
        return {("cancel", str(orders[0].get("instId", "")) if orders else ""): (1, CANCEL_PER_INSTRUMENT)}
    if method == "POST" and path == "trade/cancel-batch-orders":
        out = {}
        for o in orders:
            key = ("cancel-batch", str(o.get("instId", "")) if isinstance(o, dict) else "")
            out[key] = (out.get(key, (0, 0))[0] + 1, BATCH_PER_INSTRUMENT)
        return out
    if method == "GET" and path == "trade/order":
        return {("get", query.get("instId", "")): (1, GET_ORDER_PER_INSTRUMENT)}
    if method == "GET" and path == "trade/orders-pending":
        return {("pending",): (1, PENDING)}
    if method == "GET" and path == "trade/orders-history":
        return {("history",): (1, HISTORY)}
    if method == "GET" and path == "account/balance":
        return {("balance",): (1, BALANCE)}
    if method == "GET" and path == "trade/fills-history":
        return {("fills-history",): (1, FILLS_HISTORY)}
    if method == "GET" and path == "account/positions":
        return {("positions",): (1, POSITIONS)}
    return {}


class Windows:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.used: dict[tuple[str, ...], deque[tuple[float, int]]] = defaultdict(deque)
        self.refused = 0  # requests answered 50011: a well-paced client draws none

    def admit(self, wanted: Costs) -> bool:
        with self.lock:
            now = self.clock()
            for key, (n, cap) in wanted.items():
                if self._in_window(key, now) + n > cap:
                    self.refused += 1
                    return False
            for key, (n, _) in wanted.items():
                self.used[key].append((now, n))
            return True

    def _in_window(self, key: tuple[str, ...], now: float) -> int:
        q = self.used[key]
        while q and q[0][0] <= now - WINDOW_S:
            q.popleft()
        return sum(n for _, n in q)
