"""The orders an OKX venue watches until their fates are final, and who hears each change.

Changes come from two places: OKX's pushes on the private WebSocket (``okx_stream``),
and, only while that stream is down, a background thread that reads OKX's order lists
with as few requests as they allow: one look at the working orders
(``trade/orders-pending``) and, for the orders not among them, the recent completed ones
(``trade/orders-history``), each a full page a request. Only an order that neither list
shows is asked about on its own. Each time the stream comes up, the thread takes one such
look (OKX pushes nothing at subscription, so what changed while it was down would
otherwise be missed). A change is told only if it moves the order on (more filled, or a
later state): the two sources, and OKX's own repeated pushes, never tell one twice or
step back. A push for an order not watched yet (its acknowledgement still on the way) is
kept a while and applied when it is.

What a market order leaves unfilled once its bound has passed is cancelled (by the
thread, stream up or down); its final fate (the part filled, or nothing) follows.

Who hears a change: an order placed by ``place_many`` is that call's alone (its final fate
goes into the call's mailbox); every other order's changes, and those of any order whose
``place_many`` gave up waiting, go to ``on_update`` if it is set, else to a queue that
``updates()`` drains. ``on_update`` is called from the thread that learnt the change (the
stream's, the poller's, or the sender's for a refusal), never under the registry's lock,
one change at a time, in the order learnt: it must hand the update on, not wait.

``updates()`` and the mailboxes are read under a lock the thread never holds while it
asks OKX anything. The thread's requests run on the venue's asyncio loop (``okx_io``), so
that closing the venue cuts one in flight rather than waiting for it."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from connectors.venues import CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED, OrderUpdate, VenueDown
from connectors.venues import okx_records as records
from connectors.venues.okx_io import Closed
from operators.orders import Order

log = logging.getLogger(__name__)

DOWN_AFTER = 3  # failed rounds in a row after which a waiting ``place_many`` says VenueDown
MAX_PAUSE_S = 1.0  # the longest pause between rounds while OKX keeps failing
EARLY_KEPT = 10_000  # pushes kept for orders not watched yet (others' orders come too: bounded)
RANK = {PARTIALLY_FILLED: 1, FILLED: 2, CANCELLED: 2, REJECTED: 2}  # accepted: 0


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
    ord_id: str  # OKX's id, from its acknowledgement ("" if not known yet)
    due: float  # when what is left of it is cancelled (monotonic clock)
    box: Mailbox | None  # None: its changes go to ``on_update`` or ``updates()``
    told: tuple[float, int] = (-1.0, -1)  # (filled, rank) of the last change told
    cancel_sent: bool = False

    def final(self) -> bool:
        return self.told[1] == 2


class Poller:
    def __init__(self, source: Source, *, fill_wait_s: float, interval_s: float):
        self.source, self.fill_wait_s, self.interval_s = source, fill_wait_s, interval_s
        self.cond = threading.Condition()
        self.telling = threading.RLock()  # one change told at a time, in the order learnt
        self.tracked: dict[str, Tracked] = {}  # by client order id: submitted, not yet final
        self.early: OrderedDict[str, dict] = OrderedDict()  # pushes for orders not watched yet
        self.queue: list[OrderUpdate] = []  # for ``updates()``
        self.on_update: Callable[[OrderUpdate], None] | None = None
        self.failures = 0  # rounds in a row that could not ask OKX
        self.error = ""
        self.stream_up = False
        self.up_since = 0.0  # when the stream last came up (monotonic clock)
        self.catch_up = False  # the stream just came up: one look at the lists
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----- the caller's side -----

    def track(self, placed: Iterable[tuple[Order, str, float]], box: Mailbox | None = None,
              sent: float | None = None) -> None:
        """Watches each (order, OKX's ordId, when OKX acknowledged it) until its fate is final.
        ``sent``: when the first of them left (their pushes are heard only if the stream was
        up by then)."""
        with self.cond:
            new = []
            for order, ord_id, acked in placed:
                t = Tracked(order, ord_id, acked + self.fill_wait_s, box)
                self.tracked[order.client_order_id] = t
                new.append(t)
            if new and self.stream_up and (sent is None or self.up_since >= sent):
                self.catch_up = True  # sent before the stream came up: their first pushes went unheard
            early = [(t, self.early.pop(t.order.client_order_id)) for t in new if t.order.client_order_id in self.early]
            self._start()
            self.cond.notify_all()
        for t, o in early:
            self._observe(t, o)

    def watch(self, order: Order) -> bool:
        """Watches an order whose cancel was asked for (none is sent for it again); True if
        it was not watched before."""
        with self.cond:
            t = self.tracked.get(order.client_order_id)
            if t is not None:
                t.cancel_sent = True
                return False
            self.tracked[order.client_order_id] = Tracked(order, "", time.monotonic(), None, cancel_sent=True)
            self._start()
            self.cond.notify_all()
            return True

    def observe(self, orders: list[dict]) -> None:
        """OKX's records of orders (ccxt's parsed orders), as pushed or looked up."""
        for o in orders:
            cid = str(o.get("clientOrderId") or "")
            with self.cond:
                t = self.tracked.get(cid)
                if t is None and cid:
                    self.early[cid] = o
                    self.early.move_to_end(cid)
                    while len(self.early) > EARLY_KEPT:
                        self.early.popitem(last=False)
            if t is None:
                continue
            try:
                self._observe(t, o)
            except Exception as e:  # noqa: BLE001 - e.g. a fee in a third coin that could not be priced
                log.warning("okx order %s: its change could not be read (%s); the lists will be asked", cid,
                            type(e).__name__)
                with self.cond:
                    self.catch_up = True  # the look retells it, once it can be read

    def streaming(self, up: bool) -> None:
        """The stream's state: while up, the lists are not read (but once as it comes up)."""
        with self.cond:
            if up and not self.stream_up:
                self.up_since = time.monotonic()
                if self.tracked:
                    self.catch_up = True  # orders watched while it was down: what changed meanwhile
            self.stream_up = up
            self.cond.notify_all()

    def tell(self, update: OrderUpdate) -> None:
        with self.telling:
            self._hand([update])

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
                    released = self._release(box)
                    why = f": {self.error}" if down else ""
                    error = VenueDown(f"the fates of {len(box.wanted - box.got.keys())} orders are not known yet{why}")
                    break
                self.cond.wait(left)
            else:
                return
        with self.telling:
            self._hand(released)
        raise error

    def stop(self) -> None:
        """From now on the thread asks OKX nothing more; it ends once it sees it (a request
        it waits on is cut by whoever closes the loop it runs on)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    def close(self, wait_s: float = 0.5) -> None:
        """Stops the thread and waits (briefly) for it to end. Final."""
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    def _start(self) -> None:
        if self.tracked and self._thread is None and not self._stopping:
            self._thread = threading.Thread(target=self._run, name="okx-poller", daemon=True)
            self._thread.start()

    def _release(self, box: Mailbox) -> list[OrderUpdate]:
        """A mailbox's orders go to ``updates()`` (or ``on_update``): what it holds now is
        returned, to be handed over; what comes later follows the same way."""
        out = list(box.got.values())
        box.got.clear()
        for t in self.tracked.values():
            if t.box is box:
                t.box = None
        return out

    def _hand(self, updates: list[OrderUpdate]) -> None:
        """To ``on_update`` if set, else to the queue. Called holding ``telling`` only."""
        callback = self.on_update
        if callback is None:
            with self.cond:
                self.queue.extend(updates)
            return
        for u in updates:
            try:
                callback(u)
            except Exception:  # noqa: BLE001 - the engine's fault must not stop the venue learning fates
                log.exception("on_update failed for order %s", u.client_order_id)

    # ----- the thread -----

    def _run(self) -> None:
        while True:
            with self.cond:
                job = self._next_job()
                if job is None:
                    return
                watched = list(self.tracked.values())
            pause = self.interval_s
            try:
                if job == "look":
                    self._round(watched)
                else:
                    self._cancel_overdue(watched)
                with self.cond:
                    self.failures, self.error = 0, ""
            except Closed:
                return  # the venue is closed
            except VenueDown as e:
                pause = self._failed(str(e), job)
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one round
                log.exception("okx poller round failed")
                pause = self._failed(f"{type(e).__name__}", job)
            with self.cond:
                if not self._stopping and (not self.stream_up or self.failures):
                    self.cond.wait(pause)

    def _next_job(self) -> str | None:
        """Under the lock: waits for work. "look": read the lists (the stream is down, or just
        came up); "cancel": only cancel what is overdue (the stream tells the rest)."""
        while not self._stopping:
            if self.tracked and (not self.stream_up or self.catch_up):
                self.catch_up = False
                return "look"
            now = time.monotonic()
            waiting = [t.due for t in self.tracked.values() if not t.cancel_sent and not t.final()]
            if waiting and min(waiting) <= now:
                return "cancel"
            self.cond.wait(min(waiting) - now if waiting else None)
        return None

    def _failed(self, why: str, job: str) -> float:
        with self.cond:
            self.failures += 1
            self.error = why
            if job == "look" and self.stream_up:
                self.catch_up = True  # the look the stream's coming up called for is still owed
            self.cond.notify_all()  # a waiting place_many decides whether to give up
            return min(MAX_PAUSE_S, self.interval_s * 2 ** min(self.failures, 16))

    def _round(self, watched: list[Tracked]) -> None:
        """One look at every watched order: the working list, the completed list for those not
        working, a question of its own for an order neither shows; then the overdue cancelled."""
        seen = {o.get("clientOrderId"): o for o in self.source.working()}
        gone = [t for t in watched if t.order.client_order_id not in seen]
        if gone and not self._stopping:
            floor = min(_num(t.ord_id) for t in gone)
            seen.update({o.get("clientOrderId"): o for o in
                         self.source.completed(floor, {t.order.client_order_id for t in gone})})
        for t in watched:
            if self._stopping:
                return
            o = seen.get(t.order.client_order_id)
            if o is not None and t.ord_id and str(o.get("id")) != t.ord_id:
                o = None  # another order under the same client order id: not this one
            if o is None and not t.final():
                o = self.source.one(t.order)
            if o is not None:
                self._observe(t, o)
        self._cancel_overdue(watched)

    def _cancel_overdue(self, watched: list[Tracked]) -> None:
        now = time.monotonic()
        for t in watched:
            if now >= t.due and not t.cancel_sent and not t.final() and not self._stopping:
                self.source.cancel(t.order)  # what it comes to is pushed, or seen in the lists
                t.cancel_sent = True

    def _observe(self, t: Tracked, o: dict) -> None:
        """Tells the change OKX's record ``o`` shows for ``t``, if it moves the order on."""
        if t.ord_id and o.get("id") and str(o.get("id")) != t.ord_id:
            return  # another order under the same client order id
        progress = (records.filled(o), RANK.get(records.status(o), 0))
        with self.telling:  # only this changes ``told``, one change at a time
            with self.cond:
                if progress <= t.told or t.final():
                    return  # told already, or older than what was told (the lists lag the stream)
            update = self.source.update(t.order, o)  # may price a fee in a third coin: outside the lock
            final = update.status in records.FINAL
            with self.cond:
                t.told = progress  # only once the update is made: a failure leaves it to be told again
                cid = t.order.client_order_id
                if self.tracked.get(cid) is not t:
                    return  # placed again meanwhile (a retry answered 51016): the newer watch tells it
                if final:
                    del self.tracked[cid]
                box = t.box
                if box is not None and final:
                    box.got[cid] = update
                    self.cond.notify_all()
            if box is None:
                self._hand([update])


def _num(ord_id: str) -> int:
    return int(ord_id) if ord_id.isdigit() else 0
