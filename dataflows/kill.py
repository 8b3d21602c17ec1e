"""The kill switch and the trading states: ``apex kill``, ``apex reduce``, ``apex resume``.

A command reaches a book one of two ways:

- **A worker holds the state dir** (``connectors/state_lock.py``): the command is added to
  the control stream (``redis.control_stream``, default ``apex:control``, on the Redis the
  worker reads, as it wrote in ``control.json`` in its state dir). The worker reads it
  through a non-blocking source and carries it out in each book's own step
  (``dataflows/control_step.py``), through the execution core's commands; when it has, the
  book's ledger names the command (``trading_state.command_id``), which is what this
  module waits for (``CONFIRM_S``). A worker that does not confirm in time is taken for
  frozen: this module then acts on the venues itself, without the lock.
- **No worker**: this module takes the state dir, sets the state in each book's ledger,
  and for a kill cancels and closes at the venues itself, through the same venue clients
  and the same close path the exits use (each book rebuilt from its ledger, its closes
  filled and recorded as a worker would), then ships the audit rows.

Acting twice is safe, which is what lets a kill act beside a frozen worker: an open order
is cancelled by its client order id (cancelling one already cancelled or filled is a no-op
at both venues), a trade's close has the client order id of its trade
(``client_order_id(signal, "close")``), so the idempotency rule of the egress never sends
it twice, and whatever is left at a venue is sold down to what it holds *now*, so a
second pass finds nothing left to sell.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from decimal import Decimal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from connectors import state_lock, trading_state_store
from connectors.ledger import Ledger
from connectors.trading_state_store import TradingState
from connectors.venues import Rejected, Venue, VenueDown
from dataflows.config import Pipeline
from operators.audit import Chain, Outcome
from operators.orders import Order, client_order_id
from operators.trading_state import ACTIVE, COMMANDS, HALTED, KILL, REDUCING, TRADING_STATE

CONFIRM_S = 30.0  # how long a running worker is given to confirm a command
FLAT_S = 60.0  # how long a confirmed kill then waits for the worker's closes to fill
CONTROL_FILE = "control.json"  # where a running worker says which control stream it reads


@dataclass
class VenueReport:
    """What a kill did at one venue."""

    cancelled: list[str] = field(default_factory=list)  # client order ids
    closed: list[str] = field(default_factory=list)  # "SYMBOL side qty", one a close
    dust: list[str] = field(default_factory=list)  # "SYMBOL qty": below the venue's minimum, left
    errors: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        if not (self.cancelled or self.closed or self.errors):
            tail = f" (dust left: {', '.join(self.dust)})" if self.dust else ""
            return f"{name}: nothing to cancel or close{tail}"
        parts = []
        if self.cancelled:
            parts.append(f"cancelled {len(self.cancelled)} order(s)")
        if self.closed:
            parts.append(f"closed {len(self.closed)} position(s) ({summed(self.closed)})")
        if self.dust:
            parts.append(f"dust left: {summed(self.dust)}")
        parts += [f"error: {e}" for e in self.errors]
        return f"{name}: " + ", ".join(parts)

    def as_dict(self) -> dict:
        return {"cancelled": self.cancelled, "closed": self.closed, "dust": self.dust, "errors": self.errors}

    def add(self, other: Mapping) -> None:
        for key in ("cancelled", "closed", "dust", "errors"):
            getattr(self, key).extend(x for x in other.get(key, ()) if x not in getattr(self, key))


def summed(items: list[str]) -> str:
    """"SYMBOL [side] qty" items added up by symbol and side, for one line a venue."""
    total: dict[tuple[str, ...], float] = {}
    for item in items:
        *key, qty = item.split()
        total[tuple(key)] = total.get(tuple(key), 0.0) + float(qty)
    return ", ".join(f"{' '.join(k)} {q:g}" for k, q in sorted(total.items()))


@dataclass
class KillReport:
    """What a command found and did: by book, the state before and after; by venue, what
    was cancelled and closed; ``via``: ``worker``, ``here``, or ``here: the worker did not
    confirm`` (a frozen worker)."""

    command: str
    command_id: str
    via: str = "here"
    before: dict[str, TradingState] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    venues: dict[str, VenueReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def venue(self, name: str) -> VenueReport:
        return self.venues.setdefault(name, VenueReport())

    @property
    def ok(self) -> bool:
        return not any(v.errors for v in self.venues.values())

    def lines(self) -> list[str]:
        out = list(self.notes)
        for book, before in self.before.items():
            name = f"book {book}" if book else "book"
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before.ts_ms / 1000)) if before.ts_ms else ""
            found = before.state + (f" since {since}" if since else "") + (f" by {before.by}" if before.by else "") \
                + (f" ({before.reason})" if before.reason else "")
            out.append(f"{name}: was {found}; now {self.after.get(book, before.state)}")
        out += [v.line(name) for name, v in sorted(self.venues.items())]
        return out


def kill(settings_path: str | Path, state_dir: str | Path | None, *, book: str | None = None, reason: str = "",
         by: str = "cli", say: Callable[[str], None] = lambda line: None,
         confirm_s: float = CONFIRM_S) -> KillReport:
    """HALTED, every open Apex order cancelled and every position closed, on every venue."""
    return _command("kill", settings_path, state_dir, book, reason, by, say, confirm_s)


def reduce(settings_path: str | Path, state_dir: str | Path | None, *, book: str | None = None, reason: str = "",
           by: str = "cli", say: Callable[[str], None] = lambda line: None,
           confirm_s: float = CONFIRM_S) -> KillReport:
    """REDUCING: from now on only orders that bring a position toward zero."""
    return _command("reduce", settings_path, state_dir, book, reason, by, say, confirm_s)


def resume(settings_path: str | Path, state_dir: str | Path | None, *, book: str | None = None, reason: str = "",
           by: str = "cli", say: Callable[[str], None] = lambda line: None,
           confirm_s: float = CONFIRM_S) -> KillReport:
    """ACTIVE again; the report says what each book was found in."""
    return _command("resume", settings_path, state_dir, book, reason, by, say, confirm_s)


def _command(command: str, settings_path: str | Path, state_dir: str | Path | None, book: str | None,
             reason: str, by: str, say: Callable[[str], None], confirm_s: float) -> KillReport:
    from dataflows.gates import load_pipeline

    p = load_pipeline(settings_path, state_dir)
    books = _books(p, book)
    report = KillReport(command, uuid.uuid4().hex)
    try:
        lock = state_lock.acquire(p.state_dir)
    except state_lock.StateDirInUse as busy:
        report.via = "worker"
        say(f"a worker holds {p.state_dir} ({state_lock.describe(busy.holder)}): sent through its control stream")
        if _through_worker(p, books, report, command, reason, by, say, confirm_s):
            return report
        report.via = "here: the worker did not confirm"
        report.notes.append(f"the worker did not confirm within {confirm_s:g} s: acted on the venues here")
        _here(p, books, report, command, reason, by, locked=False)
        return report
    try:
        _here(p, books, report, command, reason, by, locked=True)
    finally:
        lock.release()
    return report


def _books(p: Pipeline, book: str | None) -> list[Pipeline]:
    every = p.each_book()
    if book is None:
        return every
    chosen = [b for b in every if b.book == book]
    if not chosen:
        names = ", ".join(b.book for b in every if b.book) or "(one unnamed book)"
        raise ValueError(f"no book {book!r} in {p.path}: its books are {names}")
    return chosen


# ----- through a running worker -----

def control_target(p: Pipeline) -> tuple[str, str] | None:
    """(Redis URL, stream) a running worker reads commands from, as it wrote them in its
    state dir; None when it wrote none (a worker on a recording reads no control stream)."""
    path = p.state_dir / CONTROL_FILE
    try:
        doc = json.loads(path.read_text())
        return doc["redis"], doc["stream"]
    except (OSError, ValueError, KeyError):
        return None


def write_control_target(state_dir: Path, url: str, stream: str) -> None:
    """For the worker: where ``apex kill`` finds it (written once its state dir is held)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    (Path(state_dir) / CONTROL_FILE).write_text(json.dumps({"redis": url, "stream": stream}))


