"""What a run prints: counts per outcome, drop rate per filter, fills, latency.

Latencies are kept in a bounded reservoir so a long-running job's memory does
not grow with the number of signals it has seen.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from operators.audit import INVALID_TICK, Outcome
from operators.decide import SIZING_DROPS

RESERVOIR = 100_000


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


@dataclass
class Reservoir:
    size: int = RESERVOIR
    seen: int = 0
    values: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, v: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(v)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.values[j] = v

    def extend(self, vs: list[float]) -> None:
        """A batch's values: appended in one go while there is room (every entry of a replay
        fed three reservoirs, one call each)."""
        room = self.size - len(self.values)
        if room > 0:
            self.values.extend(vs[:room])
            self.seen += min(room, len(vs))
            vs = vs[room:]
        for v in vs:
            self.add(v)

    def percentiles(self) -> dict[str, float]:
        s = sorted(self.values)
        return {"p50": percentile(s, 0.5), "p99": percentile(s, 0.99),
                "p999": percentile(s, 0.999), "max": s[-1] if s else 0.0}


@dataclass
class RunStats:
    """The sink's observer: fed every durable batch, read by the summary."""

    outcomes: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    step_us: Reservoir = field(default_factory=Reservoir)
    decision_us: Reservoir = field(default_factory=Reservoir)
    durable_us: Reservoir = field(default_factory=Reservoir)
    entries: int = 0
    ticks: int = 0
    on_batch: Callable[[int], None] | None = None
    first_error: str = ""

    closes: Counter = field(default_factory=Counter)
    pnl_usd: float = 0.0

    def observe(self, outcomes: list[Outcome], done_ns: int) -> None:
        durable, step, decision = [], [], []
        for o in outcomes:
            if not o.stream_id:  # a trade closed on the clock: no entry of its own
                self.closes[o.reason] += 1
                self.pnl_usd += sum(t["pnl_usd"] for t in o.trades)
                continue
            self.entries += 1
            durable.append((done_ns - o.received_ns) / 1000)
            self.outcomes[o.outcome] += 1
            if o.outcome == "tick" or o.outcome == INVALID_TICK:
                self.ticks += 1
                continue
            if o.outcome == "dropped":
                self.drops[o.reason] += 1
            elif o.outcome == "error" and not self.first_error:
                self.first_error = o.reason
            step.append(o.step_us)
            if o.events:
                decision.append(o.events[-1].latency_us)
        self.durable_us.extend(durable)
        self.step_us.extend(step)
        self.decision_us.extend(decision)
        if self.on_batch:
            self.on_batch(len(outcomes))

    @property
    def received(self) -> int:
        """Signals that reached the filters: valid, new and inside their TTL."""
        skipped = sum(self.outcomes[k] for k in ("invalid", "duplicate", "expired", "error"))
        return self.entries - self.ticks - skipped

    def as_dict(self) -> dict:
        received = self.received
        return {
            "entries": self.entries,
            "outcomes": dict(self.outcomes),
            "filter_drop_rate": {k: v / received for k, v in self.drops.items()} if received else {},
            "dropped_before_sizing": (sum(v for k, v in self.drops.items() if k not in SIZING_DROPS)
                                      / received) if received else 0.0,
            "fills": self.outcomes["filled"],
            "market_entries": self.ticks,
            "invalid_market_entries": self.outcomes[INVALID_TICK],
            "closes": dict(self.closes),
            "realized_pnl_usd": round(self.pnl_usd, 2),
            "step_latency_us": self.step_us.percentiles(),
            "decision_latency_us": self.decision_us.percentiles(),
            "durable_latency_us": self.durable_us.percentiles(),
        }
