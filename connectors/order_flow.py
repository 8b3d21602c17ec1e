"""The Bytewax ends of the way out and the way back: the order sink, the venue-event
source, and the wrapper that tells the gateway when the signals have ended.

The sink runs after the book's step has committed (Bytewax hands a step's output on
only once its batch returned, and the step commits before returning), so no order
leaves before its intent is durable. The source never blocks: it takes what the
senders have queued and asks to be woken a moment later (``next_awake``), as Bytewax's
own non-blocking partitions do. It ends once the signal source has ended and every
order's fate has come, or its grace is over: what is still working then is in the
ledger, and the next start asks the venue.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import (DynamicSource, FixedPartitionedSource, StatefulSourcePartition,
                            StatelessSourcePartition)
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.heartbeat import PROGRESS
from connectors.sender import Command, Gateway
from operators.order_fsm import VenueEvent

IDLE = timedelta(milliseconds=2)  # how soon an idle source looks again: a bound on the latency it adds
RESTING = timedelta(milliseconds=20)  # ...when no order is at any venue
NATURAL_WAIT_S = 30.0  # after a recording's end: how long orders still working are waited for
WAKE = "wake"  # the status of the start's word to a book: about no order, it only starts the book's step
STOP_WAIT_S = 2.0  # after a stop signal: the run must end within 5 s whatever a venue does


class _OrderPartition(StatelessSinkPartition[Command]):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def write_batch(self, items: list[Command]) -> None:
        for cmd in items:
            self.gateway.dispatch(cmd)

    def close(self) -> None:
        self.gateway.close()


class OrderSink(DynamicSink[Command]):
    """Hands each command to its venue's sender: a queue, never a socket."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OrderPartition:
        return _OrderPartition(self.gateway)


class _EventPartition(StatelessSourcePartition[VenueEvent]):
    def __init__(self, gateway: Gateway, books: list[str]):
        self.gateway = gateway
        self._awake: datetime | None = None
        # one word to each book at the start, so that its step starts (its ledger read, every
        # order left live followed again and asked about) without waiting for a first entry:
        # a restart on a quiet stream otherwise never asked the venues about its live orders
        self._wake = [VenueEvent(book, "", WAKE) for book in books]

    def next_batch(self) -> list[VenueEvent]:
        if self._wake:
            wake, self._wake = self._wake, []
            return wake
        got = self.gateway.drain()
        if got:
            self._awake = None
            return got
        if self.gateway.finished(NATURAL_WAIT_S, STOP_WAIT_S):
            raise StopIteration
        # with nothing at any venue, nothing can come but after an order leaves: look less often
        self._awake = datetime.now(timezone.utc) + (IDLE if self.gateway.live() else RESTING)
        return []

    def next_awake(self) -> datetime | None:
        return self._awake


_BUILT = threading.Lock()


class VenueEventSource(DynamicSource[VenueEvent]):
    def __init__(self, gateway: Gateway, books: list[str] | None = None):
        """``books``: the books to wake at the start (their names; "" for a pipeline's one book)."""
        self.gateway, self.books = gateway, list(books or [])

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _EventPartition:
        # the first partition built in this process wakes the books: in a cluster each process
        # is given its own books, so no word to a book ever leaves the process that runs it
        with _BUILT:
            books, self.books = self.books, []
        return _EventPartition(self.gateway, books)


# ----- the signal source, watched for its end -----

class _Watched:
    """A partition of the signal source that tells the gateway when it has ended."""

    def __init__(self, inner: Any, gateway: Gateway):
        self.inner, self.gateway, self._ended = inner, gateway, False
        gateway.input_started()

    def next_batch(self) -> list:
        PROGRESS.beat("source")  # the source's heartbeat: its partition is asked, so its worker moves
        try:
            return self.inner.next_batch()
        except StopIteration:
            if not self._ended:
                self._ended = True
                self.gateway.input_ended()
            raise

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self.gateway.input_ended()
        self.inner.close()


class _WatchedStateful(_Watched, StatefulSourcePartition):
    def snapshot(self) -> Any:
        return self.inner.snapshot()


class _WatchedStateless(_Watched, StatelessSourcePartition):
    pass


class _WatchedFixed(FixedPartitionedSource):
    def __init__(self, inner: FixedPartitionedSource, gateway: Gateway):
        self.inner, self.gateway = inner, gateway

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        return _WatchedStateful(self.inner.build_part(step_id, for_part, resume_state), self.gateway)


class _WatchedDynamic(DynamicSource):
    def __init__(self, inner: DynamicSource, gateway: Gateway):
        self.inner, self.gateway = inner, gateway

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSourcePartition:
        return _WatchedStateless(self.inner.build(step_id, worker_index, worker_count), self.gateway)


def watched(source: Any, gateway: Gateway) -> Any:
    """The same source, telling ``gateway`` when each of its partitions has ended."""
    if isinstance(source, FixedPartitionedSource):
        return _WatchedFixed(source, gateway)
    if isinstance(source, DynamicSource):
        return _WatchedDynamic(source, gateway)
    raise TypeError(f"not a Bytewax source: {type(source).__name__}")
