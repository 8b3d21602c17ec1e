"""A book's trading state, kept in its ledger (one row), so it survives a restart.

Written in the ledger's current transaction (the worker's batch, or ``apex kill``'s own
with the state dir held), read by the worker when its desk opens and by ``apex kill`` /
``apex resume``, which may read it while a worker runs (SQLite WAL: a reader never waits
on the writer). ``command_id`` is the last control command carried out for the book:
what ``apex kill`` waits to see to know a running worker has done it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from operators.trading_state import ACTIVE

SCHEMA = """
CREATE TABLE IF NOT EXISTS trading_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    state      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    by         TEXT NOT NULL,
    command_id TEXT NOT NULL,
    ts_ms      INTEGER NOT NULL,
    summary    TEXT NOT NULL  -- what the last command did, by venue (JSON)
);
"""


@dataclass
class TradingState:
    state: str = ACTIVE
    reason: str = ""
    by: str = ""
    command_id: str = ""
    ts_ms: int = 0
    summary: dict = field(default_factory=dict)


def ensure(db: sqlite3.Connection) -> None:
    """The table made if missing: outside any transaction (``executescript`` commits)."""
    db.executescript(SCHEMA)


def read(db: sqlite3.Connection) -> TradingState:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'trading_state'").fetchone():
        return TradingState()
    row = db.execute("SELECT state, reason, by, command_id, ts_ms, summary FROM trading_state WHERE id = 1"
                     ).fetchone()
    if row is None:
        return TradingState()
    return TradingState(*row[:5], json.loads(row[5] or "{}"))


def write(db: sqlite3.Connection, s: TradingState) -> None:
    db.execute("INSERT OR REPLACE INTO trading_state (id, state, reason, by, command_id, ts_ms, summary)"
               " VALUES (1, ?, ?, ?, ?, ?, ?)",
               (s.state, s.reason, s.by, s.command_id, s.ts_ms, json.dumps(s.summary, sort_keys=True)))


def read_file(ledger_path: Path) -> TradingState | None:
    """The state a ledger file holds, read only (None: no ledger yet); for a command that
    runs beside a worker."""
    if not Path(ledger_path).exists():
        return None
    db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=5)
    try:
        return read(db)
    finally:
        db.close()
