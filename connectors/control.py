"""The control stream: how ``apex kill``, ``apex reduce`` and ``apex resume`` (and the
watchdog, and reconciliation) reach a running worker.

A Redis stream (``redis.control_stream``, default ``apex:control``) of entries with the
fields ``id`` (a uuid), ``command`` (``kill`` | ``reduce`` | ``resume``), ``book`` (empty:
every book), ``reason`` and ``by`` (``cli``, ``watchdog``, ``reconciliation``). The worker
reads it in a thread of its own (``XREAD BLOCK``), so the Bytewax source that hands the
commands to the books never waits on a socket: it takes what the thread has queued and
asks to be woken a moment later (``next_awake``), as the venue-event source does.

Reading starts a little before the worker's start (``LOOK_BACK_MS``): a command added
between the worker taking its state dir (which is what tells ``apex kill`` a worker runs)
and this source's first read is not lost. Carrying a command out twice changes nothing
(a state set again, nothing left to cancel or close), so reading one again is harmless.

The state a command sets is in force at the egress as soon as the thread reads it
(``Gateway.commanded``, the stricter of it and the book's own): a book whose step is held
up (frozen mid-batch) and wakes after a kill sends nothing new from what it decides next,
before the command reaches it through the dataflow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from bytewax.inputs import DynamicSource, StatelessSourcePartition

from connectors.order_flow import NATURAL_WAIT_S, STOP_WAIT_S
from connectors.sender import Gateway
from connectors.venues.okx_dead_man import Pulse
from operators.trading_state import COMMANDS

log = logging.getLogger("apex.control")
LOOK_BACK_MS = 60_000
BLOCK_MS = 500  # the reading thread's XREAD BLOCK: how soon it sees that the run is ending
AWAKE = timedelta(milliseconds=50)  # how soon the source looks at the thread's queue again
RETRY_S = 1.0  # after a failed read (Redis down): the thread tries again this much later


@dataclass(frozen=True, slots=True)
class Control:
    """One command for one book (``book``: its name; "" for a pipeline's one book)."""

    book: str
    id: str
    command: str
    reason: str = ""
    by: str = ""


def parse(fields: dict, books: list[str]) -> tuple[list[Control], str]:
    """A stream entry's commands, one per book it names; or none, and why (a malformed
    entry is said and skipped: the stream is an operator's, not a signal source)."""
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    command, book = f.get("command", ""), f.get("book", "")
    if command not in COMMANDS:
        return [], f"unknown command {command!r} (kill, reduce or resume)"
    if not f.get("id"):
        return [], "no id"
    if book and book not in books:
        if books == [""]:
            book = ""  # one book, named by its pipeline: it is the one meant
        else:
            return [], f"no book {book!r} here"
    chosen = [book] if book else books
    return [Control(b, f["id"], command, f.get("reason", ""), f.get("by", "")) for b in chosen], ""


class _Reader:
    """The thread that reads the stream and queues what it finds."""

    def __init__(self, url: str, stream: str, books: list[str], commanded: dict[str, str] | None = None):
        self.url, self.stream, self.books = url, stream, books
        self.commanded = commanded if commanded is not None else {}
        self.queue: deque[Control] = deque()
        self._stop = threading.Event()
        self._last = f"{int(time.time() * 1000) - LOOK_BACK_MS}-0"
        self._thread = threading.Thread(target=self._run, name="apex-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=BLOCK_MS / 1000 + 5)
        said = False
        while not self._stop.is_set():
            try:
                got = client.xread({self.stream: self._last}, count=100, block=BLOCK_MS)
                said = False
            except redis.RedisError as e:
                if not said:
                    log.warning("control stream %s cannot be read: %s (tried again every %.0f s)",
                                self.stream, e, RETRY_S)
                    said = True
                self._stop.wait(RETRY_S)
                continue
            for _, entries in got or []:
                for entry_id, fields in entries:
                    self._last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    commands, why = parse(fields, self.books)
                    if why:
                        log.warning("control stream %s: entry %s skipped: %s", self.stream, self._last, why)
                    for c in commands:  # in force at the egress at once (Gateway.commanded)
                        self.commanded[c.book] = COMMANDS[c.command]
                    self.queue.extend(commands)
        client.close()

    def stop(self) -> None:
        self._stop.set()


class _ControlPartition(StatelessSourcePartition[Control]):
    def __init__(self, reader: _Reader, gateway: Gateway, pulse: Pulse | None, on_close: list[Callable[[], None]]):
        self.reader, self.gateway, self.pulse, self.on_close = reader, gateway, pulse, on_close
        self._awake: datetime | None = None

    def next_batch(self) -> list[Control]:
        if self.pulse is not None:  # Bytewax's loop is turning: the worker is alive
            self.pulse.beat()
        q = self.reader.queue
        if q:
            out = []
            while q:
                out.append(q.popleft())
            return out
        if self.gateway.finished(NATURAL_WAIT_S, STOP_WAIT_S):
            raise StopIteration
        self._awake = datetime.now(timezone.utc) + AWAKE
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def close(self) -> None:
        self.reader.stop()
        for done in self.on_close:
            done()


class ControlSource(DynamicSource[Control]):
    """The control stream's commands, each routed to its book (``books``: their names).
    ``pulse``: beaten each time Bytewax polls it, the sign of life OKX's dead man's switch
    is refreshed on (``connectors/venues/okx_dead_man.py``); ``on_close``: called when the
    run ends (the switches stopped)."""

    def __init__(self, url: str, stream: str, books: list[str], gateway: Gateway, pulse: Pulse | None = None,
                 on_close: list[Callable[[], None]] | None = None):
        self.url, self.stream, self.books, self.gateway = url, stream, list(books), gateway
        self.pulse, self.on_close = pulse, list(on_close or [])

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSourcePartition:
        if worker_index != 0:  # one reader for the whole dataflow: each command reaches its book once
            return _Idle(self.gateway)
        reader = _Reader(self.url, self.stream, self.books, self.gateway.commanded)
        return _ControlPartition(reader, self.gateway, self.pulse, self.on_close)


class _Idle(StatelessSourcePartition[Control]):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def next_batch(self) -> list[Control]:
        if self.gateway.finished(NATURAL_WAIT_S, STOP_WAIT_S):
            raise StopIteration
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now(timezone.utc) + timedelta(milliseconds=200)
