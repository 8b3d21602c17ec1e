"""OKX's dead man's switch in the simulator: ``POST /api/v5/trade/cancel-all-after``.

As OKX serves it: ``timeOut`` in seconds, ``0`` (off) or 10 to 120; each call sets the
countdown again from now; when it runs out, every working order of the account is
cancelled (``cancelSource`` ``20``, "cancelled by cancel-all-after") and each cancel is
pushed on the ``orders`` channel like any other. One call a second at most (OKX's limit).
The answer is OKX's: ``triggerTime`` (ms; ``0`` when off) and ``ts``.

Kept apart from the matching engine (``state.py``): it only reads the book's orders and
cancels the working ones under the book's own lock, through the book's own push.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from aiohttp import web

from connectors.sims.okx.state import OPEN_STATES, Book, now_ms

CANCEL_SOURCE = "20"  # OKX's cancelSource for an order cancelled by cancel-all-after
MIN_S, MAX_S = 10, 120
PER_SECOND = 1


class DeadMan:
    def __init__(self, book: Book, clock=time.monotonic):
        """``clock``: what the one-a-second limit counts time by (the simulator's limits' own)."""
        self.book, self.clock = book, clock
        self.trigger_ms = 0  # when the countdown runs out (0: off)
        self.fired = 0  # how many times it ran out
        self._handle: asyncio.TimerHandle | None = None
        self._calls: list[float] = []

    def set(self, timeout_s: int) -> dict:
        """Called on the server's loop: the countdown set again, or stopped (0)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        now = int(now_ms())
        if timeout_s == 0:
            self.trigger_ms = 0
        else:
            self.trigger_ms = now + timeout_s * 1000
            self._handle = asyncio.get_running_loop().call_later(timeout_s, self.fire)
        return {"triggerTime": str(self.trigger_ms), "tag": "", "ts": str(now)}

    def fire(self) -> list[str]:
        """Every working order cancelled, as OKX does when the countdown runs out; their ids."""
        self._handle, self.trigger_ms = None, 0
        self.fired += 1
        cancelled = []
        with self.book.lock:
            for o in self.book.orders.values():
                if o["state"] in OPEN_STATES:
                    o["state"], o["cancelSource"], o["uTime"] = "canceled", CANCEL_SOURCE, now_ms()
                    self.book._changed(o, None)  # pushed like any cancel
                    cancelled.append(o["ordId"])
        self.book.save()
        return cancelled

    def admit(self) -> bool:
        now = self.clock()
        self._calls = [t for t in self._calls if now - t < 1.0]
        if len(self._calls) >= PER_SECOND:
            return False
        self._calls.append(now)
        return True


_SWITCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def of(sim) -> DeadMan:
    """The simulator's switch, made on first use."""
    switch = _SWITCHES.get(sim)
    if switch is None:
        switch = _SWITCHES[sim] = DeadMan(sim.book, sim.windows.clock)
    return switch


def route(sim, q: dict, body: object) -> web.Response:
    from connectors.sims.okx.server import reply

    switch = of(sim)
    if not switch.admit():
        return reply([], "50011", "Too Many Requests", status=429)
    raw = body.get("timeOut") if isinstance(body, dict) else None
    try:
        timeout_s = int(str(raw))
    except ValueError:
        return reply([], "51000", "Parameter timeOut error")
    if timeout_s != 0 and not MIN_S <= timeout_s <= MAX_S:
        return reply([], "51000", "Parameter timeOut error")
    return reply([switch.set(timeout_s)])
