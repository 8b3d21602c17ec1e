"""A ledger written by an older Apex keeps working: the tables changed shape for new files
(rowid tables, executions found by signal_id and kind), the statements did not."""

from __future__ import annotations

import sqlite3

from connectors.execution import Executor
from connectors.ledger import Ledger
from connectors.venues.paper import PaperVenue
from operators.orders import Order, client_order_id

OLD_SCHEMA = """
CREATE TABLE decisions (signal_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, outcome TEXT NOT NULL,
    reason TEXT, ts_ms INTEGER NOT NULL, events TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE executions (client_order_id TEXT PRIMARY KEY, signal_id TEXT NOT NULL, kind TEXT NOT NULL,
    venue TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL, quantity REAL NOT NULL,
    status TEXT NOT NULL, intent_ms INTEGER NOT NULL, order_id TEXT, price REAL, fee_usd REAL,
    filled_ms INTEGER, seq INTEGER, reason TEXT);
CREATE INDEX executions_signal ON executions(signal_id);
CREATE TABLE trades (signal_id TEXT PRIMARY KEY, terms TEXT NOT NULL, status TEXT NOT NULL, won INTEGER,
    closed_seq INTEGER) WITHOUT ROWID;
CREATE INDEX trades_status ON trades(status, closed_seq);
"""


def _order(signal_id: str) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "okx", "BTC-USDT", "buy", 1.0, 100.0, 1)


def test_a_ledger_of_the_old_shape_records_resolves_and_refuses_as_a_new_one(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA)
        old.execute("INSERT INTO executions (client_order_id, signal_id, kind, venue, symbol, side, quantity,"
                    " status, intent_ms, price) VALUES (?, 'sig-old', 'open', 'okx', 'BTC-USDT', 'buy', 1.0,"
                    " 'intent', 1, 100.0)", (client_order_id("sig-old"),))  # a crash left this intent
    ledger, venue = Ledger(path), PaperVenue(tmp_path / "venue.sqlite")
    ex = Executor(ledger, venue)
    ledger.begin()
    fill, sent = ex.execute(_order("sig-new"))
    again, sent_again = ex.execute(_order("sig-new"))
    resumed, resumed_sent = ex.execute(_order("sig-old"))  # the venue never saw it: sent now, once
    ledger.commit()
    assert (sent, sent_again, resumed_sent) == (True, False, True)
    assert again == fill
    assert venue.orders_sent() == (2, 0)
    assert [f.signal_id for f in ledger.fills()] == ["sig-new", "sig-old"]
    ledger.record_intent(_order("sig-new"))  # a second intent under one id is ignored, not a second row
    assert ledger.db.execute("SELECT COUNT(*) FROM executions").fetchone()[0] == 2
    # the old file kept its own shape: nothing was rebuilt under the running worker
    kinds = dict(ledger.db.execute("SELECT name, sql LIKE '%WITHOUT ROWID%' FROM sqlite_master WHERE type='table'"))
    assert kinds["decisions"] == 1 and kinds["trades"] == 1


def test_a_new_ledger_keeps_one_order_per_signal_and_kind(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_intent(_order("sig-a"))
    ledger.record_intent(_order("sig-a"))
    ledger.record_intent(Order(client_order_id("sig-a", "close"), "sig-a", "close", "okx", "BTC-USDT", "sell",
                               1.0, 101.0, 2))
    rows = ledger.db.execute("SELECT kind, client_order_id FROM executions ORDER BY kind").fetchall()
    assert rows == [("close", client_order_id("sig-a", "close")), ("open", client_order_id("sig-a"))]
    assert ledger.execution(_order("sig-a"))[0] == "intent"


def test_decisions_keep_no_chain_and_the_chains_older_workers_kept_still_read(tmp_path):
    """A "sent" decision's audit rows go to the outbox with its intent, so the decision row
    is small; older workers kept the chain a restart resumes in it, as an LZ4 frame or, older
    still, JSON text, and both still read."""
    import dataclasses

    import orjson

    from connectors import outbox
    from operators.audit import Chain

    chain = Chain("7-0", "sig-sent", 7, "macro", "okx", "BTC-USDT")
    for stage in ("SIGNAL_RECEIVED", "FILTER_CHECK", "POSITION_SIZING", "EXECUTION_ATTEMPT"):
        chain.add(stage, "passed", size_usd=1234.5, client_order_id=client_order_id("sig-sent"))
    events = [dataclasses.asdict(ev) for ev in chain.events]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.begin()
    ledger.record_decision("sig-sent", "7-0", "sent", "", 7)
    ledger.commit()
    assert ledger.db.execute("SELECT events FROM decisions WHERE signal_id = 'sig-sent'").fetchone() == ("[]",)
    assert ledger.decided("sig-sent").events == []
    for sid, kept in (("sig-lz4", outbox.pack(events)), ("sig-json", orjson.dumps(events).decode())):
        ledger.db.execute("INSERT INTO decisions VALUES (?, '6-0', 'sent', '', 6, ?)", (sid, kept))
        assert ledger.decided(sid).events == events


def test_an_intent_keeps_its_trade_in_a_compact_form_and_older_object_forms_still_read(tmp_path):
    """Intents keep the trade a start books from the venue as [terms values, exits]; ones an
    older Apex wrote hold {"terms": {...}, "exits": ...}. Both read back as the same trade."""
    import orjson

    from operators.exits import TradeTerms

    terms = TradeTerms("sig-t", "macro", "okx", "BTC-USDT", "buy", 1.5, 100.25, 7, 0.15, "choppy", 0.03,
                       ("choppy", "trending_down"), 57_600_007, False, 0.62, 0.04, None)
    exits = "Exit on a 3% adverse move, on a regime change to choppy or trending_down, or after 16 hours."
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_intent(_order("sig-t"), trade=(terms, exits))
    older = {"terms": {k: getattr(terms, k) for k in TradeTerms.__dataclass_fields__}, "exits": exits}
    ledger.record_intent(_order("sig-u"), trade=(terms, exits))
    ledger.db.execute("UPDATE executions SET trade = ? WHERE signal_id = 'sig-u'", (orjson.dumps(older),))
    stored = ledger.db.execute("SELECT length(trade) FROM executions WHERE signal_id = 'sig-t'").fetchone()[0]
    assert stored < 320
    assert sorted((o.signal_id, trade) for o, _, trade in ledger.dangling("open")) == [
        ("sig-t", (terms, exits)), ("sig-u", (terms, exits))]
