"""A control command carried out in its book's step (``connectors/control.py``).

The state is set first, in the batch's transaction, so nothing decided after it in the
batch passes the egress that it refuses. A kill then lets the orders decided before it
leave (they were decided while trading was on: they leave, and are closed below),
cancels every opening order still working at a venue (its close waits for its end, as
an exit's does, then closes what it filled), and closes every open trade through the
exits' own close path with the reason ``kill``, the one close HALTED lets out. On a
remote venue the cancels and closes are commands, sent after the batch's commit; their
fates come back as events, so the book and the ledger follow the fills.

A kill that acted beside this worker while it was frozen (``dataflows/kill_frozen.py``)
closed its trades at the venues under their own close ids and listed them: those closes
are adopted (``adopt``), asked of the venue and booked when it answers, never sent again.

What the command did is written with the state (``trading_state.summary``, by venue) and
the command's id, which is how ``apex kill`` knows the worker has it. A kill carried out
again sends nothing twice: a close already on its way is not sent again (``Exits.close``),
nor is a cancel already asked for.
"""

from __future__ import annotations

import time

from connectors import kill_closes, metrics, trading_state_store
from connectors.control import Control
from connectors.trading_state_store import TradingState
from connectors.venues import Rejected
from dataflows.slicing_step import halt_children
from operators import order_fsm as fsm
from operators.audit import Chain, Outcome
from operators.portfolio import Portfolio
from operators.signal import VENUES
from operators.trading_state import COMMANDS, KILL, TRADING_STATE

LIVE_OR_NONE = fsm.LIVE | {None}  # a close not sent yet, or one whose fate is still to come


def carry_out(step, book: Portfolio, c: Control, outs: list[Outcome]) -> None:
    """``step``: the book's ``PortfolioStep``."""
    executor, ledger = step.desk.executor, step.ledger
    before = trading_state_store.read(ledger.db)
    state = COMMANDS[c.command]
    now_ms = int(time.time() * 1000)
    trigger = f"control:{c.id}"
    if before.state != state:  # a command that changes nothing records nothing
        chain = Chain(trigger, "", now_ms)
        chain.add(TRADING_STATE, state, c.reason, by=c.by, was=before.state, command=c.command)
        _audit(ledger, chain, now_ms)
    executor.trading = state
    metrics.set_trading_state(step.p.book, state)
    if c.command == "resume":  # the day's loss budget starts again from here (kept with the book's state)
        book.day_loss.resume(book.nav)
    summary: dict[str, dict[str, list[str]]] = {}
    if c.command == "kill":
        for market in VENUES:  # every venue the book trades on is reported, if only to say "nothing"
            try:
                summary.setdefault(executor.venue_for(market).name, {})
            except Rejected:
                pass
        step.send_orders(book)
        # children of sliced orders not sent yet never will be
        ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in halt_children(ledger.db, trigger, now_ms)]
        asked = step.cancels_asked
        for cid, f in list(step.opens.working.items()):
            if cid in asked:
                continue
            asked.add(cid)
            executor.cancel(f.order)
            name = executor.venue_for(f.order.venue).name
            summary.setdefault(name, {}).setdefault("cancelled", []).append(cid)
            chain = Chain(trigger, f.order.signal_id, now_ms, venue=f.order.venue, symbol=f.order.symbol)
            chain.add(TRADING_STATE, "cancel", KILL, client_order_id=cid)
            _audit(ledger, chain, now_ms)
        adopt(ledger, c.id)
        # instrument by instrument, buy-backs first (a spot short was sold out of coins other
        # trades bought): one instrument's orders leave in the order decided
        for terms in sorted(book.open_trades.values(), key=lambda t: (t.venue, t.symbol, t.exit_side != "buy")):
            cid = step.exits.current_id(terms.signal_id)
            if cid in step.exits.closing or terms.signal_id in step.exits.deferred:
                continue  # on its way already
            if ledger.status(cid) not in LIVE_OR_NONE:
                continue  # its close was sent once and ended (refused): never sent again
            first = len(outs)
            step.exits.close(book, terms, KILL, book.marks.get(terms.symbol, terms.entry_price), trigger, now_ms,
                             outs)
            # a close waiting for its open's end (just asked to cancel) is said with the cancel
            if cid in step.exits.closing or any(o.outcome == "closed" for o in outs[first:]):
                name = executor.venue_for(terms.venue).name
                summary.setdefault(name, {}).setdefault("closed", []).append(
                    f"{terms.symbol} {terms.exit_side} {terms.quantity:g}")
    trading_state_store.write(ledger.db, TradingState(state, c.reason, c.by, c.id, now_ms, summary))


def adopt(ledger, command_id: str) -> None:
    """The closes ``apex kill`` sent beside this worker while it was frozen
    (``connectors/kill_closes.py``), recorded as intents it did not send: closing those
    trades, the egress finds an intent with no outcome and asks the venue (the crash
    window's path, ``fsm.UNKNOWN``) instead of sending; their fills come back as events."""
    for order in kill_closes.read(ledger.path, command_id):
        if ledger.status(order.client_order_id) is None:
            ledger.record_intent(order, KILL)


def _audit(ledger, chain: Chain, now_ms: int) -> None:
    """The command's own events, straight into the batch's audit rows: no stream entry owns
    them, and they are not trades to count among a run's closes."""
    ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in chain.events]
