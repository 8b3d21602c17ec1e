"""Orders leave here, off the decision path, and the venues' answers come back from here.

A book's step never talks to a venue that is across a network: it commits the order's
intent and emits a ``Command``; the order sink (``connectors/order_flow.py``) hands it to
the ``Gateway`` of this process, which gives it to the ``Sender`` of the order's venue.
A sender keeps several requests in flight, in lanes by instrument (one instrument's
orders leave in the order decided), each lane a thread of its own, so a venue 250 ms
away costs each order one round trip of latency, not the book a round trip of time.
What the venue answers (accepted, refused, a fill, cancelled, unknown) becomes a
``VenueEvent`` on the gateway's queue, which the venue-event source feeds back into
the book's step. A venue that is down or slow holds up only its own sender.

The in-flight checker is here too, one rule for start-up and for runtime: an order left
without news past ``ask_after_s`` is asked by its client order id (``lookup``), and the
answer is an event. An order that may have reached its venue is never sent again; one
that the venue has no record of and never confirmed (a crash before it left, a request
that timed out before it arrived) is sent, within its signal's TTL.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors import metrics
from connectors.venues import FILLED, Instrument, Rejected, Venue, VenueDown
from operators.order_fsm import ACCEPTED, CANCELLED, DENIED, PARTIALLY_FILLED, REJECTED, UNKNOWN, VenueEvent
from operators.orders import Order

log = logging.getLogger("apex.sender")

SUBMIT, CHECK, CANCEL = "submit", "check", "cancel"
BATCH = 20  # orders a lane hands the venue at once (OKX's batch-orders takes 20)
UNKNOWN_FIRST_ASK_S = 1.0  # an order whose placement went unanswered: its first look-up
CLOSE_S = 1.0  # at the stop: how long the lanes, then the venues' own closing, are waited for
FINAL = frozenset({FILLED, CANCELLED, REJECTED, DENIED})


class Pending:
    """An instrument's rules still being asked of its venue."""


PENDING = Pending()


@dataclass(frozen=True, slots=True)
class Command:
    """What a book's step asks of a venue, emitted once its transaction is committed.
    ``deadline``: wall-clock seconds after which an order that has not left is not sent
    (its signal's TTL); None for a close, which goes whenever the venue can take it."""

    action: str  # submit | check | cancel
    book: str
    order: Order
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class SenderSettings:
    lanes: int = 4  # requests in flight at once, each for its own instruments
    ask_after_s: float = 10.0  # an order this long without news is asked about
    retry_s: tuple[float, float] = (0.05, 5.0)  # first and longest pause while the venue is down


@dataclass(slots=True)
class _Tracked:
    book: str
    order: Order
    status: str
    news_at: float  # monotonic time of the last word about it
    deadline: float | None
    asks: int = 0
    queued: bool = False  # a submit for it waits in its lane: not asked about, never queued twice
    sending: bool = False  # inside a submit call: its answer is on its way, nothing to ask yet


