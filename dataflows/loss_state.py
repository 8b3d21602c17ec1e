"""The day's loss sets the book's trading state, in the book's own step.

After each tick or fill the book's day (``operators/daily_loss.py``) is read against its
``daily_loss`` filter: a breach puts the book in the state its ``on_breach`` names
(HALTED or REDUCING), written in the batch's ledger transaction with the breach's reason,
audited (stage ``TRADING_STATE``, ``by: daily_loss``) and logged once. The filter alone
drops new signals; the state also holds the exits and whatever else leaves the egress.

A state is only ever tightened here (ACTIVE → REDUCING → HALTED): an operator's HALTED is
never loosened to a breach's REDUCING. A state this module set (and only such a state)
ends by itself at the first entry of a later UTC day on the stream clock, when the day's
loss budget starts again: the book goes back to the state it was in before the breach
(ACTIVE, or an operator's REDUCING the breach tightened to HALTED, with its own reason). A
state anyone else set waits for ``apex resume``.
"""

from __future__ import annotations

import logging
import time

from connectors import metrics, trading_state_store
from connectors.trading_state_store import TradingState
from operators.audit import Chain
from operators.daily_loss import DAY_MS
from operators.portfolio import Portfolio
from operators.risk_filters import daily_loss_breach
from operators.trading_state import ACTIVE, HALTED, RANK, REDUCING, TRADING_STATE

log = logging.getLogger("apex.orders")
BY = "daily_loss"


def new_day(step, clock_ms: int) -> None:
    """Before an entry at ``clock_ms``: a state the day's loss set on an earlier UTC day ends."""
    executor = step.desk.executor
    if executor.trading == ACTIVE:
        return
    s = trading_state_store.read(step.ledger.db)
    if s.by != BY or clock_ms // DAY_MS <= s.summary.get("day", clock_ms // DAY_MS):
        return
    was = s.summary.get("was") or {}
    if was.get("by", BY) == BY:  # the breach found the book ACTIVE (or in a state of its own)
        was = {"state": ACTIVE, "reason": "", "by": ""}
    reason = "daily_loss: a new UTC day: the day's loss budget starts again"
    if was["state"] != ACTIVE:
        reason += f"; back to {was['state']} as {was['by'] or 'its setter'} left it: {was['reason']}"
    _set(step, s, was["state"], reason, {}, by=was["by"] if was["state"] != ACTIVE else BY)
    log.warning("book %s: %s: now %s", step.p.book or "(one)", reason, was["state"])


def check(step, book: Portfolio) -> None:
    """After a tick or a fill: a breach of the day's loss limit sets the book's state."""
    executor = step.desk.executor
    if executor.trading == HALTED:
        return  # nothing tighter to go to
    found = daily_loss_breach(book.day_loss, step.p.filters)
    if found is None or RANK[found.state] <= RANK[executor.trading]:
        return
    before = trading_state_store.read(step.ledger.db)
    reason = found.reason()
    was = {"state": before.state, "reason": before.reason, "by": before.by}
    _set(step, before, found.state, reason, {"day": book.day_loss.day, "was": was})
    log.warning("book %s: %s: now %s", step.p.book or "(one)", reason, found.state)


def _set(step, before: TradingState, state: str, reason: str, summary: dict, by: str = BY) -> None:
    """The state in the ledger's current transaction, its audit event beside it. The last
    command's id is kept: ``apex kill`` waits to read it, and this is not a command."""
    now_ms = int(time.time() * 1000)
    chain = Chain(f"{BY}:{now_ms}:{state}", "", now_ms)
    chain.add(TRADING_STATE, state, reason, by=BY, was=before.state)
    step.ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in chain.events]
    trading_state_store.write(step.ledger.db, TradingState(state, reason, by, before.command_id, now_ms, summary))
    step.desk.executor.trading = state
    metrics.set_trading_state(step.p.book, state)
