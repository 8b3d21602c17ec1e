"""The seven audit stages and the events they record.

One event per stage a signal reaches, each self-describing, so any trade's
whole decision chain can be rebuilt from the events alone (``apex audit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

def details_text(details: dict[str, Any] | str) -> str:
    """An event's details as the audit store keeps them: JSON text with sorted keys (rows
    queued by an older worker already hold the text)."""
    return details if isinstance(details, str) else dumps(details)


def dumps(value: Any) -> str:
    """JSON for audit details and the ledger: orjson, because every decision
    serializes its events twice and the stdlib encoder was a tenth of a replay."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


SIGNAL_RECEIVED = "SIGNAL_RECEIVED"
FILTER_CHECK = "FILTER_CHECK"
POSITION_SIZING = "POSITION_SIZING"
EXECUTION_ATTEMPT = "EXECUTION_ATTEMPT"
EXECUTION_CONFIRMED = "EXECUTION_CONFIRMED"
TRADE_OPEN = "TRADE_OPEN"
TRADE_CLOSED = "TRADE_CLOSED"
STAGES = (
    SIGNAL_RECEIVED,
    FILTER_CHECK,
    POSITION_SIZING,
    EXECUTION_ATTEMPT,
    EXECUTION_CONFIRMED,
    TRADE_OPEN,
    TRADE_CLOSED,
)

# The audit store's columns for events and filter drops, in the order their rows are
# queued: rows travel as lists of values, a third of the bytes and of the time of objects
# with keys (an entry's events and drop are written to the outbox, read back, shipped).
EVENT_COLUMNS = ("signal_id", "stream_id", "seq", "stage", "outcome", "reason", "ts_ms", "source",
                 "venue", "symbol", "size_usd", "details", "latency_us", "recorded_ms")
DETAILS = EVENT_COLUMNS.index("details")
DROP_COLUMNS = ("signal_id", "stream_id", "filter", "ts_ms", "source", "venue", "symbol", "confidence", "regime")

# Terminal outcomes: a signal that reached one of these is decided and its
# stream entry may be acknowledged once the record of it is durable.
TERMINAL = ("invalid", "duplicate", "expired", "dropped", "filled", "rejected", "tick", "closed")


@dataclass(slots=True)
class Event:
    stream_id: str
    signal_id: str
    stage: str
    outcome: str
    ts_ms: int
    seq: int = 0
    reason: str = ""
    source: str = ""
    venue: str = ""
    symbol: str = ""
    size_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    latency_us: int = 0

    def to_dict(self) -> dict[str, Any]:
        # spelled out: a comprehension over __slots__ was a fifth of a fill's audit cost
        return {"stream_id": self.stream_id, "signal_id": self.signal_id, "stage": self.stage,
                "outcome": self.outcome, "ts_ms": self.ts_ms, "seq": self.seq, "reason": self.reason,
                "source": self.source, "venue": self.venue, "symbol": self.symbol,
                "size_usd": self.size_usd, "details": self.details, "latency_us": self.latency_us}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(**d)

    def as_row(self, recorded_ms: int) -> list[Any]:
        """The audit store's row (``EVENT_COLUMNS``). Details stay an object: the row is packed
        whole into the outbox anyway, and the shipper, on the other core, turns them into the
        column's JSON text (``details_text``); encoding them here cost the worker a second
        orjson call an event."""
        return [self.signal_id, self.stream_id, self.seq, self.stage, self.outcome, self.reason, self.ts_ms,
                self.source, self.venue, self.symbol, self.size_usd, self.details, self.latency_us,
                recorded_ms]


@dataclass(slots=True)
class Chain:
    """The events of one stream entry in stage order, with a running sequence
    number so two events in the same millisecond still sort as they happened."""

    stream_id: str
    signal_id: str
    ts_ms: int
    source: str = ""
    venue: str = ""
    symbol: str = ""
    events: list[Event] = field(default_factory=list)

    @classmethod
    def resumed(cls, events: list[Event]) -> Chain:
        """The chain an earlier run began (a "sent" decision's events), to go on adding to."""
        first = events[0]
        return cls(first.stream_id, first.signal_id, first.ts_ms, first.source, first.venue, first.symbol, events)

    def add(self, stage: str, outcome: str, reason: str = "", *, ts_ms: int | None = None,
            size_usd: float | None = None, **details: Any) -> Event:
        ev = Event(
            self.stream_id, self.signal_id, stage, outcome,
            self.ts_ms if ts_ms is None else ts_ms, len(self.events), reason,
            self.source, self.venue, self.symbol, size_usd, details,
        )
        self.events.append(ev)
        return ev


@dataclass(slots=True)
class Outcome:
    """What one stream entry came to: its events and whether it may be acked.

    ``terminal`` False means an infrastructure error stopped it short of a
    decision: the entry must stay pending so it is delivered again. An empty
    ``stream_id`` marks an outcome no entry owns (a trade closed on the clock
    or recovered at start): recorded, never acknowledged.
    """

    stream: str
    stream_id: str
    signal_id: str
    outcome: str
    reason: str = ""
    events: list[Event] = field(default_factory=list)
    executions: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    drop: list[Any] | None = None  # the filter drop's row (``DROP_COLUMNS``)
    terminal: bool = True
    fields: dict[str, str] = field(default_factory=dict)
    received_ns: int = 0
    deliveries: int = 1
    step_us: float = 0.0  # time inside the portfolio step: decide, ledger, and its batch's send to the venue
    queued: int = 0  # events already written to the outbox

    def stamp(self, latency_us: int) -> None:
        """Receipt to decision, on the events that have none yet (a resumed chain keeps its own)."""
        for ev in self.events:
            ev.latency_us = ev.latency_us or latency_us