def _through_worker(p: Pipeline, books: list[Pipeline], report: KillReport, command: str, reason: str, by: str,
                    say: Callable[[str], None], confirm_s: float) -> bool:
    """Sent on the control stream; True once every book's ledger says it was carried out."""
    import redis

    for b in books:
        report.before[b.book] = trading_state_store.read_file(b.ledger_path) or TradingState()
    target = control_target(p)
    if target is None:
        report.notes.append("the running worker reads no control stream (a recording?)")
        return False
    url, stream = target
    single = len(p.each_book()) == 1
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.xadd(stream, {"id": report.command_id, "command": command,
                             "book": "" if single or len(books) > 1 else books[0].book,
                             "reason": reason, "by": by})
    except redis.RedisError as e:
        report.notes.append(f"the control stream at {stream} could not be written: {e}")
        return False
    deadline = time.monotonic() + confirm_s
    pending = {b.book: b for b in books}
    while pending and time.monotonic() < deadline:
        for name, b in list(pending.items()):
            s = trading_state_store.read_file(b.ledger_path)
            if s is not None and s.command_id == report.command_id:
                del pending[name]
                report.after[name] = s.state
                for venue, done in s.summary.items():
                    report.venue(venue).add(done)
        if pending:
            time.sleep(0.1)  # polling another process's ledger: there is nothing to wait on
    if pending:
        return False
    if command == "kill":
        say("the worker has it: waiting for its cancels and closes to reach their end")
        if not _until_settled(books, FLAT_S):
            report.notes.append(f"the worker's orders had not all reached their end within {FLAT_S:.0f} s: "
                                "see `apex audit` and `apex reconcile`")
        # what the books' closes could not reach (a spot sale short of its fee, a holding no
        # book explains) is sold here, as a kill with no worker would: it sells only what the
        # venue holds now, so doing it beside the worker sends nothing twice
        _flatten_beside(p, books, report)
    return True


