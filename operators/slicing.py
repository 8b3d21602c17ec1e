"""Slicing: an order too large for its market is sent as children over time (TWAP).

Pure: the rule that says when an order is too large (its share of the symbol's
last-minute volume), the plan (each child's size, due time and client order id), the
check each child passes when it falls due, and the rolling volume it reads. The book's
step (``dataflows/``) keeps the plan in the ledger and emits each child as a command
when it is due; nothing here waits or talks to anyone.

The rules:

- An order of at most ``max_volume_share`` of its symbol's volume over the last minute
  is sent whole (exactly the share is not sliced). Without a known volume nothing can
  be measured, so nothing is sliced.
- A larger order becomes ``n`` children, each at most the share of that volume (in whole
  lots), spread evenly over ``window_s``. Volume is measured per minute, so children are
  never due less than a minute apart: an order needing more children than the window
  has minutes takes as many minutes as it has children.
- The children sum to the parent exactly; each child's id is derived from the parent's
  and its index, so it is stable across restarts and unique.
- When a child falls due it is sent only if it is still within the share of the volume
  of the minute before it; otherwise it waits for a later minute, up to ``window_s``
  past its due time, after which it is not sent (``volume``). A child due while its book
  is halted (a kill) is not sent either (``halted``): the parent's outcome is the sum of
  what its children did, and says what was not sent and why.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

MINUTE_MS = 60_000
# a float quantity made of whole lots may read a hair under them (0.3 / 0.1 = 2.9999999999999996)
_EPS = 1e-9

# children are a minute apart at least: more than a day of them is an order the market cannot take
MAX_CHILDREN = 1_440

SEND, WAIT, LATE, HALTED = "send", "wait", "volume", "halted"


class SlicingParams(BaseModel):
    """``- execute: {slicing: …}``: off when absent."""
    model_config = ConfigDict(extra="forbid")
    max_volume_share: float = Field(
        0.05, gt=0, le=1,
        description="the largest share of a symbol's last-minute volume one order (or child) may be")
    window_s: int = Field(300, ge=60, le=86_400, description="the children of a sliced order are spread over this long")
    min_child_usd: float = Field(
        0.0, ge=0,
        description="a child worth less is not worth sending: an order the volume would cut finer is refused")


def child_order_id(parent_id: str, index: int) -> str:
    """The client order id of a parent's ``index``-th child: derived from the parent's, in
    the parent's shape (32 alphanumerics), so the venue can be asked by it after a restart."""
    return "ax" + hashlib.sha256(f"{parent_id}#{index}".encode()).hexdigest()[:30]


def volume_cap(minute_volume: float | None, share: float) -> float | None:
    """The largest quantity one order may be; None: no volume known, nothing to measure."""
    if minute_volume is None or minute_volume <= 0:
        return None
    return share * minute_volume


def needs_slicing(quantity: float, minute_volume: float | None, share: float) -> bool:
    cap = volume_cap(minute_volume, share)
    return cap is not None and quantity > cap * (1 + _EPS)


@dataclass(frozen=True, slots=True)
class Child:
    index: int
    client_order_id: str
    quantity: float
    due_ms: int


@dataclass(frozen=True, slots=True)
class Plan:
    parent_id: str
    quantity: float
    children: tuple[Child, ...]
    give_up_ms: int  # past its due time by this long, a child held back by thin volume is not sent


class TooThin(ValueError):
    """The volume share allows children smaller than a lot, or than ``min_child_usd``, or
    needs more than ``MAX_CHILDREN`` of them."""


