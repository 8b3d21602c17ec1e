"""The audit outbox: ClickHouse rows queued in the ledger, shipped in bulk by a child process.

Each outcome's rows are written to the ``outbox`` table in the same SQLite
transaction as the decision itself, so the audit record is durable exactly
when the decision is, and an entry can be acknowledged at SQLite speed
(~0.1 ms) instead of ClickHouse insert speed (~7 ms a part, per table, even
embedded). The shipper moves the rows to ClickHouse in large inserts and
records how far it got; a crash in between
ships them again, and the ReplacingMergeTree keys fold the repeat away. The
ledger's own writer deletes shipped rows (``Ledger.prune``), so the shipper
never queues for SQLite's write lock on the hot path.

If ClickHouse is down the outbox grows; once the shipper reports failure and
the backlog passes ``max_backlog`` outbox rows (one per ledger transaction), the sink stops acknowledging, so
stream entries stay pending instead of piling up behind a dead store.

    python -m connectors.outbox LEDGER DSN    # runs until its stdin closes, then flushes
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import orjson

log = logging.getLogger("apex.outbox")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, rows BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS outbox_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " shipped_seq INTEGER NOT NULL, healthy INTEGER NOT NULL, last_error TEXT NOT NULL);"
    "INSERT OR IGNORE INTO outbox_state VALUES (1, 0, 1, '');"
)
TABLES = ("audit_events", "filter_drops", "executions", "trades")
INTERVAL_S = 0.25  # a ClickHouse insert costs ~7 ms a table even embedded: ship a few times a second, in bulk
CHUNK = 200  # outbox rows (one per ledger transaction, i.e. per Bytewax batch) per ClickHouse insert
INLINE_AFTER = 40  # replays ship once this many batches wait: ~20,000 outcomes at 512 a batch


def enqueue(db: sqlite3.Connection, rows: dict[str, list[dict]]) -> None:
    """Inside the caller's transaction: the rows become durable with it."""
    db.execute("INSERT INTO outbox (rows) VALUES (?)", (orjson.dumps(rows),))


def connect(ledger_path: Path) -> sqlite3.Connection:
    Path(ledger_path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.executescript(SCHEMA)
    return db


class Shipper:
    """The dataflow's handle on shipping.

    ``background`` (live sources) runs the shipper as a child process so an
    acknowledgement never waits for ClickHouse. Otherwise (replays, where
    throughput matters and 2 cores are better spent on one pipeline than on
    two competing ones) the sink ships inline, in chunks of ``CHUNK``
    outcomes, and flushes at the end.
    """

    def __init__(self, ledger_path: Path, dsn: str, *, background: bool, max_backlog: int = 5_000):
        self.ledger_path, self.dsn, self.background = Path(ledger_path), dsn, background
        self.max_backlog = max_backlog
        self._proc: subprocess.Popen | None = None
        self._db: sqlite3.Connection | None = None
        self._store = None
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = connect(self.ledger_path)
        return self._db

    def start(self) -> None:
        with self._lock:
            if self.background and self._proc is None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "connectors.outbox", str(self.ledger_path), self.dsn],
                    stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
                )

    def state(self) -> tuple[int, bool, str]:
        seq, healthy, err = self.db.execute("SELECT shipped_seq, healthy, last_error FROM outbox_state").fetchone()
        return seq, bool(healthy), err

    @property
    def shipped_seq(self) -> int:
        return self.state()[0]

    def backlog(self) -> int:
        top = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        return top - self.shipped_seq

    def accepting(self) -> tuple[bool, str]:
        """(False, why) when entries should stay pending: the store fails and the queue is long."""
        _, healthy, err = self.state()
        return healthy or self.backlog() < self.max_backlog, err

    def after_batch(self) -> None:
        if not self.background and self.backlog() >= INLINE_AFTER:
            self.ship_inline()

    def ship_inline(self) -> bool:
        """Ship everything queued, in this thread; False (rows kept) if the store fails."""
        from connectors.clickhouse import AuditStore

        seq = self.shipped_seq
        try:
            self._store = self._store or AuditStore(self.dsn)
            while (new := ship_once(self.db, self._store, seq)) != seq:
                seq = new
                mark(self.db, seq)
        except Exception as err:  # noqa: BLE001 - keep the rows, report
            failed(self.db, err)
            self._store = None
            return False
        self.db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))
        checkpoint(self.db)
        return True

    def stop(self, timeout_s: float = 120.0) -> None:
        """Drain the outbox (the child, or inline) and let go of the store."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.stdin.close()  # type: ignore[union-attr]
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
            self.db.execute("DELETE FROM outbox WHERE seq <= ?", (self.shipped_seq,))
        elif not self.background:
            self.ship_inline()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._db is not None:
            self._db.close()
            self._db = None


def checkpoint(db: sqlite3.Connection) -> None:
    """The ledger's WAL checkpoint, off the decision path (the ledger turns automatic ones off)."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def mark(db: sqlite3.Connection, seq: int) -> None:
    db.execute("UPDATE outbox_state SET shipped_seq=?, healthy=1, last_error=''", (seq,))


def failed(db: sqlite3.Connection, err: Exception) -> None:
    db.execute("UPDATE outbox_state SET healthy=0, last_error=?", (f"{type(err).__name__}: {err}",))
    log.warning("audit store write failed, rows kept in the outbox: %s", err)


def ship_once(db: sqlite3.Connection, store, shipped_seq: int) -> int:
    """Ship one chunk past ``shipped_seq``; returns the new watermark."""
    batch = db.execute("SELECT seq, rows FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                       (shipped_seq, CHUNK)).fetchall()
    if not batch:
        return shipped_seq
    merged: dict[str, list[dict]] = {t: [] for t in TABLES}
    for _, blob in batch:
        for table, rows in orjson.loads(blob).items():
            merged[table].extend(rows)
    store.write(merged)
    return batch[-1][0]


def main(ledger_path: str, dsn: str) -> None:
    from connectors.clickhouse import AuditStore

    # The audit trail may lag by a moment; a decision may not. Embedded ClickHouse
    # spreads an insert over every core, so the shipper yields the CPU to the worker.
    os.nice(19)

    db = connect(Path(ledger_path))
    seq = db.execute("SELECT shipped_seq FROM outbox_state").fetchone()[0]
    store = None
    closing = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closing.set()), daemon=True).start()
    backoff = INTERVAL_S
    while True:
        done = closing.is_set()
        try:
            store = store or AuditStore(dsn)
            shipped = False
            while (new := ship_once(db, store, seq)) != seq:
                seq, shipped = new, True
                mark(db, seq)
            if shipped:
                checkpoint(db)
            backoff = INTERVAL_S
        except Exception as err:  # noqa: BLE001 - keep the rows, report, try again later
            failed(db, err)
            store = None
            backoff = min(max(backoff * 2, 0.2), 5.0)
            if done:
                break
        if done:
            break
        closing.wait(backoff)
    if store is not None:
        store.close()
    db.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
