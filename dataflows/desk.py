"""What every part of the portfolio step shares: the ledger, the egress, and how an
outcome's decision and audit rows enter the ledger's current transaction.

Opened lazily, in the worker that runs the step (not where the flow is built), with
the venues from the factory it is given: the wiring's, or a test's.
"""

from __future__ import annotations

import time

from connectors import metrics, trading_state_store
from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.sender import Gateway
from connectors.venues import VenueFactory
from dataflows.config import Pipeline
from operators.audit import Outcome


class Desk:
    def __init__(self, pipeline: Pipeline, venues: VenueFactory, gateway: Gateway | None = None):
        self.p = pipeline
        self._venues = venues
        self.gateway = gateway
        self._ledger: Ledger | None = None
        self._executor: Executor | None = None

    def _connect(self) -> None:
        """Ledger and venue together."""
        self._ledger = Ledger(self.p.ledger_path, keep_wal=True)
        self._executor = Executor(self._ledger, self._venues(), self.gateway, self.p.book)
        trading_state_store.ensure(self._ledger.db)
        self._executor.trading = trading_state_store.read(self._ledger.db).state  # as the last run left it
        metrics.set_trading_state(self.p.book, self._executor.trading)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._connect()
        return self._ledger  # type: ignore[return-value]

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._connect()
        return self._executor  # type: ignore[return-value]

    def record(self, out: Outcome) -> Outcome:
        """The decision and its audit rows, in the ledger's current transaction."""
        self.decided(out)
        return self.emit(out)

    def decided(self, out: Outcome) -> None:
        self.ledger.record_decision(out.signal_id, out.stream_id, out.outcome, out.reason, out.events[0].ts_ms)

    def emit(self, out: Outcome) -> Outcome:
        out.queue(self.ledger.rows, time.time_ns() // 1_000_000)
        return out
