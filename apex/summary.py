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
REMEMBERED = 50_000


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
    """The sink's observer: fed every durable batch, read by the summary.

    Counts entries, not deliveries: an entry delivered again within the run (retried
    after an error, claimed from a dead consumer) keeps one count, its last outcome's.
    An entry whose decision was already in the ledger (a rerun on the same state dir,
    a redelivery after a crash) is counted apart from those decided now, so a rerun
    does not claim fills it never sent."""

    outcomes: Counter = field(default_factory=Counter)  # last outcome of each entry
    already: Counter = field(default_factory=Counter)  # of those, decided before this run reached them
    drops: Counter = field(default_factory=Counter)  # drop reasons of the entries dropped now
    step_us: Reservoir = field(default_factory=Reservoir)
    decision_us: Reservoir = field(default_factory=Reservoir)
    durable_us: Reservoir = field(default_factory=Reservoir)
    entries: int = 0
    on_batch: Callable[[int], None] | None = None
    first_error: str = ""

    closes: Counter = field(default_factory=Counter)
    pnl_usd: float = 0.0
    # (stream, stream id) -> what it counts as, for the last ``remember`` to twice that many
    # entries: a redelivery comes within seconds (claim_idle_ms) or after a restart, which is
    # a new run, so the most recent entries are enough, and a long run's memory stays flat
    seen: dict = field(default_factory=dict)
    remember: int = REMEMBERED

    def observe(self, outcomes: list[Outcome], done_ns: int) -> None:
        durable, step, decision = [], [], []
        for o in outcomes:
            if not o.stream_id:  # a trade closed on the clock: no entry of its own
                self.closes[o.reason] += 1
                self.pnl_usd += sum(t["pnl_usd"] for t in o.trades)
                continue
            self._count(o)
            if o.late:  # the entry was durable and acknowledged at its order's acceptance
                continue
            durable.append((done_ns - o.received_ns) / 1000)
            if o.outcome == "tick" or o.outcome == INVALID_TICK:
                continue
            if o.outcome == "error" and not self.first_error:
                self.first_error = o.reason
            step.append(o.step_us)
            if o.events:
                decision.append(o.events[-1].latency_us)
        self.durable_us.extend(durable)
        self.step_us.extend(step)
        self.decision_us.extend(decision)
        if self.on_batch:
            self.on_batch(len(outcomes))

    def _count(self, o: Outcome) -> None:
        key = (o.stream, o.stream_id)
        prev = self.seen.get(key)
        if prev is not None:  # delivered again within the run: its earlier outcome gives way
            self._tally(*prev, -1)
            # decided earlier in this run and delivered again: still decided now
            now = self.seen[key] = (o.outcome, o.reason, o.resumed and prev[2])
            self._tally(*now, 1)
            return
        self.entries += 1
        self.seen[key] = (o.outcome, o.reason, o.resumed)
        if len(self.seen) > 2 * self.remember:  # the older half goes at once: cheaper than one by one
            self.seen = dict(list(self.seen.items())[-self.remember:])
        self.outcomes[o.outcome] += 1
        if o.resumed:
            self.already[o.outcome] += 1
        elif o.outcome == "dropped":
            self.drops[o.reason] += 1

    def _tally(self, outcome: str, reason: str, resumed: bool, n: int) -> None:
        self.outcomes[outcome] += n
        if resumed:
            self.already[outcome] += n
        elif outcome == "dropped":
            self.drops[reason] += n

    @property
    def ticks(self) -> int:
        """Market entries, believed or refused."""
        return self.outcomes["tick"] + self.outcomes[INVALID_TICK]

    @property
    def decided_now(self) -> int:
        """Entries this run brought to a decision (not market entries, not left undecided by an error)."""
        return self.entries - self.ticks - self.outcomes["error"] - sum(self.already.values())

    @property
    def received(self) -> int:
        """Signals decided now that reached the filters: valid, new and inside their TTL."""
        skipped = sum(self.outcomes[k] - self.already[k] for k in ("invalid", "duplicate", "expired"))
        return self.decided_now - skipped

    def as_dict(self) -> dict:
        received = self.received
        return {
            "entries": self.entries,
            "outcomes": dict(+self.outcomes),
            "decided_now": self.decided_now,
            "already_decided": dict(+self.already),
            "errors": self.outcomes["error"],
            "first_error": self.first_error,
            "filter_drop_rate": {k: v / received for k, v in self.drops.items() if v} if received else {},
            "dropped_before_sizing": (sum(v for k, v in self.drops.items() if k not in SIZING_DROPS)
                                      / received) if received else 0.0,
            "fills": self.outcomes["filled"] - self.already["filled"],
            "market_entries": self.ticks,
            "invalid_market_entries": self.outcomes[INVALID_TICK],
            "closes": dict(self.closes),
            "realized_pnl_usd": round(self.pnl_usd, 2),
            "step_latency_us": self.step_us.percentiles(),
            "decision_latency_us": self.decision_us.percentiles(),
            "durable_latency_us": self.durable_us.percentiles(),
        }
