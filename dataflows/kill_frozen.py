"""The kill beside a frozen worker, book by book: each open trade closed at its venue under
the trade's own close id (its next attempt's, ``operators/closes.py``), and the worker told.

The worker's ledger is read, never written: a frozen worker may hold its write lock
mid-batch, and a reader still sees its last commit (SQLite WAL). What the kill closes:

- each open trade whose close the ledger does not hold yet, or whose last close was cut at
  its limit (under the next attempt's id, as the worker would send it); a close the worker
  has on its way is the worker's: it follows it when it wakes;
- each opening order still live in the ledger that the venue filled, asked by its client
  order id once the cancels are done: its trade is not in the ledger yet, but its
  position is at the venue, and the worker books it when it wakes.

Instrument by instrument, buy-backs first, spot sales capped at what the account holds,
as ``close_book`` does with the state dir held. The list of closes is written for the
worker (``connectors/kill_closes.py``) before the first one leaves, under the ledger's
write lock when it can be had, after checking the worker has not carried out the command
meanwhile: a worker batch that starts later reads the list; one in progress began before
the command existed (it is the frozen one). Each close is asked of its venue before it is
sent, so a second kill sends nothing twice. The worker that wakes and carries out the
command adopts these closes (``dataflows/control_step.py``): their fates asked of the
venue, their fills booked, nothing sent. ``flatten_rest`` then sells only what no trade
explains.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from connectors import kill_closes, trading_state_store
from connectors.ledger_view import LedgerView
from connectors.venues import Rejected, Venue, VenueDown
from dataflows.config import Pipeline
from dataflows.kill_report import KillReport
from dataflows.kill_venues import _audit, _name, _spot_holdings, lots_of, place_one
from operators.closes import close_id, next_attempt
from operators.orders import Order

LOCK_WAIT_S = 0.2  # a frozen worker holds its write lock until it wakes: not waited for
OPPOSITE = {"buy": "sell", "sell": "buy"}


def close_frozen_book(b: Pipeline, shared: Mapping[str, Venue], report: KillReport, now_ms: int) -> None:
    """``shared``: the real venues by market (a paper market is the worker's own)."""
    if not b.ledger_path.exists():
        return
    where = f"book {b.book or '(one)'}"
    before, plan = _plan(b, shared, report, now_ms)
    if not before and not plan:
        return
    if not _claim(b, report.command_id, before + plan):
        report.notes.append(f"{where}: the worker carried out the command meanwhile: its trades' closes are its own")
        return
    for order in plan:
        venue = shared[order.venue]
        known = place_one(venue, order, report.venue(_name(venue)), order.signal_id)
        if known is None:
            continue
        _audit(b, report, order, "closed", now_ms, quantity=known.quantity, price=known.price)


def _plan(b: Pipeline, shared: Mapping[str, Venue], report: KillReport,
          now_ms: int) -> tuple[list[Order], list[Order]]:
    """The closes an earlier kill sent (found at their venue: nothing more to send), and
    the closes to send, in the order they go."""
    with LedgerView(b.ledger_path) as view:
        trades = view.open_trades()
        closing = {sid for (sid,) in view.db.execute("SELECT signal_id FROM executions WHERE kind = 'close'")}
        # the attempt each open trade's close goes under: the worker's own rule (a trade whose
        # last close is on its way, or was refused, is not the kill's to close)
        attempts = {sid: next_attempt(n, status, said) for sid, (n, status, said, _) in view.close_attempts().items()
                    if next_attempt(n, status, said) != n}
        opening = [o for o, _, trade, _ in view.live("open") if trade is not None]
    # (market, symbol) -> (signal, side, quantity, the price it was bought or sold at)
    wanted: dict[tuple[str, str], list[tuple[str, str, float, float]]] = {}
    for t in trades:
        if t.venue in shared and (t.signal_id not in closing or t.signal_id in attempts):
            wanted.setdefault((t.venue, t.symbol), []).append((t.signal_id, t.exit_side, t.quantity, t.entry_price))
    opened = {t.signal_id for t in trades}
    for o in opening:
        if o.venue not in shared or o.signal_id in opened or o.signal_id in closing:
            continue
        try:
            fill = shared[o.venue].lookup(o)  # finished first at OKX: it was to be cancelled
        except Rejected:
            continue  # it ended with nothing filled
        except (VenueDown, OSError, TimeoutError) as e:
            report.venue(_name(shared[o.venue])).errors.append(f"{o.signal_id}: its open not asked about: {e}")
            continue
        if fill is not None and fill.quantity > 0:
            wanted.setdefault((o.venue, o.symbol), []).append((o.signal_id, OPPOSITE[o.side], fill.quantity,
                                                               fill.price))
    before: list[Order] = []
    plan: list[Order] = []
    for (market, symbol), closes in sorted(wanted.items()):
        venue = shared[market]
        price = getattr(venue, "price", lambda *_: None)(market, symbol) or closes[0][3]  # a reference only
        left = []
        for c in closes:
            n = attempts.get(c[0], 0)
            found = _sent_before(venue, Order(close_id(c[0], n), c[0], "close", market, symbol, c[1], c[2], price,
                                              now_ms, attempt=n), report)
            if found is None:
                left.append(c)
            elif found:
                before.append(found)
        closes = left
        buys = [c for c in closes if c[1] == "buy"]
        sales = [c for c in closes if c[1] == "sell"]
        if sales and getattr(venue, "holdings", None) is not None:
            # never more than the account holds (fees are paid in the coin): what it holds
            # now, and what this instrument's buy-backs bring back first
            held = _spot_holdings({market: venue}, report).get((market, symbol), 0.0) + sum(c[2] for c in buys)
            inst = venue.instrument(market, symbol)
            capped = []
            for sid, side, qty, _ in sales:
                size = qty if held >= qty else lots_of(max(held, 0.0), inst.lot_size if inst else 0.0)
                if size <= 0 or (inst is not None and size < inst.min_size):
                    report.venue(_name(venue)).errors.append(
                        f"{sid} not closed: the book holds {symbol} {qty:g} for it, the account {max(held, 0.0):g}")
                    continue
                held -= size
                capped.append((sid, side, size, 0.0))
            sales = capped
        plan += [Order(close_id(sid, attempts.get(sid, 0)), sid, "close", market, symbol, side, qty, price, now_ms,
                       attempt=attempts.get(sid, 0)) for sid, side, qty, _ in buys + sales]
    return before, plan


def _sent_before(venue: Venue, order: Order, report: KillReport) -> Order | bool | None:
    """A close asked of its venue by its client order id before it is sent: the order when an
    earlier kill's filled there, None when the venue has none (it may be sent), False when it
    is not to be sent (it ended refused before, or the venue did not answer)."""
    try:
        return order if venue.lookup(order) is not None else None
    except Rejected as e:
        report.venue(_name(venue)).errors.append(f"{order.signal_id} not closed: its close ended refused before: {e}")
    except (VenueDown, OSError, TimeoutError) as e:
        report.venue(_name(venue)).errors.append(f"{order.signal_id} not closed: its close not asked about: {e}")
    return False


def _claim(b: Pipeline, command_id: str, plan: list[Order]) -> bool:
    """The closes written for the worker; False if it has carried out the command already
    (its own closes are on their way). Under the ledger's write lock when it is free, so
    no worker batch starts between the check and the writing."""
    db = sqlite3.connect(str(b.ledger_path), timeout=LOCK_WAIT_S, isolation_level=None)
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
            locked = True
        except sqlite3.OperationalError:  # held mid-batch: that batch began before the command
            locked = False
        try:
            if trading_state_store.read(db).command_id == command_id:
                return False
            kill_closes.write(b.ledger_path, command_id, plan)
            return True
        finally:
            if locked:
                db.execute("ROLLBACK")
    finally:
        db.close()