def plan(parent_id: str, quantity: float, price: float, minute_volume: float, start_ms: int,
         p: SlicingParams, lot_size: float = 0.0) -> Plan:
    """The children of an order ``needs_slicing`` said is too large. ``lot_size`` 0: any
    quantity goes (the paper venue). Raises ``TooThin`` when no child can be both within the
    share and at least a lot (and ``min_child_usd``)."""
    cap = volume_cap(minute_volume, p.max_volume_share)
    if cap is None or quantity <= 0:
        raise ValueError("a plan needs a positive quantity and a known volume")
    if lot_size > 0:
        lots = round(quantity / lot_size)
        per = math.floor(cap / lot_size + _EPS)  # the most lots one child may hold
        if per <= 0:
            raise TooThin(f"{p.max_volume_share:g} of the minute's volume ({minute_volume:g}) is less than a lot")
        n = -(-lots // per)
        _bounded(n)
        sizes = [lot_size * (lots // n + (1 if i < lots % n else 0)) for i in range(n)]
    else:
        n = math.ceil(quantity / cap - _EPS)
        _bounded(n)
        sizes = [quantity / n] * n
    sizes[-1] = quantity - math.fsum(sizes[:-1])  # exact: the children sum to the parent
    if min(sizes) * price < p.min_child_usd:
        raise TooThin(f"children of {min(sizes) * price:.2f} USD, under min_child_usd {p.min_child_usd:g}")
    step_ms = max(MINUTE_MS, p.window_s * 1000 // n)
    children = tuple(Child(i, child_order_id(parent_id, i), q, start_ms + i * step_ms) for i, q in enumerate(sizes))
    return Plan(parent_id, quantity, children, p.window_s * 1000)


def _bounded(n: int) -> None:
    if n > MAX_CHILDREN:
        raise TooThin(f"{n} children needed, more than {MAX_CHILDREN} (a day of minutes)")


def check(child: Child, now_ms: int, minute_volume: float | None, share: float, halted: bool,
          plan_: Plan) -> str:
    """What to do with a child that is due: SEND, WAIT (thin volume: asked again a minute
    later), or not sent: LATE (thin volume past ``give_up_ms``) or HALTED (its book is)."""
    if halted:
        return HALTED
    cap = volume_cap(minute_volume, share)
    if cap is None or child.quantity <= cap * (1 + _EPS):
        # no volume known: the plan's own, measured at the decision, is the best word there is
        return SEND
    return LATE if now_ms - child.due_ms >= plan_.give_up_ms else WAIT


@dataclass(frozen=True, slots=True)
class SliceOutcome:
    """The parent's outcome: the sum of its children's."""
    sent: float
    filled: float
    not_sent: float
    reasons: tuple[str, ...]  # why what was not sent was not (``volume``, ``halted``)


def parent_outcome(plan_: Plan, fates: dict[int, str], filled: dict[int, float]) -> SliceOutcome:
    """``fates``: child index -> SEND (sent), LATE or HALTED; a child without one is still due."""
    by = {c.index: c for c in plan_.children}
    sent = math.fsum(by[i].quantity for i, f in fates.items() if f == SEND)
    unsent = [(by[i].quantity, f) for i, f in fates.items() if f in (LATE, HALTED)]
    return SliceOutcome(sent, math.fsum(filled.values()), math.fsum(q for q, _ in unsent),
                        tuple(sorted({f for _, f in unsent})))


# a venue's candle says what traded in one minute: it stands for the last minute's volume
# until the minute after the next has begun (its reader asks again as each minute turns)
CANDLE_FRESH_MS = 3 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class CandleVolume:
    """A venue's word on a symbol's volume in one whole minute (from its 1-minute candles),
    for a book whose price stream does not carry volume. ``minute_ms``: the minute's start."""
    book: str
    market: str
    symbol: str
    minute_ms: int
    volume: float

    def fresh(self, now_ms: int) -> bool:
        return 0 <= now_ms - self.minute_ms < CANDLE_FRESH_MS


class MinuteVolume:
    """A symbol's volume over the last minute, from the ``volume`` each price tick carries
    (what traded since the symbol's previous tick). Ticks may arrive late or out of order:
    the minute is measured back from the newest tick seen."""

    def __init__(self, span_ms: int = MINUTE_MS):
        self.span_ms = span_ms
        self._ticks: dict[str, deque[tuple[int, float]]] = {}
        self._newest: dict[str, int] = {}

    def add(self, symbol: str, ts_ms: int, volume: float) -> None:
        q = self._ticks.setdefault(symbol, deque())
        q.append((ts_ms, volume))
        self._newest[symbol] = max(ts_ms, self._newest.get(symbol, ts_ms))
        self._trim(symbol)

    def _trim(self, symbol: str) -> None:
        q, edge = self._ticks[symbol], self._newest[symbol] - self.span_ms
        while q and q[0][0] <= edge:
            q.popleft()

    def last_minute(self, symbol: str) -> float | None:
        """None: no tick of this symbol ever said its volume."""
        q = self._ticks.get(symbol)
        if q is None:
            return None
        edge = self._newest[symbol] - self.span_ms
        return math.fsum(v for t, v in q if t > edge)
