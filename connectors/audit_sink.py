"""The terminal sink: make each batch's record durable, then acknowledge it.

The order is the whole point: ClickHouse insert first, XACK second, so an
entry is never acknowledged before its outcome can be read back. A batch that
fails to write raises, the worker dies, nothing of that batch is acked, and
Redis redelivers it to the next start.
"""

from __future__ import annotations

import time
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.clickhouse import AuditStore
from operators.audit import Outcome


class Acker(Protocol):
    def settle(self, outcomes: list[Outcome]) -> None: ...


class NoAck:
    """Recordings have nothing to acknowledge."""

    def settle(self, outcomes: list[Outcome]) -> None:
        pass


class Observer(Protocol):
    def observe(self, outcomes: list[Outcome], done_ns: int) -> None: ...


def rows_of(outcomes: list[Outcome], recorded_ms: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"audit_events": [], "filter_drops": [], "executions": [], "trades": []}
    for o in outcomes:
        for ev in o.events:
            row = ev.as_row()
            row["recorded_ms"] = recorded_ms
            rows["audit_events"].append(row)
        if o.drop:
            rows["filter_drops"].append(o.drop)
        rows["executions"].extend(o.executions)
        rows["trades"].extend(o.trades)
    return rows


class _AuditPartition(StatelessSinkPartition[Outcome]):
    def __init__(self, store: AuditStore, acker: Acker, observer: Observer | None):
        self.store, self.acker, self.observer = store, acker, observer

    def write_batch(self, items: list[Outcome]) -> None:
        self.store.write(rows_of(items, time.time_ns() // 1_000_000))
        self.acker.settle(items)
        if self.observer is not None:
            self.observer.observe(items, time.perf_counter_ns())

    def close(self) -> None:
        self.store.close()


class AuditSink(DynamicSink[Outcome]):
    def __init__(self, dsn: str, acker: Acker | None = None, observer: Observer | None = None):
        self.dsn, self.acker, self.observer = dsn, acker or NoAck(), observer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AuditPartition:
        return _AuditPartition(AuditStore(self.dsn), self.acker, self.observer)
