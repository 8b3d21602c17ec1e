"""A reconciliation alert as each book's step receives it, and its audit event.

Reconciliation while running (``connectors/live_reconcile.py``) compares a venue with every
book together, on a thread of its own; only a book's step writes its ledger and outbox, so
the alert reaches each book as an item of its own, beside the venues' answers, and the
step records it in the book's trail: stage ``RECONCILIATION``, outcome the drift's level
(``alert`` or ``kill``, ``operators/drift.py``), the alert's line as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.audit import Chain

RECONCILIATION = "RECONCILIATION"  # the audit stage of a reconciliation alert


@dataclass(frozen=True, slots=True)
class ReconciliationAlert:
    book: str
    look: str  # one id per venue and look, the same in every book it reaches
    venue: str  # the venue connection compared (its name, as `apex status` shows it)
    level: str  # alert | kill
    line: str
    ratio: float  # the difference as a share of the books' NAV
    gap_usd: float
    nav_usd: float
    differences: int
    ts_ms: int


def audit_rows(a: ReconciliationAlert, recorded_ms: int) -> list[list]:
    """The alert's one audit event, as the ledger's outbox queues rows. Its stream id is the
    look's and the book's (the audit store keys events by signal, stream id and sequence, not
    by book): the same look recorded twice in a book is one row, and each book keeps its own."""
    chain = Chain(f"reconciliation:{a.look}" + (f":{a.book}" if a.book else ""), "", a.ts_ms)
    chain.add(RECONCILIATION, a.level, a.line, reconciled_venue=a.venue, ratio=a.ratio, gap_usd=a.gap_usd,
              nav_usd=a.nav_usd, differences=a.differences)
    return [ev.as_row(recorded_ms) for ev in chain.events]
