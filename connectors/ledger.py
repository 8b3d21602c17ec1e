"""The local SQLite ledger: what was decided and what was sent.

It is the idempotency guard. Every decided signal_id is written here before
its stream entry can be acknowledged, and every order's intent row is
committed *before* the order leaves, so a crash between sending and recording
leaves a row saying "this may have been sent": the next start asks the venue
by client order id instead of sending again.

WAL with synchronous=NORMAL: a commit survives a killed process (the data is
in the OS page cache); only a power cut can lose the last commits, and those
entries were then not acknowledged either, so Redis redelivers them.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from connectors import outbox
from operators.audit import dumps
from operators.exits import ClosedTrade, TradeTerms
from operators.fill import Fill
from operators.order_fsm import CANCELLED, FILLED, LIVE, REJECTED, DENIED, TRANSITIONS, Change, OrderState
from operators.orders import Order

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    signal_id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT,
    ts_ms     INTEGER NOT NULL  -- a decision's audit rows are in the outbox, written in the same commit
);
CREATE TABLE IF NOT EXISTS executions (
    client_order_id TEXT NOT NULL,
    signal_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    venue      TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    side       TEXT NOT NULL,
    quantity   REAL NOT NULL,
    status     TEXT NOT NULL,
    intent_ms  INTEGER NOT NULL,
    order_id   TEXT,
    price      REAL,
    fee_usd    REAL,
    filled_ms  INTEGER,
    seq        INTEGER,
    reason     TEXT,
    trade      TEXT,  -- an open's intended trade (terms and exits), so a start can book it without the signal
    limit_px   REAL,
    attempt    INTEGER NOT NULL DEFAULT 0  -- a close tried again after one cut at its limit: 1, 2, ...
);
CREATE TABLE IF NOT EXISTS trades (
    signal_id  TEXT PRIMARY KEY,  -- a rowid table: its rows are too large for index pages to hold well
    terms      TEXT NOT NULL,
    status     TEXT NOT NULL,
    won        INTEGER,
    closed_seq INTEGER
);
CREATE INDEX IF NOT EXISTS trades_status ON trades(status, closed_seq);
CREATE TABLE IF NOT EXISTS fills (
    client_order_id TEXT NOT NULL,
    fill_id   TEXT NOT NULL,  -- the venue's execution id: a fill told twice is booked once
    quantity  REAL NOT NULL,
    price     REAL NOT NULL,
    fee_usd   REAL NOT NULL,
    ts_ms     INTEGER NOT NULL,
    PRIMARY KEY (client_order_id, fill_id)
);  -- a remote venue's fills, one row each; the order's row holds what they add up to
CREATE TABLE IF NOT EXISTS book (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL  -- what the book learnt from the market (Portfolio.market_state), as of the last batch
);
"""  # the outbox table (connectors/outbox.py) lives in the same file, written in the same transactions
# Every key here is random (signal ids, hashes), so each index an order touches is one more
# random page written to the WAL at each commit: rowid tables keep rows in arrival order,
# with one index a table; an order is found by (signal_id, kind, attempt), which determines its
# client order id (``_migrate`` makes that index).


log = logging.getLogger("apex.ledger")

BUSY_TIMEOUT_MS = 5000
EXECUTION = "status, order_id, price, fee_usd, filled_ms, quantity"  # what an idempotency check reads of an order
ORDER = ("client_order_id, signal_id, kind, venue, symbol, side, quantity, price, intent_ms, limit_px,"
         " attempt")  # an ``Order``'s
PREFETCH = 500  # ids a lookup query: under SQLite's smallest default limit of bound variables (999)
RESTART_EVERY = 10_000  # commits between WAL restarts (``restart_wal``) at the latest
WAL_LIMIT_BYTES = 64 << 20  # ...or sooner, once the ``WalKeeper`` sees the WAL this large


@dataclass(frozen=True, slots=True)
class Decided:
    stream_id: str
    outcome: str
    reason: str


