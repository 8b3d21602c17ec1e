"""The terminal sink: acknowledge what is durable, and keep ClickHouse fed.

By the time an outcome reaches this sink its decision and its audit rows are
committed in the ledger (the rows in the outbox, connectors/outbox.py), so
acknowledging it can lose nothing. The shipper process started here moves the
outbox to ClickHouse in bulk; when ClickHouse has been failing long enough
for the outbox to pass its limit, entries are left pending instead.
"""

from __future__ import annotations

import time
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.outbox import Shipper
from operators.audit import Outcome


class Acker(Protocol):
    def settle(self, outcomes: list[Outcome]) -> None: ...


class NoAck:
    """Recordings have nothing to acknowledge."""

    def settle(self, outcomes: list[Outcome]) -> None:
        pass


class Observer(Protocol):
    def observe(self, outcomes: list[Outcome], done_ns: int) -> None: ...


class _AuditPartition(StatelessSinkPartition[Outcome]):
    def __init__(self, shipper: Shipper, acker: Acker, observer: Observer | None):
        self.shipper, self.acker, self.observer = shipper, acker, observer

    def write_batch(self, items: list[Outcome]) -> None:
        ok, why = self.shipper.accepting()
        if not ok:
            for o in items:
                o.terminal = False
                o.reason = o.reason or f"audit store unavailable: {why}"
        self.acker.settle(items)
        if self.observer is not None:
            self.observer.observe(items, time.perf_counter_ns())

    def close(self) -> None:
        self.shipper.stop()


class AuditSink(DynamicSink[Outcome]):
    """``shipper`` is shared with the portfolio step, which prunes what it has shipped."""

    def __init__(self, shipper: Shipper, acker: Acker | None = None, observer: Observer | None = None):
        self.shipper, self.acker, self.observer = shipper, acker or NoAck(), observer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AuditPartition:
        self.shipper.start()
        return _AuditPartition(self.shipper, self.acker, self.observer)
