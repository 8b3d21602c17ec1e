"""OKX's documented request limits, kept on the client's side so that a burst of orders is
paced to exactly what OKX allows: never refused with 50011, never held back for nothing.
(ccxt's own pacing spaces every call evenly, far below these limits, so it is off.)

A limit allows so many units (requests, or orders for the batch limits) in any two-second
window. OKX counts a request when it arrives, somewhere between the moment it is sent and
the moment its answer is back, so a request holds its place in the window from when it
is sent until two seconds after its answer: however the transit times vary, no two
requests the venue sees less than two seconds apart are more than a limit allows."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WINDOW_S = 2.0
PLACE_PER_INSTRUMENT = 60  # POST trade/order requests
BATCH_PER_INSTRUMENT = 300  # orders in POST trade/batch-orders
ORDERS_PER_ACCOUNT = 1000  # orders placed, account-wide, each batch element counted
BATCH_MAX = 20  # orders in one batch request
GET_ORDER_PER_INSTRUMENT = 60
PENDING = 60  # GET trade/orders-pending, per user
HISTORY = 40  # GET trade/orders-history (the last seven days), per user
PAGE = 100  # records in one page of either list
PENDING_PAGES = 40  # pages enough for every working order OKX lets an account hold
HISTORY_PAGES = 40  # how far back one look reads completed orders; older ones are asked one by one
CANCEL_PER_INSTRUMENT = 60
BALANCE = 10
POSITIONS = 10
INSTRUMENTS = 20
SET_LEVERAGE_PER_USER = 20  # POST account/set-leverage
BILLS_ARCHIVE = 5  # GET account/bills-archive (funding history)
BILL_PAGES = 50  # pages one look at the funding bills reads at most

Key = tuple[str, ...]
Costs = dict[Key, tuple[int, int]]  # limit -> (units this request takes, the limit)


def batch(inst_ids: list[str]) -> Costs:
    out: Costs = {("account",): (len(inst_ids), ORDERS_PER_ACCOUNT)}
    for inst in inst_ids:
        out[("batch", inst)] = (out.get(("batch", inst), (0, 0))[0] + 1, BATCH_PER_INSTRUMENT)
    return out


def get_order(inst: str) -> Costs:
    return {("get", inst): (1, GET_ORDER_PER_INSTRUMENT)}


def cancel(inst: str) -> Costs:
    return {("cancel", inst): (1, CANCEL_PER_INSTRUMENT)}


PENDING_ORDERS: Costs = {("pending",): (1, PENDING)}
ORDERS_HISTORY: Costs = {("history",): (1, HISTORY)}
BALANCES: Costs = {("balance",): (1, BALANCE)}
MARKETS: Costs = {("instruments",): (1, INSTRUMENTS)}
POSITIONS_READ: Costs = {("positions",): (1, POSITIONS)}
SET_LEVERAGE: Costs = {("set-leverage",): (1, SET_LEVERAGE_PER_USER)}
BILLS: Costs = {("bills",): (1, BILLS_ARCHIVE)}


class Pacer:
    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.clock, self.sleep = clock, sleep
        self.lock = threading.Lock()
        self.held: dict[Key, list[list[float]]] = defaultdict(list)  # [answered at (inf while out), units]

    @contextmanager
    def slot(self, wanted: Costs) -> Iterator[None]:
        """Waits until every limit ``wanted`` names has room, holds it for the request."""
        entries = self._acquire(wanted)
        try:
            yield
        finally:
            with self.lock:
                now = self.clock()
                for e in entries:
                    e[0] = now

    def _acquire(self, wanted: Costs) -> list[list[float]]:
        while True:
            with self.lock:
                now = self.clock()
                wait = max((self._wait(key, n, cap, now) for key, (n, cap) in wanted.items()), default=0.0)
                if wait <= 0:
                    entries = [[math.inf, float(n)] for n, _ in wanted.values()]
                    for key, e in zip(wanted, entries):
                        self.held[key].append(e)
                    return entries
            self.sleep(wait)

    def _wait(self, key: Key, n: int, cap: int, now: float) -> float:
        """How long until ``n`` more units fit under ``cap`` (0: they fit now)."""
        held = self.held[key]
        held[:] = [e for e in held if e[0] > now - WINDOW_S]
        excess = sum(e[1] for e in held) + n - cap
        if excess <= 0:
            return 0.0
        freed = 0.0
        for answered, units in sorted(held):
            if answered == math.inf:
                break
            freed += units
            if freed >= excess:
                return answered + WINDOW_S - now
        return 0.005  # held by requests still out: room comes once they are answered