class WalKeeper:
    """Copies the ledger's WAL back into the database (a PASSIVE checkpoint, which never
    waits for the writer) a few times a second, on its own connection and thread: SQLite
    lets go of the GIL while it copies and fsyncs, so the worker's thread goes on deciding.
    What it leaves for ``Ledger.restart_wal`` is a fraction of a second of WAL; what it
    tells it is how long the WAL has grown (``frames``), for it to restart it in time."""

    def __init__(self, path: Path, interval_s: float = 0.25):
        self._stop = threading.Event()
        self.frames = 0  # in the WAL at the last pass (a plain int: read by the worker's thread)
        self._thread = threading.Thread(target=self._run, args=(path, interval_s), name="apex-wal", daemon=True)
        self._thread.start()

    def _run(self, path: Path, interval_s: float) -> None:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(interval_s):
                try:
                    self.frames = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                except sqlite3.Error as err:  # a checkpoint is an optimisation: note it, go on
                    log.warning("ledger checkpoint failed: %s", err)
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Ledger:
    def __init__(self, path: str | Path, keep_wal: bool = False, wal_keeper: WalKeeper | None = None):
        """``keep_wal``: run a ``WalKeeper`` beside this connection (the worker's ledger);
        ``wal_keeper``: one the caller made instead (its own schedule), stopped with the ledger."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # New files only (a page size is fixed at creation). SQLite's default 4 KiB: a WAL
        # frame costs two pwrite calls whatever its size, and a batch's small intent,
        # execution and trade rows spread over smaller pages wrote several times the frames
        # for hardly fewer bytes.
        self.db.execute(f"PRAGMA page_size={outbox.PAGE_SIZE}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # No checkpoint on the hot path: an automatic one fsyncs the database inside
        # a COMMIT (tens of ms here). The worker's ``WalKeeper`` thread checkpoints instead.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.db.executescript(SCHEMA)
        self.db.executescript(outbox.SCHEMA)
        _migrate(self.db)
        self._pruned = 0
        self._commits = 0
        self._page = self.db.execute("PRAGMA page_size").fetchone()[0]  # as the file was created
        self._keeper = wal_keeper or (WalKeeper(self.path) if keep_wal else None)
        if self._keeper is not None:  # a ledger dropped unclosed (a finished dataflow) stops its thread
            weakref.finalize(self, self._keeper._stop.set)
        # Decisions and audit rows of the open transaction, written in one go at its end
        # (executemany, one outbox blob): per-row statements were a third of a replay.
        self._decisions: dict[str, tuple] = {}
        self.rows: dict[str, list] = _no_rows()  # by ClickHouse table (``Outcome.queue`` appends to them)
        # the audit rows of orders about to leave: written with their intents at the checkpoint
        self.sent_rows: dict[str, list] = _no_rows()
        # what ``prefetch`` found for the batch's signal_ids (None: not decided); dropped
        # for a signal once its decision is written, and entirely at the batch's commit
        self._known: dict[str, Decided | None] = {}
        self._known_opens: dict[str, tuple | None] = {}  # the same for their opening orders
        # order of fills and closes: counters, not MAX()+1, which scanned the table on every fill
        self._seq = {
            "fill": self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM executions").fetchone()[0],
            "close": self.db.execute("SELECT COALESCE(MAX(closed_seq), 0) FROM trades").fetchone()[0],
        }

    def _next(self, kind: str) -> int:
        self._seq[kind] += 1
        return self._seq[kind]

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        self.db.close()

    def begin(self) -> None:
        """Open one transaction for a whole Bytewax batch: one commit per batch, not per signal."""
        if not self.db.in_transaction:
            # IMMEDIATE: take the write lock now; a deferred BEGIN that reads, then writes,
            # fails at once (busy_timeout or not) when the shipper wrote in between.
            self.db.execute("BEGIN IMMEDIATE")

    def _flush(self, audit: bool = True) -> None:
        """``audit`` False (a checkpoint): only the orders in flight, their "sent" decisions
        with the audit rows of their chains so far (``sent_rows``); every other decision stays
        buffered with its audit rows, so a decision is never durable without them."""
        if audit:
            todo, self._decisions = self._decisions, {}
        else:
            todo = {k: v for k, v in self._decisions.items() if v[2] == "sent"}
            for k in todo:
                del self._decisions[k]
        if todo:
            for sid in todo:
                self._known.pop(sid, None)
            self.db.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?) ON CONFLICT(signal_id) DO UPDATE SET"
                " outcome=excluded.outcome, reason=excluded.reason"
                " WHERE decisions.stream_id = excluded.stream_id",
                todo.values(),
            )
        self.sent_rows = self._enqueue(self.sent_rows)
        if audit:
            self.rows = self._enqueue(self.rows)

    def _enqueue(self, buffer: dict[str, list]) -> dict[str, list]:
        """Write a buffer of audit rows to the outbox (see connectors/outbox.py), durable with
        this transaction; returns it emptied."""
        rows = {t: items for t, items in buffer.items() if items}
        if not rows:
            return buffer
        outbox.enqueue(self.db, rows)
        return _no_rows()

    def commit(self, audit: bool = True) -> None:
        if not self.db.in_transaction:
            self.begin()
        self._flush(audit)
        self.db.execute("COMMIT")
        self._commits += 1
        if audit:
            self._known, self._known_opens = {}, {}
            if self._commits >= RESTART_EVERY or self._wal_full():
                self.restart_wal()

    def _wal_full(self) -> bool:
        """Restarts counted in commits alone let the WAL grow to hundreds of MB in a long soak,
        and how many bytes a commit writes depends on the page size: counted in bytes, the
        bound holds whatever the page size, the rate or the batches."""
        return self._keeper is not None and self._keeper.frames * self._page >= WAL_LIMIT_BYTES

    def restart_wal(self) -> bool:
        """Start the WAL over, between batches. Without it the WAL only grows: a checkpoint
        copies it back without waiting for us and so never completes while we commit every
        few ms (gigabytes within minutes at a steady rate, RSS growing with its index). Here,
        the only writer, between transactions, a RESTART completes; what it copies is only what
        arrived since the ``WalKeeper``'s last pass, since copying more here would hold a batch
        up for longer the larger the ledger grows. A reader in the way (the shipper) makes it
        return at once rather than sleep in the busy handler: the next batch tries again.
        Not TRUNCATE: shrinking the file costs more than overwriting it from its start.
        Returns whether it started the WAL over."""
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            busy = self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
        finally:
            self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not busy:
            self._commits = 0
            if self._keeper is not None:
                self._keeper.frames = 0  # until its next pass: the WAL starts over
        return not busy

    def checkpoint(self) -> None:
        """Make the orders' intents durable now, with their "sent" decisions and the audit rows
        of how they were decided, and go on in a new transaction. Called by ``Executor.send``
        alone, right before orders leave (all of a batch's at once): an intent must outlive a
        crash, and a restart that finds one adds only what happened after
        (``PortfolioStep._resume``, ``dataflows/recovery.py``). Every other
        audit row waits for the batch's last commit (one outbox row a batch, not one a fill):
        nothing is acknowledged before that commit, so a crash before it loses none."""
        self.commit(audit=False)
        self.db.execute("BEGIN IMMEDIATE")

    def prefetch(self, signal_ids: Iterable[str]) -> None:
        """Look up a batch's signal_ids, their decisions and opening orders, in one query
        each per ``PREFETCH`` ids, inside its transaction: ``decided`` and ``execution``
        then answer for them from memory: a SELECT per signal and per order was a visible
        share of the worker's time, and almost every answer is "none yet"."""
        ids = list({sid: None for sid in signal_ids if sid not in self._decisions})
        known: dict[str, Decided | None] = dict.fromkeys(ids)
        opens: dict[str, tuple | None] = dict.fromkeys(ids)
        for i in range(0, len(ids), PREFETCH):
            part = ids[i:i + PREFETCH]
            marks = ",".join("?" * len(part))
            for row in self.db.execute("SELECT signal_id, stream_id, outcome, reason FROM decisions"
                                       f" WHERE signal_id IN ({marks})", part):
                known[row[0]] = _decided(row[1:])
            for row in self.db.execute(f"SELECT signal_id, {EXECUTION} FROM executions"
                                       f" WHERE kind = 'open' AND signal_id IN ({marks})", part):
                opens[row[0]] = row[1:]
        self._known, self._known_opens = known, opens

    def decided(self, signal_id: str) -> Decided | None:
        pending = self._decisions.get(signal_id)
        if pending is not None:
            return _decided(pending[1:4])  # the row less its signal_id and ts_ms
        if signal_id in self._known:
            return self._known[signal_id]
        row = self.db.execute(
            "SELECT stream_id, outcome, reason FROM decisions WHERE signal_id = ?", (signal_id,)
        ).fetchone()
        return _decided(row) if row else None

    def record_decision(self, signal_id: str, stream_id: str, outcome: str, reason: str, ts_ms: int) -> None:
        """First decision wins; the same stream entry may move its own row on
        (``sent`` to ``filled``), a different entry never overwrites it. Its audit rows go
        to the outbox in the same commit (a "sent" one's with its intent)."""
        pending = self._decisions.get(signal_id)
        if pending is not None and pending[1] != stream_id:
            return
        # kept as the row it will be written as: a batch's rows go to executemany as they are
        self._decisions[signal_id] = (signal_id, stream_id, outcome, reason, ts_ms)

    def execution(self, order: Order) -> tuple | None:
        """(status, order_id, price, fee_usd, filled_ms, quantity) of the order for this signal,
        kind and attempt; the quantity is what filled once it has (a partial fill, or less the
        venue's fee)."""
        if order.kind == "open" and order.signal_id in self._known_opens:
            return self._known_opens[order.signal_id]
        return self.db.execute(f"SELECT {EXECUTION} FROM executions WHERE signal_id = ? AND kind = ? AND attempt = ?",
                               (order.signal_id, order.kind, order.attempt)).fetchone()

    def intent(self, signal_id: str, kind: str = "open") -> Order | None:
        """The order recorded for this signal and kind, whatever became of it: what a
        redelivered "sent" decision resumes."""
        row = self.db.execute(f"SELECT {ORDER} FROM executions WHERE signal_id = ? AND kind = ? AND attempt = 0",
                              (signal_id, kind)).fetchone()
        return _order(row) if row else None

    def record_intent(self, order: Order, reason: str = "", trade: tuple[TradeTerms, str] | None = None) -> None:
        """``price`` holds the intended price until the fill overwrites it, so a
        restart can still place an order the venue never received; ``trade`` (an
        open's expected terms and exits) lets a start book a fill it finds at the venue.
        The trade is kept as a list of values, without its keys, to keep the row small: each
        is written at the intent and again at the fill, which clears it."""
        self._known_opens.pop(order.signal_id, None)
        self.db.execute(
            "INSERT OR IGNORE INTO executions (client_order_id, signal_id, kind, venue, symbol, side,"
            " quantity, status, intent_ms, price, reason, trade, limit_px, attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'intent', ?, ?, ?, ?, ?, ?)",
            (order.client_order_id, order.signal_id, order.kind, order.venue, order.symbol, order.side,
             order.quantity, order.ts_ms, order.price, reason,
             orjson.dumps((_TERMS(trade[0]), trade[1])) if trade is not None else None, order.limit,
             order.attempt),
        )

    def record_fill(self, fill: Fill) -> None:
        self._known_opens.pop(fill.signal_id, None)
        self.db.execute(
            "UPDATE executions SET status='filled', order_id=?, quantity=?, price=?, fee_usd=?, filled_ms=?,"
            f" seq=?, trade=NULL WHERE signal_id=? AND client_order_id=? AND {_FROM[FILLED]}",
            (fill.order_id, fill.quantity, fill.price, fill.fee_usd, fill.ts_ms, self._next("fill"), fill.signal_id,
             fill.client_order_id),
        )  # the trades row holds the trade now

    def record_accepted(self, order: Order) -> None:
        """The venue took the order and is working it: still only the venue knows its fate,
        so a restart asks it (``next_step``), but the entry no longer has to wait for it."""
        self.db.execute("UPDATE executions SET status='accepted' WHERE signal_id=? AND client_order_id=?"
                        f" AND {_FROM['accepted']}", (order.signal_id, order.client_order_id))

    def record_rejection(self, order: Order, reason: str) -> None:
        self._known_opens.pop(order.signal_id, None)
        self.db.execute(
            f"UPDATE executions SET status='rejected', order_id=? WHERE signal_id=? AND kind=? AND attempt=?"
            f" AND {_FROM[REJECTED]}", (reason, order.signal_id, order.kind, order.attempt),
        )

    def record_change(self, state: OrderState, change: Change, fill_id: str, reason: str, ts_ms: int) -> bool:
        """A venue's event applied to an order (``operators/order_fsm.apply``), made durable:
        its new fill, one row (a fill already recorded under its id is not recorded again),
        and its status, a guarded transition that never moves an order from a status the
        state machine does not allow. Returns whether the status moved. ``ts_ms``: the fill's
        and the end's time on the run's clock (the order's: the venue's own clock is another)."""
        if change.fill is not None:
            f = change.fill
            self.db.execute("INSERT OR IGNORE INTO fills VALUES (?, ?, ?, ?, ?, ?)",
                            (f.client_order_id, fill_id or f"total:{state.filled!r}", f.quantity, f.price,
                             f.fee_usd, ts_ms))
        if change.dst == change.src:
            return False
        o, dst = state.order, change.dst
        if dst in (FILLED, CANCELLED):
            # final: the row says what filled in all (a cancel with nothing filled: 0)
            cur = self.db.execute(
                "UPDATE executions SET status=?, order_id=?, quantity=?, price=?, fee_usd=?, filled_ms=?, seq=?,"
                f" trade=NULL, reason=CASE kind WHEN 'close' THEN reason ELSE COALESCE(NULLIF(?, ''), reason) END"
                f" WHERE client_order_id=? AND {_FROM[dst]}",
                (dst, state.order_id, state.filled, state.avg_price if state.filled else o.price, state.fee_usd,
                 ts_ms, self._next("fill"), reason, o.client_order_id))
        elif dst in (REJECTED, DENIED):
            cur = self.db.execute(f"UPDATE executions SET status=?, order_id=? WHERE client_order_id=?"
                                  f" AND {_FROM[dst]}", (dst, reason or dst, o.client_order_id))
        else:
            cur = self.db.execute(f"UPDATE executions SET status=? WHERE client_order_id=? AND {_FROM[dst]}",
                                  (dst, o.client_order_id))
        self._known_opens.pop(o.signal_id, None)
        return cur.rowcount > 0

    def order_fills(self, client_order_id: str) -> list[tuple[str, float, float, float, int]]:
        """(fill_id, quantity, price, fee_usd, ts_ms) of an order's fills recorded one by one."""
        return self.db.execute("SELECT fill_id, quantity, price, fee_usd, ts_ms FROM fills WHERE client_order_id=?"
                               " ORDER BY rowid", (client_order_id,)).fetchall()

    def status(self, client_order_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM executions WHERE client_order_id=?", (client_order_id,)).fetchone()
        return row[0] if row else None

    def fills(self) -> Iterator[Fill]:
        """Every final order's fill in the order it happened, to rebuild the book on start
        (an order cancelled after a partial fill holds what filled)."""
        for row in self.db.execute(
            "SELECT signal_id, client_order_id, order_id, venue, symbol, side, quantity, price,"
            " fee_usd, filled_ms FROM executions WHERE status='filled' OR (status='cancelled' AND quantity > 0)"
            " ORDER BY seq"
        ):
            yield Fill(*row)

    def record_adoption(self, fill: Fill, rows: dict[str, list]) -> None:
        """A holding ``apex reconcile --adopt`` took into the book: a filled execution of kind
        ``adopt`` (``fills`` rebuilds the book from it like any other, at the next start) and
        its audit rows in the outbox, in one commit. The caller's ``fill.signal_id`` is the
        adoption's own id, never a signal's."""
        self.begin()
        self.db.execute(
            "INSERT INTO executions (client_order_id, signal_id, kind, venue, symbol, side, quantity, status,"
            " intent_ms, order_id, price, fee_usd, filled_ms, seq, reason)"
            " VALUES (?, ?, 'adopt', ?, ?, ?, ?, 'filled', ?, ?, ?, ?, ?, ?, 'apex reconcile --adopt')",
            (fill.client_order_id, fill.signal_id, fill.venue, fill.symbol, fill.side, fill.quantity, fill.ts_ms,
             fill.order_id, fill.price, fill.fee_usd, fill.ts_ms, self._next("fill")))
        outbox.enqueue(self.db, rows)
        self.db.execute("COMMIT")

    def record_funding(self, fill: Fill, kind: str) -> bool:
        """A funding payment as a filled execution of ``kind`` (operators/funding.py), in the
        open transaction; False if this bill is booked already (its id is the signal id)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO executions (client_order_id, signal_id, kind, venue, symbol, side, quantity,"
            " status, intent_ms, order_id, price, fee_usd, filled_ms, seq, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'filled', ?, ?, ?, ?, ?, ?, 'funding')",
            (fill.client_order_id, fill.signal_id, kind, fill.venue, fill.symbol, fill.side, fill.quantity,
             fill.ts_ms, fill.order_id, fill.price, fill.fee_usd, fill.ts_ms, self._seq["fill"] + 1))
        if cur.rowcount == 1:
            self._next("fill")
        return cur.rowcount == 1

    def adopted(self) -> list[Fill]:
        """The holdings ``apex reconcile --adopt`` took into this book, in the order it did."""
        return [Fill(*row) for row in self.db.execute(
            "SELECT signal_id, client_order_id, order_id, venue, symbol, side, quantity, price, fee_usd, filled_ms"
            " FROM executions WHERE kind='adopt' ORDER BY seq")]

    def client_order_ids(self) -> set[str]:
        """Every order this ledger has a record of, whatever became of it."""
        return {r[0] for r in self.db.execute("SELECT client_order_id FROM executions")}

    def record_open(self, terms: TradeTerms) -> None:
        self.db.execute("INSERT OR IGNORE INTO trades VALUES (?, ?, 'open', NULL, NULL)",
                        (terms.signal_id, dumps(terms)))

    def record_close(self, closed: ClosedTrade) -> None:
        self.db.execute(
            "UPDATE trades SET status='closed', won=?, closed_seq=? WHERE signal_id=?",
            (int(closed.won), self._next("close"), closed.terms.signal_id),
        )

    def record_book(self, state: dict) -> None:
        """In the batch's transaction, so it always matches the fills committed with it."""
        self.db.execute("INSERT OR REPLACE INTO book VALUES (1, ?)", (orjson.dumps(state),))

    def book(self) -> dict | None:
        row = self.db.execute("SELECT state FROM book").fetchone()
        return orjson.loads(row[0]) if row else None

    def open_trades(self) -> list[TradeTerms]:
        rows = self.db.execute("SELECT terms FROM trades WHERE status='open' ORDER BY signal_id")
        return [_terms(orjson.loads(r[0])) for r in rows]

    def recent_closes(self, n: int) -> list[tuple[bool, float]]:
        """(won, expected win rate) of the last n closes, oldest first: the KellyTracker's window."""
        rows = self.db.execute(
            "SELECT won, terms FROM trades WHERE status='closed' ORDER BY closed_seq DESC LIMIT ?", (n,)
        ).fetchall()
        return [(bool(w), orjson.loads(t)["expected_win_rate"]) for w, t in reversed(rows)]

    def dangling(self, kind: str) -> list[tuple[Order, str, tuple[TradeTerms, str] | None]]:
        """Orders whose intent was written but whose outcome never was: the crash window, and
        orders a venue accepted whose fate had not come when the process stopped.
        Each with its reason (a close's exit) and, for an open, the trade it was to open
        with its exits description (None in intents written before it was kept)."""
        return [(order, reason, trade) for order, reason, trade, _ in self.live(kind)]

    def live(self, kind: str) -> list[tuple[Order, str, tuple[TradeTerms, str] | None, str]]:
        """``dangling`` with each order's status."""
        rows = self.db.execute(
            f"SELECT {ORDER}, reason, trade, status FROM executions WHERE status IN {_LIVE} AND kind=?"
            " ORDER BY intent_ms", (kind,)).fetchall()
        return [(_order(r[:11]), r[11] or "", _trade(orjson.loads(r[12])) if r[12] else None, r[13]) for r in rows]

    def close_attempts(self) -> dict[str, tuple[int, str, str, str]]:
        """The last close tried for each open trade that had one: (attempt, status, what the
        venue said of a refusal, the exit it was for)."""
        rows = self.db.execute(
            "SELECT e.signal_id, e.attempt, e.status, COALESCE(e.order_id, ''), e.reason FROM executions e"
            " JOIN trades t ON t.signal_id = e.signal_id AND t.status = 'open' WHERE e.kind = 'close'"
            " ORDER BY e.attempt")
        return {sid: (n, status, said, reason or "") for sid, n, status, said, reason in rows}

    def record_rest(self, terms: TradeTerms) -> None:
        """An open trade as a close cut at its limit left it: the rest still to close."""
        self.db.execute("UPDATE trades SET terms=? WHERE signal_id=? AND status='open'", (dumps(terms), terms.signal_id))

    def prune(self, shipped_seq: int) -> None:
        """Drop outbox rows the shipper has written to ClickHouse."""
        if shipped_seq > self._pruned:
            self.db.execute("DELETE FROM outbox WHERE seq <= ?", (shipped_seq,))
            self._pruned = shipped_seq

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT outcome, COUNT(*) FROM decisions GROUP BY outcome").fetchall())


def _order(row: tuple) -> Order:
    return Order(*row[:9], limit=row[9] or 0.0, attempt=row[10] or 0)


def _migrate(db: sqlite3.Connection) -> None:
    """A ledger written by an earlier version brought up to this one: an order's protection
    limit (``operators/protection.py``), kept with its intent so an order sent after a
    restart leaves with it; a close's attempt, part of what identifies an order, so the
    unique index is on (signal_id, kind, attempt). Rows written before are attempt 0."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(executions)")}
    if "limit_px" not in cols:
        db.execute("ALTER TABLE executions ADD COLUMN limit_px REAL")
    if "attempt" not in cols:
        db.execute("ALTER TABLE executions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
    indexed = [r[2] for r in db.execute("PRAGMA index_info(executions_signal)")]
    if indexed != ["signal_id", "kind", "attempt"]:
        db.execute("DROP INDEX IF EXISTS executions_signal")
        db.execute("CREATE UNIQUE INDEX executions_signal ON executions(signal_id, kind, attempt)")


def _sql_set(statuses) -> str:
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


_LIVE = _sql_set(LIVE)


def _guard(dst: str) -> str:
    """A guarded UPDATE's condition: the order is in none of the statuses ``dst`` may not be
    entered from. Written as inequalities, not ``IN (...)`` (nor ORs, which SQLite makes an
    IN): SQLite builds a lookup table for an IN list at every execution, which cost the
    paper venue's fills more than the rest of their UPDATE."""
    barred = sorted(src for src, to in TRANSITIONS.items() if dst not in to)
    return "(" + " AND ".join(f"status <> '{s}'" for s in barred) + ")" if barred else "1"


# a guarded UPDATE's condition for each status an order may enter
_FROM = {dst: _guard(dst) for dst in {d for to in TRANSITIONS.values() for d in to}}


def _no_rows() -> dict[str, list]:
    return {t: [] for t in outbox.TABLES}


def _decided(row: tuple) -> Decided:
    return Decided(row[0], row[1], row[2] or "")


_TERMS = attrgetter(*(f.name for f in fields(TradeTerms)))  # an intent's trade terms as a tuple


def _trade(kept: list) -> tuple[TradeTerms, str]:
    """An intent's kept trade, [terms values, exits]: compact, since it is written with every open."""
    values, exits = kept
    terms = TradeTerms(*values)
    terms.exit_regimes = tuple(terms.exit_regimes)  # a JSON list
    return terms, exits


def _terms(d: dict) -> TradeTerms:
    d["exit_regimes"] = tuple(d["exit_regimes"])
    return TradeTerms(**d)
