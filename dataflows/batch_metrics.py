"""A book's batch, counted into the metrics (connectors/metrics.py) once it is decided.

Counted once per batch from the batch's outcomes (a Counter, then one increment per
label seen), so the paper path pays a short loop per batch and nothing per decision.
Off (``ON`` False) unless the process serves metrics.
"""

from __future__ import annotations

from collections import Counter

from connectors import metrics as m
from operators import audit as A
from operators import order_fsm as fsm
from operators.audit import Outcome
from operators.portfolio import Portfolio
from operators.signal import VENUES

ON = False  # set by the service when it serves /metrics

# outcomes whose events may hold an order's status changes: the others are never scanned
_ORDERED = frozenset({"sent", "opened", "rejected", "closed", "unknown", "accepted", "filled", "error"})


class BatchMetrics:
    """One book's counters, their labelled children looked up once."""

    def __init__(self, book: str, venue_of_market: dict[str, str]):
        self.book = book
        self.venue_of = venue_of_market  # market -> the venue that trades it (paper, okx, ibkr)
        self._entries: dict[str, object] = {}
        self._drops: dict[str, object] = {}
        self._stage = m.STAGE_SECONDS.labels(stage=f"portfolio:{book}" if book else "portfolio")
        self._nav = m.NAV.labels(book=book)
        self._drawdown = m.DRAWDOWN.labels(book=book)

    def done(self, out: list, seconds: float, book: Portfolio | None) -> None:
        outcomes: Counter = Counter()
        drops: Counter = Counter()
        orders: Counter = Counter()
        for o in out:
            if type(o) is not Outcome:
                continue  # a command to a remote venue: counted when its answer comes back
            if o.stream_id:
                outcomes[o.outcome] += 1
                if o.outcome == "dropped":
                    drops[o.reason] += 1
            if o.outcome in _ORDERED or not o.stream_id:
                _order_changes(o, orders, self.venue_of)
        for outcome, n in outcomes.items():
            child = self._entries.get(outcome)
            if child is None:
                child = self._entries[outcome] = m.ENTRIES.labels(book=self.book, outcome=outcome)
            child.inc(n)  # type: ignore[attr-defined]
        for reason, n in drops.items():
            child = self._drops.get(reason)
            if child is None:
                child = self._drops[reason] = m.FILTER_DROPS.labels(book=self.book, filter=reason)
            child.inc(n)  # type: ignore[attr-defined]
        for (venue, status), n in orders.items():
            m.ORDERS.labels(venue=venue, status=status).inc(n)
        self._stage.observe(seconds)
        if book is not None:
            self._nav.set(book.nav)
            self._drawdown.set(book.drawdown)


def _order_changes(o: Outcome, orders: Counter, venue_of: dict[str, str]) -> None:
    """The statuses the outcome's new events record: an attempt is ``submitted``, a
    confirmation its status (NautilusTrader's names, as the order state machine has them)."""
    for ev in o.events:
        if ev.stage == A.EXECUTION_ATTEMPT:
            orders[(venue_of.get(ev.venue, ev.venue), fsm.SUBMITTED)] += 1
        elif ev.stage == A.EXECUTION_CONFIRMED and ev.outcome in fsm.STATUSES:
            orders[(venue_of.get(ev.venue, ev.venue), ev.outcome)] += 1


def for_book(pipeline) -> BatchMetrics | None:
    if not ON:
        return None
    return BatchMetrics(pipeline.book, {market: pipeline.venues.kind(market) for market in VENUES})
