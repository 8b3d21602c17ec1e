"""Sliced orders' plans, kept in the book's ledger (its SQLite file, its connection, so in
the same transaction as the decision that made them and the intents of the children sent).

One row a child, with its fate once it has one: ``send`` (its intent is written, it left
or will), ``volume`` or ``halted`` (never sent, and why). A child's fate is set only from
none (``UPDATE … WHERE fate IS NULL``), so a restart resumes the schedule from what the
ledger holds and a child that has a fate is never sent again. The rules for what a due
child does are ``operators/slicing.py``'s; this module only keeps them.
"""

from __future__ import annotations

import math
import sqlite3

from typing import Callable

from operators.slicing import HALTED, MINUTE_MS, WAIT, Child, Plan, SliceOutcome, check, parent_outcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS slices (
    client_order_id TEXT PRIMARY KEY,  -- the child's, derived from the parent's (child_order_id)
    parent_id  TEXT NOT NULL,
    symbol     TEXT NOT NULL,  -- whose minute volume the child is checked against when due
    idx        INTEGER NOT NULL,
    quantity   REAL NOT NULL,
    due_ms     INTEGER NOT NULL,  -- as planned
    next_ms    INTEGER NOT NULL,  -- when it is looked at next: its due time, later while volume is thin
    give_up_ms INTEGER NOT NULL,
    fate       TEXT  -- NULL: still due; send | volume | halted
);
CREATE INDEX IF NOT EXISTS slices_next ON slices(fate, next_ms);
CREATE TABLE IF NOT EXISTS slice_parents (
    parent_id TEXT PRIMARY KEY,
    parent    TEXT NOT NULL  -- what each child is made from (the signal, the order's terms), as JSON
);
"""


class SlicePlans:
    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.db.executescript(SCHEMA)

    def record(self, plan: Plan, symbol: str) -> None:
        """A new parent's children, all still due. The same plan again (its entry redelivered)
        changes nothing: the children keep the fates they have."""
        self.db.executemany(
            "INSERT OR IGNORE INTO slices (client_order_id, parent_id, symbol, idx, quantity, due_ms, next_ms,"
            " give_up_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(c.client_order_id, plan.parent_id, symbol, c.index, c.quantity, c.due_ms, c.due_ms, plan.give_up_ms)
             for c in plan.children])

    def keep_parent(self, parent_id: str, doc: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO slice_parents VALUES (?, ?)", (parent_id, doc))

    def parent(self, parent_id: str) -> str | None:
        row = self.db.execute("SELECT parent FROM slice_parents WHERE parent_id = ?", (parent_id,)).fetchone()
        return row[0] if row else None

    def plan(self, parent_id: str) -> Plan | None:
        rows = self.db.execute(
            "SELECT idx, client_order_id, quantity, due_ms, give_up_ms FROM slices WHERE parent_id = ? ORDER BY idx",
            (parent_id,)).fetchall()
        if not rows:
            return None
        kids = tuple(Child(i, cid, q, due) for i, cid, q, due, _ in rows)
        return Plan(parent_id, math.fsum(c.quantity for c in kids), kids, rows[0][4])

    def due(self, now_ms: int) -> list[tuple[str, Child]]:
        """Every child due by ``now_ms`` without a fate, oldest first: (parent id, child)."""
        return [(p, Child(i, cid, q, due)) for cid, p, i, q, due in self.db.execute(
            "SELECT client_order_id, parent_id, idx, quantity, due_ms FROM slices "
            "WHERE fate IS NULL AND next_ms <= ? ORDER BY next_ms, parent_id, idx", (now_ms,))]

    def next_due_ms(self) -> int | None:
        """When the book must be woken next for a child (its ``notify_at``)."""
        return self.db.execute("SELECT MIN(next_ms) FROM slices WHERE fate IS NULL").fetchone()[0]

    def postpone(self, client_order_id: str, next_ms: int) -> None:
        """A child held back by thin volume, looked at again at ``next_ms``."""
        self.db.execute("UPDATE slices SET next_ms = ? WHERE client_order_id = ? AND fate IS NULL",
                        (next_ms, client_order_id))

    def settle(self, client_order_id: str, fate: str) -> bool:
        """The child's fate, set once: False when it had one already (it must not be sent)."""
        cur = self.db.execute("UPDATE slices SET fate = ? WHERE client_order_id = ? AND fate IS NULL",
                              (fate, client_order_id))
        return cur.rowcount == 1

    def halt(self, parent_id: str | None = None) -> dict[str, float]:
        """The kill switch: every child not sent yet (of one parent, or all) will not be.
        Returns the quantity that will not be sent, by parent."""
        where, args = ("AND parent_id = ?", (parent_id,)) if parent_id is not None else ("", ())
        left = dict(self.db.execute(
            f"SELECT parent_id, SUM(quantity) FROM slices WHERE fate IS NULL {where} GROUP BY parent_id",
            args).fetchall())
        self.db.execute(f"UPDATE slices SET fate = ? WHERE fate IS NULL {where}", (HALTED, *args))
        return left

    def unsent(self) -> list[tuple[str, str, float]]:
        """What sliced orders have still to send: (parent id, symbol, quantity) of each parent
        with a child still due."""
        return self.db.execute("SELECT parent_id, symbol, SUM(quantity) FROM slices WHERE fate IS NULL "
                               "GROUP BY parent_id, symbol ORDER BY parent_id").fetchall()

    def release(self, now_ms: int, minute_volume: Callable[[str], float | None], share: float,
                halted: bool) -> list[tuple[str, Child, str]]:
        """The due children that got a fate now: (parent id, child, fate). Each is settled
        first (in the caller's transaction, with the intents it writes for those to send):
        a child is handed out once, ever. A due child over the share of its symbol's volume
        waits a minute (up to its plan's bound, then ``volume``); while the book is halted
        every due child is ``halted``."""
        out = []
        rows = self.db.execute(
            "SELECT client_order_id, parent_id, symbol, idx, quantity, due_ms, give_up_ms FROM slices "
            "WHERE fate IS NULL AND next_ms <= ? ORDER BY next_ms, parent_id, idx", (now_ms,)).fetchall()
        for cid, parent, symbol, i, q, due, give_up in rows:
            child = Child(i, cid, q, due)
            verdict = check(child, now_ms, minute_volume(symbol), share, halted, Plan(parent, q, (child,), give_up))
            if verdict == WAIT:
                self.postpone(cid, now_ms + MINUTE_MS)
            elif self.settle(cid, verdict):
                out.append((parent, child, verdict))
        return out

    def outcome(self, parent_id: str, filled: dict[int, float] | None = None) -> SliceOutcome | None:
        """The parent's outcome, the sum of its children's (``filled``: by child index)."""
        p = self.plan(parent_id)
        if p is None:
            return None
        fates = dict(self.db.execute(
            "SELECT idx, fate FROM slices WHERE parent_id = ? AND fate IS NOT NULL", (parent_id,)).fetchall())
        return parent_outcome(p, fates, filled or {})
