"""Fills booked beyond their order's protection band (``operators/protection.py``): kept in
the book's ledger, in the batch's transaction, for ``apex status`` to show."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from operators.fill import Fill
from operators.orders import Order

SCHEMA = """
CREATE TABLE IF NOT EXISTS price_alerts (
    client_order_id TEXT PRIMARY KEY,
    ts_ms     INTEGER NOT NULL,
    venue     TEXT NOT NULL,
    symbol    TEXT NOT NULL,
    side      TEXT NOT NULL,
    reference REAL NOT NULL,
    price     REAL NOT NULL,
    band_bps  REAL NOT NULL
);
"""
COLUMNS = ("client_order_id", "ts_ms", "venue", "symbol", "side", "reference", "price", "band_bps")


def record(db: sqlite3.Connection, order: Order, fill: Fill, band_bps: float) -> None:
    db.execute(SCHEMA)
    db.execute("INSERT OR REPLACE INTO price_alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (order.client_order_id, fill.ts_ms, order.venue, order.symbol, order.side, order.price,
                fill.price, band_bps))


def read(ledger: Path, most: int = 20) -> list[dict]:
    """The latest alerts of one book's ledger, newest first; none if it has no ledger yet.
    Read-only: a running worker's ledger is never written from here."""
    if not ledger.exists():
        return []
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM price_alerts ORDER BY ts_ms DESC LIMIT ?",
                          (most,)).fetchall()
    except sqlite3.OperationalError:  # no alert table: no alert ever
        return []
    finally:
        db.close()
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]
