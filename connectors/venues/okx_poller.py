"""Learning the fates of submitted OKX orders in a background thread, with as few requests
as the lists allow: one look at the working orders (``trade/orders-pending``) and, for
the orders not among them, the recent completed ones (``trade/orders-history``), each
read a full page a request, instead of one request per order. Only an order that
neither list shows is asked about on its own.

What a market order leaves unfilled once its bound has passed is cancelled; its record
then moves to the history, and its final fate (the part filled, or nothing) is told.

Who hears a change of fate: an order placed by ``place_many`` is that call's alone (its
final fate goes into the call's mailbox, the steps before it are not told to anyone);
every other order's changes, and those of any order whose ``place_many`` call gave up
waiting (raising VenueDown), are queued for ``updates()``, from the fates the call had
already received on. Each update is told once, to one of them.

The thread starts with the first order tracked and talks to OKX through a client of its
own (the caller's thread keeps the other). ``updates()`` and the mailboxes are read
under a lock the thread never holds while it asks OKX anything."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from connectors.venues import OrderUpdate, VenueDown
from connectors.venues import okx_records as records
from operators.orders import Order

log = logging.getLogger(__name__)

DOWN_AFTER = 3  # failed rounds in a row after which a waiting ``place_many`` says VenueDown
MAX_PAUSE_S = 1.0  # the longest pause between rounds while OKX keeps failing


class Source(Protocol):
    """What the poller asks OKX (ccxt's parsed orders); VenueDown when it cannot be asked."""

    def working(self) -> list[dict]: ...

    def completed(self, floor: int, wanted: set[str]) -> list[dict]:
        """Completed orders from the newest back to ordId ``floor``, or until every
        client order id in ``wanted`` has been seen."""
        ...

    def one(self, order: Order) -> dict | None: ...

    def cancel(self, order: Order) -> None: ...

    def update(self, order: Order, o: dict) -> OrderUpdate: ...


@dataclass(eq=False)
class Mailbox:
    """The final updates of the orders one ``place_many`` call placed, for that call."""

    wanted: set[str]
    got: dict[str, OrderUpdate] = field(default_factory=dict)

    def done(self) -> bool:
        return self.wanted <= self.got.keys()


@dataclass(eq=False)
class Tracked:
    order: Order
    ord_id: str  # OKX's id, from its acknowledgement
    due: float  # when what is left of it is cancelled (monotonic clock)
    box: Mailbox | None  # None: its changes go to ``updates()``
    told: tuple[str, float] = ("", 0.0)  # the last (status, filled) told
    cancel_sent: bool = False


class Poller:
    def __init__(self, source: Source, *, fill_wait_s: float, interval_s: float):
        self.source, self.fill_wait_s, self.interval_s = source, fill_wait_s, interval_s
        self.cond = threading.Condition()
        self.tracked: dict[str, Tracked] = {}  # by client order id: submitted, not yet final
        self.queue: list[OrderUpdate] = []  # for ``updates()``
        self.failures = 0  # rounds in a row that could not ask OKX
        self.error = ""
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----- the caller's side -----

    def track(self, placed: Iterable[tuple[Order, str, float]], box: Mailbox | None = None) -> None:
        """Watches each (order, OKX's ordId, when OKX acknowledged it) until its fate is final."""
        with self.cond:
            for order, ord_id, acked in placed:
                self.tracked[order.client_order_id] = Tracked(order, ord_id, acked + self.fill_wait_s, box)
            if self.tracked and self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="okx-poller", daemon=True)
                self._thread.start()
            self.cond.notify_all()

    def tell(self, update: OrderUpdate) -> None:
        with self.cond:
            self.queue.append(update)

    def in_flight(self) -> int:
        with self.cond:
            return len(self.tracked)

    def drain(self) -> list[OrderUpdate]:
        with self.cond:
            out, self.queue = self.queue, []
        return out

    def wait(self, box: Mailbox, timeout_s: float) -> None:
        """Until every order in ``box`` is final; VenueDown if OKX cannot be asked meanwhile
        or ``timeout_s`` passes first (the orders are then handed to ``updates()``)."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            down_at = max(DOWN_AFTER, self.failures + 1)  # failures from before this wait count less
            while not box.done():
                left = deadline - time.monotonic()
                down = self.failures >= down_at
                if left <= 0 or down:
                    self._release(box)
                    why = f": {self.error}" if down else ""
                    raise VenueDown(f"the fates of {len(box.wanted - box.got.keys())} orders are not known yet{why}")
                self.cond.wait(left)

    def close(self) -> None:
        """Stops the thread; orders tracked later start it again."""
        with self.cond:
            self._stopping = True
            thread = self._thread
            self.cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with self.cond:
            if thread is None or not thread.is_alive():  # one still inside a request keeps the stop
                self._thread, self._stopping = None, False

    def _release(self, box: Mailbox) -> None:
        """Hands a mailbox's orders to ``updates()``: what it holds, and what comes later."""
        self.queue.extend(box.got.values())
        box.got.clear()
        for t in self.tracked.values():
            if t.box is box:
                t.box = None

    # ----- the thread -----

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.tracked and not self._stopping:
                    self.cond.wait()
                if self._stopping:
                    return
                watched = list(self.tracked.values())
            pause = self.interval_s
            try:
                self._round(watched)
                with self.cond:
                    self.failures, self.error = 0, ""
            except VenueDown as e:
                pause = self._failed(str(e))
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one round
                log.exception("okx poller round failed")
                pause = self._failed(f"{type(e).__name__}")
            with self.cond:
                if not self._stopping:
                    self.cond.wait(pause)

    def _failed(self, why: str) -> float:
        with self.cond:
            self.failures += 1
            self.error = why
            self.cond.notify_all()  # a waiting place_many decides whether to give up
            return min(MAX_PAUSE_S, self.interval_s * 2 ** min(self.failures, 16))

    def _round(self, watched: list[Tracked]) -> None:
        """One look at every watched order: the working list, the completed list for those not
        working, a question of its own for an order neither shows; then the overdue cancelled."""
        seen = {o.get("clientOrderId"): o for o in self.source.working()}
        gone = [t for t in watched if t.order.client_order_id not in seen]
        if gone:
            floor = min(_num(t.ord_id) for t in gone)
            seen.update({o.get("clientOrderId"): o for o in
                         self.source.completed(floor, {t.order.client_order_id for t in gone})})
        for t in watched:
            o = seen.get(t.order.client_order_id)
            if o is not None and t.ord_id and str(o.get("id")) != t.ord_id:
                o = None  # another order under the same client order id: not this one
            if o is None:
                o = self.source.one(t.order)
            if o is not None:
                self._observe(t, o)
        now = time.monotonic()
        for t in watched:
            if now >= t.due and not t.cancel_sent and t.told[0] not in records.FINAL:
                self.source.cancel(t.order)  # its record moves to the history, seen next round
                t.cancel_sent = True

    def _observe(self, t: Tracked, o: dict) -> None:
        now = (records.status(o), records.filled(o))
        if now == t.told:
            return
        update = self.source.update(t.order, o)
        t.told = now
        final = update.status in records.FINAL
        with self.cond:
            cid = t.order.client_order_id
            if self.tracked.get(cid) is not t:
                return  # placed again meanwhile (a retry answered 51016): the newer watch tells it
            if final:
                del self.tracked[cid]
            if t.box is None:
                self.queue.append(update)
            elif final:
                t.box.got[cid] = update
                self.cond.notify_all()


def _num(ord_id: str) -> int:
    return int(ord_id) if ord_id.isdigit() else 0
