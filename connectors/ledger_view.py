"""A book's ledger read by another thread or process while its worker writes it: a
read-only SQLite connection (WAL lets it read without holding the writer up), answering
the ledger's own questions with the ledger's own queries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from connectors.ledger import BUSY_TIMEOUT_MS, Ledger


class LedgerView:
    """Only what reconciliation asks; nothing here can write."""

    fills = Ledger.fills
    client_order_ids = Ledger.client_order_ids
    live = Ledger.live
    dangling = Ledger.dangling
    book = Ledger.book
    open_trades = Ledger.open_trades
    close_attempts = Ledger.close_attempts

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
