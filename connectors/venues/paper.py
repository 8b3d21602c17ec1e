"""The paper venue: fills market orders at the order's reference price with
configurable slippage and fee (nothing, when that lies beyond the order's protection
limit), and remembers every client order id in its own SQLite file, as a real exchange
does, so a crash between sending and recording can be resolved by asking it (``lookup``)
rather than sending twice.

It simulates every market a signal may name, each with its own lot rules (crypto
to 1e-8 of a coin, equities in whole shares). It lists the bundled universe, and
trades any other symbol of those markets on the same rules: a simulator has no
reason to refuse a symbol the pipeline's universe allows.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from connectors.venues import FILLED, REJECTED, Ack, Instrument, OrderUpdate, Rejected
from operators.filters import DEFAULT_UNIVERSE
from operators.orders import Order, expected_fill
from operators.fill import Fill
from operators.protection import not_marketable

# market -> (lot size, tick size); the minimum size is one lot
RULES = {"okx": (1e-8, 1e-8), "ibkr": (1.0, 0.01)}


class PaperVenue:
    name = "paper"
    asynchronous = False  # every fate is known at once

    def __init__(self, path: str | Path, *, slippage_bps: float = 0.0, fee_bps: float = 0.0,
                 cash_usd: float = 0.0):
        """``cash_usd``: the balance before any order; fills move it."""
        self.slippage_bps, self.fee_bps, self.cash_usd = slippage_bps, fee_bps, cash_usd
        self._updates: list[OrderUpdate] = []
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # a simulator: a killed process loses nothing, fsyncs buy nothing
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS orders (client_order_id TEXT PRIMARY KEY, signal_id TEXT,"
            " venue TEXT, symbol TEXT, side TEXT, quantity REAL, price REAL, fee_usd REAL, ts_ms INTEGER,"
            " received_us INTEGER)"
        )
        # received_us: wall-clock time the order reached the venue (µs since the epoch), for emit → venue latency
        # refused attempts (a client order id seen before), so tests can prove nothing was sent twice
        self.db.execute("CREATE TABLE IF NOT EXISTS attempts (client_order_id TEXT, accepted INTEGER)")

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        """One transaction for a batch's orders (a commit each was a tenth of the worker)."""
        received_us = time.time_ns() // 1000
        out: list[Fill | Rejected] = []
        self.db.execute("BEGIN")
        try:
            for order in orders:
                out.append(self._accept(order, received_us))
        finally:
            self.db.execute("COMMIT")
        return out

    def _accept(self, order: Order, received_us: int) -> Fill | Rejected:
        if order.price <= 0:
            return Rejected("no price")
        f = expected_fill(order, self.slippage_bps, self.fee_bps, _order_id(order.client_order_id))
        if order.limit > 0 and (f.price > order.limit if order.side == "buy" else f.price < order.limit):
            return Rejected(not_marketable(order.limit, f.price))  # its own fill lies beyond the order's band
        cur = self.db.execute(
            "INSERT OR IGNORE INTO orders (client_order_id, signal_id, venue, symbol, side, quantity, price,"
            " fee_usd, ts_ms, received_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (order.client_order_id, order.signal_id, order.venue, order.symbol, order.side,
             order.quantity, f.price, f.fee_usd, order.ts_ms, received_us),
        )
        if cur.rowcount == 0:  # accepted orders are in ``orders``; refusals are kept apart
            self.db.execute("INSERT INTO attempts VALUES (?, 0)", (order.client_order_id,))
            return Rejected(f"duplicate client order id {order.client_order_id}")
        return f

    def submit(self, orders: list[Order]) -> list[Ack]:
        """Every fate is known at once: each is queued for ``updates``."""
        acks = []
        for order, r in zip(orders, self.place_many(orders), strict=True):
            if isinstance(r, Rejected):
                acks.append(Ack(order.client_order_id, False, str(r)))
                self._updates.append(OrderUpdate(order.client_order_id, REJECTED, None, str(r)))
            else:
                acks.append(Ack(order.client_order_id, True))
                self._updates.append(OrderUpdate(order.client_order_id, FILLED, r))
        return acks

    def updates(self) -> list[OrderUpdate]:
        out, self._updates = self._updates, []
        return out

    def lookup(self, order: Order) -> Fill | None:
        return self._fill(order.client_order_id)

    def cancel(self, order: Order) -> None:
        """Nothing to do: every order is filled or refused the moment it arrives, and a cancel
        never undoes a fill (the interface asks every venue for one)."""

    def open_orders(self) -> list[Order]:
        return []  # market orders fill or are refused at once

    def positions(self) -> dict[tuple[str, str], float]:
        rows = self.db.execute(
            "SELECT venue, symbol, SUM(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) FROM orders"
            " GROUP BY venue, symbol")
        return {(venue, symbol): qty for venue, symbol, qty in rows if qty}

    def balances(self) -> dict[str, float]:
        (flow,) = self.db.execute(
            "SELECT COALESCE(SUM(CASE side WHEN 'buy' THEN -quantity * price ELSE quantity * price END"
            " - fee_usd), 0) FROM orders").fetchone()
        return {"USD": self.cash_usd + flow}

    def instruments(self) -> list[Instrument]:
        return [self.instrument(venue, symbol) for venue, symbols in DEFAULT_UNIVERSE.items()  # type: ignore[misc]
                for symbol in symbols]

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        if venue not in RULES:
            return None
        lot, tick = RULES[venue]
        return Instrument(venue, symbol, lot, tick, lot)

    def _fill(self, client_order_id: str) -> Fill | None:
        row = self.db.execute(
            "SELECT signal_id, venue, symbol, side, quantity, price, fee_usd, ts_ms FROM orders"
            " WHERE client_order_id = ?", (client_order_id,),
        ).fetchone()
        if row is None:
            return None
        sid, venue, symbol, side, qty, price, fee, ts = row
        return Fill(sid, client_order_id, _order_id(client_order_id), venue, symbol, side, qty, price, fee, ts)

    def orders_sent(self) -> tuple[int, int]:
        """(accepted orders, refused attempts)"""
        acc = self.db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
        ref = self.db.execute("SELECT COUNT(*) FROM attempts WHERE accepted = 0").fetchone()[0]
        return acc, ref


def _order_id(client_order_id: str) -> str:
    return "paper-" + client_order_id[2:14]
