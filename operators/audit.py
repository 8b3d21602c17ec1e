"""The seven audit stages and the events they record.

One event per stage a signal reaches, each self-describing, so any trade's
whole decision chain can be rebuilt from the events alone (``apex audit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """JSON text with sorted keys, for audit details and a trade's terms: orjson, because
    the stdlib encoder was a large share of a replay."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()


def details_text(details: dict[str, Any]) -> str:
    """An event's details as the audit store keeps them: written by the shipper, off the worker's path."""
    return dumps(details)


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

# The events of an opening order's chain when the order leaves (receipt, filters, sizing,
# attempt): queued with its intent, so a chain resumed after a crash goes on from here.
SENT_EVENTS = 4

# Terminal outcomes: a signal that reached one of these is decided and its
# stream entry may be acknowledged once the record of it is durable.
INVALID_TICK = "invalid_tick"  # a market entry refused (malformed, or a price the book cannot believe)
PRICE_PROTECTION = "price_protection"  # nothing filled within the order's price band (operators/protection.py)
SLICED = "sliced"  # sent as children over time (operators/slicing.py): each child's outcome is its own
TERMINAL = ("invalid", "duplicate", "expired", "dropped", "filled", "rejected", "tick", INVALID_TICK, "closed",
            PRICE_PROTECTION, SLICED)


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(**d)

    def as_row(self, recorded_ms: int) -> list[Any]:
        """The audit store's row (``EVENT_COLUMNS``). Details stay an object: the row is packed
        whole into the outbox anyway, and the shipper turns them into the column's JSON text
        (``details_text``): the worker is the pipeline's bottleneck, and the shipper, a niced
        child on the other core, has time to spare."""
        return [self.signal_id, self.stream_id, self.seq, self.stage, self.outcome, self.reason, self.ts_ms,
                self.source, self.venue, self.symbol, self.size_usd, self.details, self.latency_us,
                recorded_ms]


@dataclass(slots=True)
class Chain:
    """The events of one stream entry in stage order, with a running sequence
    number so two events in the same millisecond still sort as they happened.
    ``first_seq``: where a chain resumed after a crash goes on (its earlier events
    are in the audit store already, and not held here)."""

    stream_id: str
    signal_id: str
    ts_ms: int
    source: str = ""
    venue: str = ""
    symbol: str = ""
    events: list[Event] = field(default_factory=list)
    first_seq: int = 0

    @classmethod
    def after_send(cls, stream_id: str, signal_id: str, ts_ms: int, source: str, venue: str, symbol: str) -> Chain:
        """The chain of a "sent" decision found after a crash, to go on from its attempt: the
        events before are in the audit store already (``SENT_EVENTS`` of them)."""
        return cls(stream_id, signal_id, ts_ms, source, venue, symbol, first_seq=SENT_EVENTS)

    def add(self, stage: str, outcome: str, reason: str = "", *, ts_ms: int | None = None,
            size_usd: float | None = None, **details: Any) -> Event:
        ev = Event(
            self.stream_id, self.signal_id, stage, outcome,
            self.ts_ms if ts_ms is None else ts_ms, self.first_seq + len(self.events), reason,
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
    resumed: bool = False  # its decision was found in the ledger, made by an earlier delivery or run
    copies: int = 1  # books its entry reached (a market entry reaches every book): acked once all are in
    late: bool = False  # the fate of an order whose entry was acknowledged at its acceptance: not acked again

    def queue(self, rows: dict[str, list], recorded_ms: int) -> None:
        """Append its audit store rows not yet queued to ``rows`` (lists by table): the events
        from ``queued`` on, then its drop, executions and trades. Called when its decision is
        recorded, and for an order also before it leaves, with only its chain so far (the
        drop, executions and trades come with the outcome's end)."""
        rows["audit_events"] += [ev.as_row(recorded_ms) for ev in self.events[self.queued:]]
        self.queued = len(self.events)
        if self.drop:
            rows["filter_drops"].append(self.drop)
        if self.executions:
            rows["executions"] += self.executions
        if self.trades:
            rows["trades"] += self.trades

    def stamp(self, latency_us: int) -> None:
        """Receipt to decision, on the events that have none yet (a resumed chain keeps its own)."""
        for ev in self.events:
            ev.latency_us = ev.latency_us or latency_us
