"""The ledger's shape: one order per signal and kind, small decision rows, compact kept trades."""

from __future__ import annotations

from connectors.ledger import Decided, Ledger
from operators.orders import Order, client_order_id


def _order(signal_id: str) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "okx", "BTC-USDT", "buy", 1.0, 100.0, 1)


def test_a_new_ledger_keeps_one_order_per_signal_and_kind(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_intent(_order("sig-a"))
    ledger.record_intent(_order("sig-a"))
    ledger.record_intent(Order(client_order_id("sig-a", "close"), "sig-a", "close", "okx", "BTC-USDT", "sell",
                               1.0, 101.0, 2))
    rows = ledger.db.execute("SELECT kind, client_order_id FROM executions ORDER BY kind").fetchall()
    assert rows == [("close", client_order_id("sig-a", "close")), ("open", client_order_id("sig-a"))]
    assert ledger.execution(_order("sig-a"))[0] == "intent"


def test_a_decision_row_is_small_and_its_chain_is_in_the_outbox(tmp_path):
    """A "sent" decision's audit rows go to the outbox with its intent: the decision row
    holds what it was, never its chain."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.begin()
    ledger.record_decision("sig-sent", "7-0", "sent", "", 7)
    ledger.commit()
    cols = [r[1] for r in ledger.db.execute("PRAGMA table_info(decisions)")]
    assert cols == ["signal_id", "stream_id", "outcome", "reason", "ts_ms"]
    assert ledger.decided("sig-sent") == Decided("7-0", "sent", "")


def test_an_intent_keeps_its_trade_in_a_compact_form(tmp_path):
    """Intents keep the trade a start books from the venue as [terms values, exits]."""
    from operators.exits import TradeTerms

    terms = TradeTerms("sig-t", "macro", "okx", "BTC-USDT", "buy", 1.5, 100.25, 7, 0.15, "choppy", 0.03,
                       ("choppy", "trending_down"), 57_600_007, False, 0.62, 0.04, None)
    exits = "Exit on a 3% adverse move, on a regime change to choppy or trending_down, or after 16 hours."
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_intent(_order("sig-t"), trade=(terms, exits))
    stored = ledger.db.execute("SELECT length(trade) FROM executions WHERE signal_id = 'sig-t'").fetchone()[0]
    assert stored < 320
    assert sorted((o.signal_id, trade) for o, _, trade in ledger.dangling("open")) == [
        ("sig-t", (terms, exits))]


def test_every_status_change_is_guarded_by_the_statuses_it_may_come_from(tmp_path):
    """The ledger refuses a change the state machine forbids, whoever asks for it: a refusal
    or an acceptance recorded after the fill leaves the order filled, and so does a second
    fill; and a paper fill still goes in (the guard is inequalities, not an IN list)."""
    from operators.fill import Fill

    ledger = Ledger(tmp_path / "ledger.sqlite")
    o = _order("sig-g")
    ledger.record_intent(o)
    ledger.record_accepted(o)
    assert ledger.execution(o)[0] == "accepted"
    fill = Fill("sig-g", o.client_order_id, "v-1", "okx", "BTC-USDT", "buy", 1.0, 100.5, 0.1, 2)
    ledger.record_fill(fill)
    ledger.record_rejection(o, "a late refusal")
    ledger.record_accepted(o)
    ledger.record_fill(Fill("sig-g", o.client_order_id, "v-2", "okx", "BTC-USDT", "buy", 2.0, 99.0, 0.1, 3))
    assert ledger.execution(o)[:3] == ("filled", "v-1", 100.5)


def test_a_ledger_written_before_close_attempts_is_upgraded_and_keeps_its_orders(tmp_path):
    """A ledger whose orders were one per (signal_id, kind), without limits or attempts:
    opened now, its rows are attempt 0 under the ids they had, and a trade's second close
    attempt has a row of its own."""
    import sqlite3

    from operators.closes import close_id

    path = tmp_path / "ledger.sqlite"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE executions (client_order_id TEXT NOT NULL, signal_id TEXT NOT NULL, kind TEXT NOT NULL,
            venue TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, quantity REAL NOT NULL,
            status TEXT NOT NULL, intent_ms INTEGER NOT NULL, order_id TEXT, price REAL, fee_usd REAL,
            filled_ms INTEGER, seq INTEGER, reason TEXT, trade TEXT);
        CREATE UNIQUE INDEX executions_signal ON executions(signal_id, kind);""")
    old.execute("INSERT INTO executions (client_order_id, signal_id, kind, venue, symbol, side, quantity, status,"
                " intent_ms, price) VALUES (?, 'sig-a', 'close', 'okx', 'BTC-USDT', 'sell', 1.0, 'intent', 5, 99.0)",
                (close_id("sig-a"),))
    old.commit()
    old.close()
    ledger = Ledger(path)
    [(order, reason, _, status)] = ledger.live("close")
    assert (order.client_order_id, order.attempt, order.limit, status) == (close_id("sig-a"), 0, 0.0, "intent")
    again = Order(close_id("sig-a", 1), "sig-a", "close", "okx", "BTC-USDT", "sell", 1.0, 98.0, 6, 97.5, 1)
    ledger.record_intent(again)
    ledger.record_intent(again)  # one row an attempt, whoever asks twice
    assert ledger.execution(again)[0] == "intent"
    rows = ledger.db.execute("SELECT attempt, client_order_id, limit_px FROM executions ORDER BY attempt").fetchall()
    assert rows == [(0, close_id("sig-a"), None), (1, close_id("sig-a", 1), 97.5)]
    cols = [r[2] for r in ledger.db.execute("PRAGMA index_info(executions_signal)")]
    assert cols == ["signal_id", "kind", "attempt"]
    ledger.close()
    Ledger(path).close()  # opened again: nothing left to upgrade