class Sender:
    """One venue connection's way out and way back."""

    def __init__(self, venue: Venue, emit: Callable[[VenueEvent], None], settings: SenderSettings | None = None):
        self.venue, self._emit = venue, emit
        self.settings = settings or SenderSettings()
        self.name = getattr(venue, "name", type(venue).__name__)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._down_since: float | None = None
        self._waited: set[str] = set()  # orders held back while the venue was down
        self._queues = [_LaneQueue() for _ in range(max(1, self.settings.lanes))]
        self._pushes = hasattr(venue, "on_update")
        if self._pushes:
            venue.on_update = self._on_update  # type: ignore[attr-defined]
        self._threads = [threading.Thread(target=self._lane, args=(q,), name=f"apex-send-{self.name}-{i}",
                                          daemon=True) for i, q in enumerate(self._queues)]
        self._threads.append(threading.Thread(target=self._watch, name=f"apex-watch-{self.name}", daemon=True))
        for t in self._threads:
            t.start()

    # ----- from the book's side -----

    def put(self, cmd: Command) -> None:
        if cmd.action in (SUBMIT, CHECK):
            with self._lock:
                cid = cmd.order.client_order_id
                t = self._tracked.get(cid)
                if t is None:
                    t = self._tracked[cid] = _Tracked(cmd.book, cmd.order, "intent", time.monotonic(),
                                                      cmd.deadline)
                elif cmd.action == SUBMIT and t.queued:
                    return
                t.queued = t.queued or cmd.action == SUBMIT
        self._lane_of(cmd.order).put(cmd)

    def live(self) -> int:
        """Orders whose final fate has not come yet."""
        return len(self._tracked)

    @property
    def alive(self) -> bool:
        return not self._stop.is_set() and any(t.is_alive() for t in self._threads)

    @property
    def down(self) -> bool:
        """The venue could not take orders at the last try and has not taken one since."""
        return self._down_since is not None

    def stop(self) -> None:
        """No more requests: the lanes end at their next step (one in a request ends with it)."""
        self._stop.set()
        for q in self._queues:
            q.wake()

    def join(self, deadline: float) -> None:
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 1.0) -> None:
        self.stop()
        self.join(time.monotonic() + timeout)
        close_venue(self.venue)

    # ----- the venue's answers -----

    def _on_update(self, u) -> None:  # an OrderUpdate, from the venue's own thread
        self._tell(u.client_order_id, u.status, u.fill, u.fill_id, u.reason)

    def _tell(self, cid: str, status: str, fill=None, fill_id: str = "", reason: str = "") -> None:
        with self._lock:
            t = self._tracked.get(cid)
            if t is None:
                return  # not one of this process's orders, or its end was told already
            t.news_at = time.monotonic()
            if status in (ACCEPTED, PARTIALLY_FILLED):
                t.status = status
            if status in FINAL:
                del self._tracked[cid]
            book = t.book
        self._emit(VenueEvent(book, cid, status, fill, fill_id, reason))

    # ----- the lanes -----

    def _lane_of(self, order: Order) -> _LaneQueue:
        return self._queues[zlib.crc32(order.symbol.encode()) % len(self._queues)]

    def _lane(self, q: _LaneQueue) -> None:
        while not self._stop.is_set():
            cmds = q.take(BATCH, self._stop)
            if not cmds:
                continue
            try:
                self._handle(q, cmds)
            except Exception as err:  # noqa: BLE001 - a lane must outlive any one answer
                log.error("%s: sending failed unexpectedly: %s: %s", self.name, type(err).__name__, err)
                self._unknown([c for c in cmds if c.action == SUBMIT], f"{type(err).__name__}: {err}")

    def _handle(self, q: _LaneQueue, cmds: list[Command]) -> None:
        submits = [c for c in cmds if c.action == SUBMIT]
        for c in cmds:
            if c.action == CHECK:
                submits += self._check(q, c)
            elif c.action == CANCEL:
                self._cancel(q, c)
        now = time.time()
        sendable = []
        for c in submits:
            if not self._leaving(c.order.client_order_id):
                continue  # already on its way in another command
            if c.deadline is not None and now > c.deadline:
                self._tell(c.order.client_order_id, DENIED, reason=f"not sent: its signal's TTL ran out while "
                           f"{self.name} could not take it")
            else:
                sendable.append(c)
        if not sendable:
            return
        asked = time.perf_counter()
        try:
            acks = self.venue.submit([c.order for c in sendable])
        except VenueDown as err:
            metrics.VENUE_ERRORS.labels(venue=self.name, kind="down").inc()
            self._sent(sendable)
            # which of them left is not known: each is asked first, and sent only if absent
            self._away(q, [Command(CHECK, c.book, c.order, c.deadline) for c in sendable], str(err))
            return
        metrics.VENUE_ROUND_TRIP.labels(venue=self.name).observe(time.perf_counter() - asked)
        self._sent(sendable)
        held = []
        for c, ack in zip(sendable, acks, strict=True):
            cid = c.order.client_order_id
            if ack.accepted:
                self._tell(cid, ACCEPTED)
            elif ack.unknown:
                self._mark(cid, UNKNOWN)
                self._tell(cid, UNKNOWN, reason=ack.reason)
            elif not ack.sent:
                held.append(c)
            else:
                self._tell(cid, REJECTED, reason=ack.reason or "refused")
        if held:
            why = next(a.reason for c, a in zip(sendable, acks) if c in held)
            self._requeue(held)
            self._away(q, held, why or "it took none of them")
        else:
            self._back()

    def _check(self, q: _LaneQueue, c: Command) -> list[Command]:
        """Ask the venue about an order; the submit to make if it never reached the venue."""
        cid = c.order.client_order_id
        try:
            fill = self.venue.lookup(c.order)
        except Rejected as refused:
            self._tell(cid, REJECTED, reason=str(refused))
            return []
        except VenueDown as err:  # no answer is not "not there": asked again once it answers
            self._away(q, [c], str(err))
            return []
        except Exception as err:  # noqa: BLE001 - the same, for an answer it could not read
            self._asked_again(cid, f"{type(err).__name__}: {err}")
            return []
        self._back()
        if fill is not None:
            self._tell(cid, FILLED, fill, reason="found by asking the venue")
            return []
        with self._lock:
            t = self._tracked.get(cid)
            confirmed = t is not None and t.status in (ACCEPTED, PARTIALLY_FILLED)
        if confirmed:  # it took it once: it is somewhere, ask again rather than give up
            self._asked_again(cid, "the venue does not find it")
            return []
        with self._lock:  # it never got there: send it (once, however many asked)
            t = self._tracked.get(cid)
            if t is None or t.queued:
                return []
            t.queued = True
        return [Command(SUBMIT, c.book, c.order, c.deadline)]

    def _cancel(self, q: _LaneQueue, c: Command) -> None:
        try:
            self.venue.cancel(c.order)  # type: ignore[attr-defined]
        except VenueDown as err:
            self._away(q, [c], str(err))

    def _leaving(self, cid: str) -> bool:
        """Take an order's submit out of its lane: False if it is not this order's to send."""
        with self._lock:
            t = self._tracked.get(cid)
            if t is None or not t.queued:
                return False
            t.queued, t.sending, t.news_at = False, True, time.monotonic()  # its wait starts now
            return True

    def _sent(self, cmds: list[Command]) -> None:
        """Their submit call returned: from now on, silence is news to ask about."""
        now = time.monotonic()
        with self._lock:
            for c in cmds:
                t = self._tracked.get(c.order.client_order_id)
                if t is not None:
                    t.sending, t.news_at = False, now

    def _requeue(self, cmds: list[Command]) -> None:
        with self._lock:
            for c in cmds:
                t = self._tracked.get(c.order.client_order_id)
                if t is not None:
                    t.queued = True

    def _mark(self, cid: str, status: str) -> None:
        with self._lock:
            t = self._tracked.get(cid)
            if t is not None:
                t.status, t.news_at, t.sending = status, time.monotonic(), False

    def _unknown(self, cmds: list[Command], why: str) -> None:
        for c in cmds:
            self._mark(c.order.client_order_id, UNKNOWN)
            self._tell(c.order.client_order_id, UNKNOWN, reason=why)

    def _asked_again(self, cid: str, why: str) -> None:
        with self._lock:
            t = self._tracked.get(cid)
            if t is None:
                return
            t.asks += 1
            t.news_at = time.monotonic()
            asks = t.asks
        if asks in (1, 10, 100) or asks % 1000 == 0:
            log.warning("%s: order %s has no fate yet (%s); asked again later", self.name, cid, why)

    def _away(self, q: _LaneQueue, held: list[Command], why: str) -> None:
        """The venue cannot take orders now: they wait in their lane, within their TTL."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._waited.update(c.order.client_order_id for c in held)
        if first:
            log.warning("%s went away (%s): its orders wait, within their signals' TTL", self.name, why)
        q.put_back(held)
        delay = self.settings.retry_s[0]
        with self._lock:
            down_for = time.monotonic() - (self._down_since or time.monotonic())
        delay = min(self.settings.retry_s[1], max(delay, down_for / 4))
        self._stop.wait(delay)

    def _back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for, waited = time.monotonic() - self._down_since, len(self._waited)
            self._down_since, self._waited = None, set()
        log.warning("%s is back after %.1f s; %d orders had waited", self.name, down_for, waited)

    # ----- the in-flight checker -----

    def _watch(self) -> None:
        every = 0.01 if not self._pushes else min(1.0, self.settings.ask_after_s / 4)
        while not self._stop.wait(every):
            if not self._pushes:
                try:
                    for u in self.venue.updates():
                        self._on_update(u)
                except Exception as err:  # noqa: BLE001 - a venue's hiccup: the checker asks later
                    log.warning("%s: reading updates failed: %s", self.name, err)
            now = time.monotonic()
            with self._lock:
                due = [t for t in self._tracked.values()
                       if not (t.queued or t.sending) and now - t.news_at >= self._ask_after(t)]
                for t in due:
                    t.news_at = now
            for t in due:
                self._lane_of(t.order).put(Command(CHECK, t.book, t.order, t.deadline))

    def _ask_after(self, t: _Tracked) -> float:
        """Later and later for an order asked many times: never given up, never hammered. One
        whose placement went unanswered is asked first within a second or two (its venue may
        not watch it), not at once (a venue may take a moment to show an order it took)."""
        if t.status == UNKNOWN and t.asks == 0:
            return min(self.settings.ask_after_s, UNKNOWN_FIRST_ASK_S)
        return self.settings.ask_after_s * min(30, 1 + t.asks)


def close_venue(venue: Venue) -> None:
    closer = getattr(venue, "close", None)
    if closer is None:
        return
    try:
        closer()
    except Exception as err:  # noqa: BLE001 - closing is best effort; say so and go on
        log.warning("%s: closing the venue failed: %s", getattr(venue, "name", "venue"), err)


class _LaneQueue:
    def __init__(self) -> None:
        self._items: deque[Command] = deque()
        self._cv = threading.Condition()

    def put(self, cmd: Command) -> None:
        with self._cv:
            self._items.append(cmd)
            self._cv.notify()

    def put_back(self, cmds: list[Command]) -> None:
        with self._cv:
            self._items.extendleft(reversed(cmds))

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def take(self, most: int, stop: threading.Event) -> list[Command]:
        with self._cv:
            while not self._items and not stop.is_set():
                self._cv.wait(0.5)
            out = []
            while self._items and len(out) < most:
                out.append(self._items.popleft())
            return out


@dataclass
class Gateway:
    """This process's senders, by venue connection, and the queue their answers come back on."""

    settings: dict[str, SenderSettings] = field(default_factory=dict)  # by venue name
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._senders: dict[int, Sender] = {}
        self._routes: dict[tuple[str, str], Venue] = {}
        self._instruments: dict[tuple[int, str, str], Instrument | None] = {}
        self._asking: set[tuple[int, str, str]] = set()
        self._inputs = [0, 0]  # signal-source partitions started, ended
        self.stopping = False  # a stop signal: what is in flight gets a short grace, then the run ends
        # the state the newest control command read for each book sets (connectors/control.py),
        # in force at the egress before the book's step carries the command out
        self.commanded: dict[str, str] = {}
        self._ended_at: float | None = None
        self.closed = False

    def register(self, book: str, market: str, venue: Venue) -> None:
        """Where a book's orders for a market go; the venue's sender starts with its first order."""
        with self._lock:
            self._routes[(book, market)] = venue  # type: ignore[assignment]

    def dispatch(self, cmd: Command) -> None:
        self._sender(self._routes[(cmd.book, cmd.order.venue)]).put(cmd)  # type: ignore[arg-type]

    def _sender(self, venue: Venue) -> Sender:
        sender = self._senders.get(id(venue))
        if sender is None:
            with self._lock:
                sender = self._senders.get(id(venue))
                if sender is None:
                    sender = Sender(venue, self.events.put, self.settings.get(getattr(venue, "name", "")))
                    self._senders[id(venue)] = sender
        return sender

    def live(self) -> int:
        return sum(s.live() for s in list(self._senders.values()))

    def senders_health(self) -> list[tuple[str, bool, bool]]:
        """(venue name, its lanes alive, the venue away) of each sender: the venues' heartbeats."""
        return [(s.name, s.alive, s.down) for s in list(self._senders.values())]

    def away(self) -> list[str]:
        """The venues whose sender waits for them to come back (for /readyz)."""
        return [s.name for s in list(self._senders.values()) if s._down_since is not None]

    def instrument(self, venue: Venue, market: str, symbol: str) -> Instrument | None | Pending:
        """A remote venue's rules for an instrument without waiting on it: what it answered
        before, or ``PENDING`` while it is asked in a thread of its own (its answer is here
        for the next signal)."""
        key = (id(venue), market, symbol)
        with self._lock:
            if key in self._instruments:
                return self._instruments[key]
            if key in self._asking:
                return PENDING
            self._asking.add(key)

        def ask() -> None:
            try:
                got = venue.instrument(market, symbol)
            except Exception as err:  # noqa: BLE001 - asked again by the next signal for it
                log.warning("%s: the rules of %s could not be asked: %s", getattr(venue, "name", market), symbol, err)
                with self._lock:
                    self._asking.discard(key)
                return
            with self._lock:
                self._instruments[key] = got
                self._asking.discard(key)

        threading.Thread(target=ask, name=f"apex-instrument-{symbol}", daemon=True).start()
        return PENDING

    def drain(self, most: int = 1000) -> list[VenueEvent]:
        out = []
        try:
            while len(out) < most:
                out.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return out

    # ----- when the run ends -----

    def input_started(self) -> None:
        with self._lock:
            self._inputs[0] += 1

    def input_ended(self) -> None:
        with self._lock:
            self._inputs[1] += 1
            if self._inputs[1] >= self._inputs[0]:
                self._ended_at = time.monotonic()

    def finished(self, natural_wait_s: float, stop_wait_s: float) -> bool:
        """Whether the venue-event source may end: the signals have ended and every order's
        fate has come, or the grace is over (the rest is the next start's to ask)."""
        if self._ended_at is None:
            return False
        if self.live() == 0 and self.events.empty():
            return True
        grace = stop_wait_s if self.stopping else natural_wait_s
        return time.monotonic() - self._ended_at >= grace

    def close(self) -> None:
        """Every sender stopped and every remote venue closed, whether it had orders or not."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            senders = list(self._senders.values())
            idle = {id(v): v for v in self._routes.values() if id(v) not in self._senders}
        left = sum(s.live() for s in senders)
        if left:
            log.warning("%d orders still working at the stop: the next start asks their venues", left)
        # every lane told first, then all joined and every venue closed at once, under one
        # bound: a stop must end the run within seconds whatever a venue is doing
        for s in senders:
            s.stop()
        deadline = time.monotonic() + CLOSE_S
        for s in senders:
            s.join(deadline)
        venues = [s.venue for s in senders] + list(idle.values())
        closers = [threading.Thread(target=close_venue, args=(v,), daemon=True) for v in venues]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(0.0, deadline + CLOSE_S - time.monotonic()))
