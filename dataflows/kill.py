"""The kill switch and the trading states: ``apex kill``, ``apex reduce``, ``apex resume``.

A command reaches a book one of two ways:

- **A worker holds the state dir** (``connectors/state_lock.py``): the command is added to
  the control stream (``redis.control_stream``, default ``apex:control``, on the Redis the
  worker reads, as it wrote in ``control.json`` in its state dir). The worker reads it
  through a non-blocking source and carries it out in each book's own step
  (``dataflows/control_step.py``), through the execution core's commands; when it has, the
  book's ledger names the command (``trading_state.command_id``), which is what this
  module waits for (``CONFIRM_S``). A worker that does not confirm in time is taken for
  frozen: this module then acts on the venues itself, without the lock and without
  writing its ledgers (below).
- **No worker**: this module takes the state dir, sets the state in each book's ledger,
  and for a kill cancels and closes at the venues itself, through the same venue clients
  and the same close path the exits use (each book rebuilt from its ledger, its closes
  filled and recorded as a worker would), then ships the audit rows.

Beside a frozen worker the kill cancels every open Apex order by its client order id,
closes each open trade of each book (read from its ledger, read-only) at its venue under
the trade's own close id (its next attempt's: ``operators/closes.py``), a market order, and lists those closes
for the worker before they leave (``dataflows/kill_frozen.py``); then it sells what no
trade explains (``flatten_rest``). The worker that wakes reads the same kill from its
control stream: its reading thread halts the book's egress at once, so what the woken step
decides next opens nothing, and the book's step adopts the listed closes (asks the venue
what became of each, books the fill, closes the trade) instead of sending its own. The
ledger and the venues then agree the book is flat.

Acting twice is safe: an open order is cancelled by its client order id (cancelling one
already cancelled or filled is a no-op at both venues), a trade's close has the client
order id of its trade's next attempt (``close:n`` after n closes cut at their limit), asked of the venue before the kill sends it and never sent twice by
the egress's idempotency rule, and whatever is left at a venue is sold down to what it
holds *now*, so a second pass finds nothing left to sell.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from connectors import state_lock, trading_state_store
from connectors.ledger import Ledger
from connectors.trading_state_store import TradingState
from connectors.venues import Venue, VenueDown
from dataflows.config import Pipeline
from dataflows.kill_report import KillReport, VenueReport
from dataflows.kill_frozen import close_frozen_book
from dataflows.kill_venues import BESIDE_FROZEN, cancel_everywhere, close_book, flatten_rest
from dataflows.slicing_step import halt_children
from operators.audit import Chain
from operators.daily_loss import DayLoss
from operators.trading_state import ACTIVE, COMMANDS, HALTED, REDUCING, TRADING_STATE

CONFIRM_S = 30.0  # how long a running worker is given to confirm a command
FLAT_S = 60.0  # how long a confirmed kill then waits for the worker's closes to fill
CONTROL_KEPT = 10_000  # control stream entries kept (MAXLEN ~)
# a kill shares the account's request rate with whatever still runs (a worker, frozen or not):
# it waits out refusals for the rate far longer than a worker's step would, as giving up
# leaves a position behind
RATE_LIMIT_RETRIES = 30
CONTROL_FILE = "control.json"  # where a running worker says which control stream it reads


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

    from dataflows import cluster

    p = load_pipeline(settings_path, state_dir and cluster.cluster_root(Path(state_dir)))
    books = _books(p, book)
    report = KillReport(command, uuid.uuid4().hex)
    try:
        lock = state_lock.acquire(p.state_dir)
    except state_lock.StateDirInUse as busy:
        return _beside(p, books, report, command, reason, by, say, confirm_s, p.state_dir, busy.holder)
    # a cluster's processes hold their own dirs under this one (dataflows/cluster.py): the
    # books are theirs, reached through the control stream as a one-process worker's are
    running = cluster.running(p.state_dir)
    if running:
        lock.release()
        return _beside(p, books, report, command, reason, by, say, confirm_s, *running[0],
                       taken=cluster.client_ids(p.state_dir))
    try:
        _here(p, books, report, command, reason, by, locked=True)
    finally:
        lock.release()
    return report


def _beside(p: Pipeline, books: list[Pipeline], report: KillReport, command: str, reason: str, by: str,
            say: Callable[[str], None], confirm_s: float, held: Path, holder: dict | None,
            taken: int = 1) -> KillReport:
    """A worker holds ``held`` (the state dir, or a cluster process's): through its control
    stream, or, if it does not confirm in time, on the venues here beside it (``taken``: the IB
    client ids the running processes hold, from the pipeline's on)."""
    report.via = "worker"
    say(f"a worker holds {held} ({state_lock.describe(holder)}): sent through its control stream")
    if _through_worker(p, books, report, command, reason, by, say, confirm_s, held, taken):
        return report
    report.via = BESIDE_FROZEN
    report.notes.append(f"the worker did not confirm within {confirm_s:g} s: acted on the venues here")
    _here(p, books, report, command, reason, by, locked=False, taken=taken)
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

def control_target(state_dir: Path) -> tuple[str, str] | None:
    """(Redis URL, stream) a running worker reads commands from, as it wrote them in its
    state dir; None when it wrote none (a worker on a recording reads no control stream)."""
    path = Path(state_dir) / CONTROL_FILE
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
                    say: Callable[[str], None], confirm_s: float, held: Path, taken: int = 1) -> bool:
    """Sent on the control stream; True once every book's ledger says it was carried out."""
    import redis

    for b in books:
        report.before[b.book] = trading_state_store.read_file(b.ledger_path) or TradingState()
    target = control_target(held)
    if target is None:
        report.notes.append("the running worker reads no control stream (a recording?)")
        return False
    url, stream = target
    single = len(p.each_book()) == 1
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        # the stream is kept short: a command is carried out within seconds or not at all
        client.xadd(stream, {"id": report.command_id, "command": command,
                             "book": "" if single or len(books) > 1 else books[0].book,
                             "reason": reason, "by": by}, maxlen=CONTROL_KEPT, approximate=True)
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
        _flatten_beside(p, books, report, taken)
    return True


def _flatten_beside(p: Pipeline, books: list[Pipeline], report: KillReport, taken: int = 1) -> None:
    from dataflows.apex import make_venues
    from dataflows.gates import close_venues

    shared: dict[str, Venue] = {}
    try:
        make_venues(beside_worker(p, taken), shared=shared)
        _persistent(shared)
        flatten_rest(p, books, shared, report, int(time.time() * 1000))
    except ValueError as e:  # a venue that cannot be set up as configured
        report.notes.append(f"the venues could not be opened here: {e}")
    finally:
        close_venues(shared)


def _persistent(venues: dict[str, Venue]) -> None:
    for venue in venues.values():
        if hasattr(venue, "rate_limit_retries"):
            venue.rate_limit_retries = max(venue.rate_limit_retries, RATE_LIMIT_RETRIES)


def beside_worker(p: Pipeline, taken: int = 1) -> Pipeline:
    """The pipeline as this command may open its venues while workers hold them: IB takes one
    connection per client id, and the workers hold ``taken`` of them from the pipeline's on
    (one worker: one; process I of a cluster: client_id + I), so this one uses the next.
    Positions are the account's, whichever client asks; an order can be cancelled only by the
    client that placed it."""
    from dataclasses import replace as copy

    ibkr = p.venues.ibkr
    if ibkr is None or ibkr.kind != "ibkr":
        return p
    venues = p.venues.model_copy(update={"ibkr": ibkr.model_copy(update={"client_id": ibkr.client_id + taken})})
    return copy(p, venues=venues)


def _until_settled(books: list[Pipeline], timeout_s: float) -> bool:
    """Until no book has an order still live (read beside the worker)."""
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
        time.sleep(0.2)  # another process's ledger: there is nothing to wait on but reading it again


# ----- here, the state dir held (or a frozen worker's) -----

def _here(p: Pipeline, books: list[Pipeline], report: KillReport, command: str, reason: str, by: str,
          locked: bool, taken: int = 1) -> None:
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
            venues = make_venues(p if locked else beside_worker(p, taken), shared=shared)
            _persistent(shared)
            cancel_everywhere(venues, report, books[0], now_ms)
            for b in books:
                try:
                    if locked:
                        close_book(p, b, venues, report, now_ms)
                    else:  # the frozen worker's ledger is read, and its trades closed under their own ids
                        close_frozen_book(b, shared, report, now_ms)
                except (VenueDown, OSError, TimeoutError) as e:  # a venue gone while its book was settled
                    report.notes.append(f"book {b.book or '(one)'}: trades not closed: {e}")
                    report.venue("(venues)").errors.append(str(e))
            flatten_rest(p, books, shared, report, now_ms)
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
    if state == HALTED:  # children of sliced orders not sent yet never will be
        stopped = halt_children(ledger.db, f"control:{report.command_id}", now_ms)
        ledger.rows["audit_events"] += [ev.as_row(now_ms) for ev in stopped]
    trading_state_store.write(ledger.db, TradingState(state, reason, by, report.command_id, now_ms))
    if report.command == "resume":
        _resume_day(ledger)
    ledger.commit()


def _resume_day(ledger: Ledger) -> None:
    """The day's loss budget started again from the NAV the book last showed, as a worker
    does on ``resume`` (``DayLoss.resume``): else the ``daily_loss`` filter would still drop."""
    state = ledger.book()
    if not state or not state.get("day"):
        return
    day = DayLoss(state["day"]["last"])
    day.restore(state["day"])
    day.resume(day.last_nav)
    ledger.record_book({**state, "day": day.state()})


def _ship(p: Pipeline, books: list[Pipeline]) -> None:
    """The audit rows written here, shipped now (a worker would on its next start)."""
    from connectors.outbox import Shipper

    shipper = Shipper({b.book: b.ledger_path for b in p.each_book()}, p.clickhouse_dsn)
    shipper.start()
    shipper.stop()


__all__ = ["kill", "reduce", "resume", "KillReport", "VenueReport", "ACTIVE", "REDUCING", "HALTED"]
