"""The audit store's schema is versioned: ``connect`` takes every step a store has not
recorded, in order, and taking them again changes nothing."""

from __future__ import annotations

import clickhouse_connect

from connectors.clickhouse import MIGRATIONS, AuditStore, connect, migrate


def test_a_store_made_before_books_gets_the_book_column_and_keeps_its_rows(tmp_path):
    dsn = f"chdb://{tmp_path / 'ch'}"
    old = clickhouse_connect.get_client(dsn=dsn)
    old.command("CREATE TABLE trades (signal_id String, pnl_usd Float64)"
                " ENGINE = ReplacingMergeTree ORDER BY signal_id")
    old.insert("trades", [["s1", 12.5]], column_names=["signal_id", "pnl_usd"])
    client = connect(dsn)
    versions = sorted(v for (v,) in client.query("SELECT version FROM schema_migrations").result_rows)
    assert versions == [v for v, _ in MIGRATIONS]
    assert client.query("SELECT signal_id, pnl_usd, book FROM trades").result_rows == [("s1", 12.5, "")]
    for table in ("audit_events", "filter_drops", "executions", "trades"):
        cols = {n for (n,) in client.query(f"SELECT name FROM system.columns WHERE database = currentDatabase()"
                                           f" AND table = '{table}'").result_rows}
        assert "book" in cols, table


def test_migrating_again_takes_nothing_and_the_store_still_writes(tmp_path):
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = connect(dsn)
    assert migrate(client) == []
    assert client.query("SELECT count() FROM schema_migrations").result_rows == [(len(MIGRATIONS),)]
    store = AuditStore(dsn)
    store.write({"executions": [{"signal_id": "s", "client_order_id": "c", "kind": "open", "venue": "okx",
                                 "symbol": "BTC-USDT", "side": "buy", "quantity": 1.0, "price": 2.0,
                                 "fee_usd": 0.0, "order_id": "o", "ts_ms": 1}]}, book="alpha")
    assert store.query("SELECT book FROM executions") == [("alpha",)]