def _flatten_beside(p: Pipeline, books: list[Pipeline], report: KillReport) -> None:
    from dataflows.apex import make_venues
    from dataflows.gates import close_venues

    shared: dict[str, Venue] = {}
    try:
        make_venues(beside_worker(p), shared=shared)
        _flatten_rest(p, books, shared, report, int(time.time() * 1000))
    except ValueError as e:  # a venue that cannot be set up as configured
        report.notes.append(f"the venues could not be opened here: {e}")
    finally:
        close_venues(shared)


def beside_worker(p: Pipeline) -> Pipeline:
    """The pipeline as this command may open its venues while a worker holds them: IB takes
    one connection per client id, so this one uses the next (positions are the account's,
    whichever client asks; an order can be cancelled only by the client that placed it)."""
    from dataclasses import replace as copy

    ibkr = p.venues.ibkr
    if ibkr is None or ibkr.kind != "ibkr":
        return p
    venues = p.venues.model_copy(update={"ibkr": ibkr.model_copy(update={"client_id": ibkr.client_id + 1})})
    return copy(p, venues=venues)


def _until_settled(books: list[Pipeline], timeout_s: float) -> bool:
    """Until no book has an order still live (read beside the worker)."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while True:
        busy = 0
        for b in books:
            if not b.ledger_path.exists():
                continue
            db = sqlite3.connect(f"file:{b.ledger_path}?mode=ro", uri=True, timeout=5)
            try:
                busy += db.execute("SELECT COUNT(*) FROM executions WHERE status IN "
                                   "('intent', 'submitted', 'accepted', 'partially_filled', 'unknown')").fetchone()[0]
            finally:
                db.close()
        if not busy:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


# ----- here, the state dir held (or a frozen worker's) -----

class Waited:
    """A venue called in place, its fates waited for: the book's usual paths, outside the
    dataflow, with no sender to hand commands to."""

    asynchronous = False

    def __init__(self, venue: Venue):
        self._venue = venue

    def __getattr__(self, name: str):
        return getattr(self._venue, name)


def _here(p: Pipeline, books: list[Pipeline], report: KillReport, command: str, reason: str, by: str,
          locked: bool) -> None:
    from dataflows.apex import make_venues
    from dataflows.gates import close_venues

    state = COMMANDS[command]
    now_ms = int(time.time() * 1000)
    if locked:
        ledgers = {b.book: Ledger(b.ledger_path) for b in books}
    else:  # a frozen worker's ledgers are its own: read beside it, written by it once it wakes
        ledgers = {}
        for b in books:
            report.before.setdefault(b.book, trading_state_store.read_file(b.ledger_path) or TradingState())
            report.after[b.book] = state
        report.notes.append("the books' state is set by the worker when it reads the control stream again")
        if command != "kill":
            return
    try:
        for b, ledger in ((b, ledgers[b.book]) for b in books if b.book in ledgers):
            trading_state_store.ensure(ledger.db)
            report.before.setdefault(b.book, trading_state_store.read(ledger.db))
            # halted first: nothing new leaves while the rest is done
            _set_state(ledger, report, b.book, state, reason, by, now_ms)
        if command != "kill":
            return
        for ledger in ledgers.values():
            ledger.close()
        ledgers = {}
        shared: dict[str, Venue] = {}
        try:
            venues = make_venues(p if locked else beside_worker(p), shared=shared)
            _cancel_everywhere(venues, report, books[0], now_ms)
            for b in books:
                _close_book(p, b, venues, report, now_ms, locked)
            _flatten_rest(p, books, shared, report, now_ms)
        finally:
            close_venues(shared)
        if not locked:
            return
        summary = {name: v.as_dict() for name, v in report.venues.items()}
        for b in books:  # the command's own record, for a later `apex resume` to read
            ledger = Ledger(b.ledger_path)
            try:
                s = trading_state_store.read(ledger.db)
                s.command_id, s.summary = report.command_id, summary
                trading_state_store.write(ledger.db, s)
            finally:
                ledger.close()
        _ship(p, books)
    finally:
        for ledger in ledgers.values():
            ledger.close()


def _set_state(ledger: Ledger, report: KillReport, book: str, state: str, reason: str, by: str,
               now_ms: int) -> None:
    before = report.before[book]
    report.after[book] = state
    ledger.begin()
    if before.state != state:  # said once: a command that changes nothing records nothing
        chain = Chain(f"control:{report.command_id}", "", now_ms)
        chain.add(TRADING_STATE, state, reason, by=by, was=before.state, command=report.command)
        ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in chain.events]
    trading_state_store.write(ledger.db, TradingState(state, reason, by, report.command_id, now_ms))
    ledger.commit()


def _distinct(venues: Mapping[str, Venue]) -> list[tuple[Venue, list[str]]]:
    out: dict[int, tuple[Venue, list[str]]] = {}
    for market, venue in venues.items():
        out.setdefault(id(venue), (venue, []))[1].append(market)
    return list(out.values())


def _name(venue: Venue) -> str:
    return str(getattr(venue, "name", "") or type(venue).__name__)


def _cancel_everywhere(venues: Mapping[str, Venue], report: KillReport, first: Pipeline, now_ms: int) -> None:
    """Every open Apex order (its client order id is Apex's: ``client_order_id``) cancelled,
    whoever placed it: the books' opens and closes, and one a crash left unrecorded."""
    for venue, _ in _distinct(venues):
        r = report.venue(_name(venue))
        try:
            for order in venue.open_orders():
                if not order.client_order_id.startswith("ax"):
                    continue  # not Apex's: left alone
                venue.cancel(order)
                r.cancelled.append(order.client_order_id)
                _audit(first, report, order, "cancelled", now_ms)
        except (VenueDown, OSError, TimeoutError) as e:
            r.errors.append(f"orders not cancelled: {e}")


def _close_book(p: Pipeline, b: Pipeline, venues: Mapping[str, Venue], report: KillReport, now_ms: int,
                locked: bool) -> None:
    """Every open trade of the book closed through the exits' own close path, waited for,
    and recorded in its ledger (its fills, its trades, its audit rows)."""
    if not locked:
        return  # the frozen worker owns the ledger: what is left at the venues is sold below
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
    before = step.ledger.status(client_order_id(terms.signal_id, "close"))
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
            out.update(holdings()[0])
        except (VenueDown, OSError, TimeoutError) as e:
            report.venue(_name(venue)).errors.append(f"holdings not read: {e}")
    return out


def _venue_name(venues: Mapping[str, Venue], market: str) -> str:
    venue = venues.get(market)
    return _name(venue) if venue is not None else market


def _venue_of(out: Outcome) -> str:
    return out.events[0].venue if out.events else ""


def _flatten_rest(p: Pipeline, books: list[Pipeline], shared: Mapping[str, Venue], report: KillReport,
                  now_ms: int) -> None:
    """What a real venue still holds once the books' trades are closed (a trade whose close
    a frozen worker owns, a holding no book explains) sold or bought back at market, down to
    the venue's minimum size; the instruments ``venues.<name>.ignore`` lists are left alone."""
    from dataflows.startup import ignored

    left_alone = ignored(p)
    for venue, markets in _distinct(shared):
        r = report.venue(_name(venue))
        try:
            holdings = getattr(venue, "holdings", None)
            held = holdings()[0] if holdings is not None else venue.positions()
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
            try:
                (result,) = venue.place_many([order])
            except (VenueDown, OSError, TimeoutError) as e:
                r.errors.append(f"{symbol} not closed: {e}")
                continue
            if isinstance(result, Rejected):
                r.errors.append(f"{symbol} not closed: {result}")
            else:
                r.closed.append(f"{symbol} {order.side} {result.quantity:g}")
                _audit(books[0], report, order, "flattened", now_ms, quantity=result.quantity, price=result.price)


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


def _ship(p: Pipeline, books: list[Pipeline]) -> None:
    """The audit rows written here, shipped now (a worker would on its next start)."""
    from connectors.outbox import Shipper

    shipper = Shipper({b.book: b.ledger_path for b in p.each_book()}, p.clickhouse_dsn)
    shipper.start()
    shipper.stop()


__all__ = ["kill", "reduce", "resume", "KillReport", "VenueReport", "ACTIVE", "REDUCING", "HALTED"]
