"""The kill switch at the venues: every open Apex order cancelled, every book's trades
closed through the exits' own close path (waited for, outside the dataflow), and what is
left at a venue sold down to dust. Used by ``dataflows/kill.py`` when no worker runs, or
beside a worker that did not confirm (then the cancels and the sales, and the trades'
closes of ``dataflows/kill_frozen.py``: the books' ledgers are the worker's)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal

from connectors.ledger import Ledger
from connectors.venues import Rejected, Venue, VenueDown
from dataflows.config import Pipeline
from dataflows.kill_report import KillReport, VenueReport
from operators.audit import Chain, Outcome
from operators.fill import Fill
from operators.orders import Order, client_order_id
from operators.trading_state import KILL, TRADING_STATE


BESIDE_FROZEN = "here: the worker did not confirm"  # KillReport.via beside a frozen worker
FROZEN_LEDGER_WAIT_MS = 100


class Waited:
    """A venue called in place, its fates waited for: the book's usual paths, outside the
    dataflow, with no sender to hand commands to."""

    asynchronous = False

    def __init__(self, venue: Venue):
        self._venue = venue

    def __getattr__(self, name: str):
        return getattr(self._venue, name)


def _distinct(venues: Mapping[str, Venue]) -> list[tuple[Venue, list[str]]]:
    out: dict[int, tuple[Venue, list[str]]] = {}
    for market, venue in venues.items():
        out.setdefault(id(venue), (venue, []))[1].append(market)
    return list(out.values())


def _name(venue: Venue) -> str:
    return str(getattr(venue, "name", "") or type(venue).__name__)


def cancel_everywhere(venues: Mapping[str, Venue], report: KillReport, first: Pipeline, now_ms: int) -> None:
    """Every open Apex order (its client order id is Apex's: ``client_order_id``) cancelled,
    whoever placed it: the books' opens and closes, and one a crash left unrecorded."""
    for venue, _ in _distinct(venues):
        r = report.venue(_name(venue))
        try:
            for order in venue.open_orders():
                if not order.client_order_id.startswith("ax"):
                    continue  # not Apex's: left alone
                if venue.cancel(order) is False:  # IB: placed by another client id (a frozen worker's)
                    r.errors.append(f"{order.client_order_id} not cancelled: placed by another client, the only "
                                    "one IB takes its cancel from")
                    continue
                r.cancelled.append(order.client_order_id)
                _audit(first, report, order, "cancelled", now_ms)
        except (VenueDown, OSError, TimeoutError) as e:
            r.errors.append(f"orders not cancelled: {e}")


def close_book(p: Pipeline, b: Pipeline, venues: Mapping[str, Venue], report: KillReport, now_ms: int) -> None:
    """Every open trade of the book closed through the exits' own close path, waited for,
    and recorded in its ledger (its fills, its trades, its audit rows), the state dir held
    (beside a frozen worker: ``dataflows/kill_frozen.py``)."""
    from dataflows.portfolio_step import PortfolioStep

    wrapped: dict[int, Waited] = {}
    by_market = {m: wrapped.setdefault(id(v), Waited(v)) for m, v in venues.items()}
    step = PortfolioStep(b, lambda: by_market)
    ledger = step.ledger
    ledger.begin()
    try:
        book = step.new_book()  # the crash window settled: orders just cancelled are asked about here
        outs: list[Outcome] = list(step.recovered)
        spot = {m for m, v in venues.items() if getattr(v, "holdings", None) is not None}
        trigger = f"control:{report.command_id}"
        by_instrument: dict[tuple[str, str], list] = {}
        for terms in book.open_trades.values():
            by_instrument.setdefault((terms.venue, terms.symbol), []).append(terms)
        for key, trades in sorted(by_instrument.items()):
            # instrument by instrument, buying back first: on a spot account a short was sold
            # out of coins other trades bought, and its buy-back leaves the sales something to sell
            for terms in [t for t in trades if t.exit_side == "buy"]:
                _close_one(step, book, terms, venues, report, trigger, now_ms, outs)
            sales = [t for t in trades if t.exit_side == "sell"]
            if sales and key[0] in spot:  # never more than the account holds: fees are paid in the coin
                venue = venues[key[0]]
                held = _spot_holdings({key[0]: venue}, report).get(key, 0.0)
                inst = venue.instrument(*key)
                capped = []
                for terms in sales:
                    qty = lots_of(min(terms.quantity, max(held, 0.0)), inst.lot_size if inst else 0.0)
                    if qty <= 0 or (inst is not None and qty < inst.min_size):
                        report.venue(_name(venue)).errors.append(
                            f"{terms.signal_id} not closed: the book holds {terms.symbol} {terms.quantity:g} for it, "
                            f"the account {max(held, 0.0):g}")
                        continue
                    held -= qty
                    capped.append(replace(terms, quantity=qty))
                sales = capped
            for terms in sales:
                _close_one(step, book, terms, venues, report, trigger, now_ms, outs)
        for out in outs:
            for ex in out.executions:
                if ex.get("kind") == "close":
                    report.venue(_venue_name(venues, ex["venue"])).closed.append(
                        f"{ex['symbol']} {ex['side']} {ex['quantity']:g}")
            if out.outcome == "rejected" and out.reason:
                report.venue(_venue_name(venues, _venue_of(out))).errors.append(
                    f"{out.signal_id} not closed: {out.reason}")
        ledger.record_book(book.market_state())
    finally:
        ledger.commit()
        ledger.close()


def _close_one(step, book, terms, venues: Mapping[str, Venue], report: KillReport, trigger: str, now_ms: int,
               outs: list[Outcome]) -> None:
    before = step.ledger.status(step.exits.current_id(terms.signal_id))
    if before is not None:  # its close was sent once already and ended so: never sent again
        report.venue(_venue_name(venues, terms.venue)).errors.append(
            f"{terms.signal_id} left open: its close ended {before} before; see `apex reconcile`")
        return
    try:
        step.exits.close(book, terms, KILL, book.marks.get(terms.symbol, terms.entry_price), trigger, now_ms, outs)
    except (VenueDown, Rejected) as e:
        report.venue(_venue_name(venues, terms.venue)).errors.append(f"{terms.symbol} not closed: {e}")


def _spot_holdings(venues: Mapping[str, Venue], report: KillReport) -> dict[tuple[str, str], float]:
    """What each spot account holds (a venue that lists ``holdings``), by (market, symbol)."""
    out: dict[tuple[str, str], float] = {}
    for venue, _ in _distinct(venues):
        holdings = getattr(venue, "holdings", None)
        if holdings is None:
            continue
        try:
            out.update(holdings(free=True)[0])
        except (VenueDown, OSError, TimeoutError) as e:
            report.venue(_name(venue)).errors.append(f"holdings not read: {e}")
    return out


def _venue_name(venues: Mapping[str, Venue], market: str) -> str:
    venue = venues.get(market)
    return _name(venue) if venue is not None else market


def _venue_of(out: Outcome) -> str:
    return out.events[0].venue if out.events else ""


def flatten_rest(p: Pipeline, books: list[Pipeline], shared: Mapping[str, Venue], report: KillReport,
                  now_ms: int) -> None:
    """What a real venue still holds once the books' trades are closed (what a trade's
    capped close left, a holding no book explains) sold or bought back at market, down to
    the venue's minimum size; the instruments ``venues.<name>.ignore`` lists are left alone."""
    from dataflows.startup import ignored

    left_alone = ignored(p)
    for venue, markets in _distinct(shared):
        r = report.venue(_name(venue))
        try:
            holdings = getattr(venue, "holdings", None)
            # a spot sale is of what no open order holds: an order the kill could not cancel
            # (not Apex's, or one the venue still works on) keeps its coins, and OKX refuses
            # the sale of a coin more (51008)
            held = holdings(free=True)[0] if holdings is not None else venue.positions()
        except (VenueDown, OSError, TimeoutError) as e:
            r.errors.append(f"positions not read: {e}")
            continue
        for (market, symbol), qty in sorted(held.items()):
            if market not in markets or symbol in left_alone.get(market, ()) or not qty:
                continue
            inst = venue.instrument(market, symbol)
            size = lots_of(abs(qty), inst.lot_size if inst is not None else 0.0)
            if inst is not None and (size < inst.min_size or size <= 0):
                r.dust.append(f"{symbol} {qty:g}")
                continue
            price = getattr(venue, "price", lambda *_: None)(market, symbol) or 0.0
            sid = f"kill:{report.command_id}:{market}:{symbol}"
            order = Order(client_order_id(sid, "close"), sid, "close", market, symbol, "sell" if qty > 0 else "buy",
                          size, price, now_ms)
            result = place_one(venue, order, r, symbol)
            if result is not None:
                _audit(books[0], report, order, "flattened", now_ms, quantity=result.quantity, price=result.price)


def place_one(venue: Venue, order: Order, r: VenueReport, what: str) -> Fill | None:
    """One of the kill's market orders placed, and said in its venue's report: its fill, or
    None (the error said) when it was not placed or was refused."""
    try:
        (result,) = venue.place_many([order])
    except (VenueDown, OSError, TimeoutError) as e:
        r.errors.append(f"{what} not closed: {e}")
        return None
    if isinstance(result, Rejected):
        r.errors.append(f"{what} not closed: {result}")
        return None
    r.closed.append(f"{order.symbol} {order.side} {result.quantity:g}")
    return result


def lots_of(quantity: float, lot: float) -> float:
    """``quantity`` rounded down to whole lots, in decimal: a float's floor division can land
    a hair above what is held, and a venue refuses a sale of more than it holds."""
    if lot <= 0:
        return quantity
    step = Decimal(repr(lot))
    return float((Decimal(repr(quantity)) // step) * step)


def _audit(b: Pipeline, report: KillReport, order: Order, outcome: str, now_ms: int, **details: object) -> None:
    """One audit event for one action of the kill switch at a venue (an order cancelled, a
    holding no book held sold), in the first book's outbox. Beside a frozen worker caught in
    the middle of a batch its ledger is locked: the action is said, not recorded."""
    try:
        ledger = Ledger(b.ledger_path)
    except sqlite3.OperationalError as e:
        report.notes.append(f"{order.client_order_id} {outcome} but not in the audit trail: {e}")
        return
    try:
        if report.via.startswith(BESIDE_FROZEN):
            # a frozen worker holds its write lock until it wakes: waited for, SQLite's usual
            # seconds would stand between one venue's sale and the next venue's
            ledger.db.execute(f"PRAGMA busy_timeout={FROZEN_LEDGER_WAIT_MS}")
        ledger.begin()
        chain = Chain(f"control:{report.command_id}", order.signal_id, now_ms, venue=order.venue, symbol=order.symbol)
        chain.add(TRADING_STATE, outcome, KILL, client_order_id=order.client_order_id, side=order.side,
                  **({"quantity": order.quantity} | details))
        ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in chain.events]
        ledger.commit()
    except sqlite3.OperationalError as e:
        report.notes.append(f"{order.client_order_id} {outcome} but not in the audit trail: {e}")
    finally:
        ledger.close()
