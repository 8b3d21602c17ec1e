"""The audit trail in ClickHouse, through clickhouse-connect.

``chdb://PATH`` runs ClickHouse in-process (the embedded default, under the
state dir); ``http://user:pass@host:8123/db`` reaches a server with the same
DDL and the same inserts. Times are stored as epoch milliseconds (cheap to insert) with DateTime64
ALIAS columns (``ts``, ``entry_ts``, ``exit_ts``) for reading. Tables are ReplacingMergeTree keyed so that an
entry redelivered after a crash rewrites the same rows instead of adding
copies: at-least-once delivery, exactly-once audit rows (read with FINAL).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import clickhouse_connect

from operators.audit import DETAILS, DROP_COLUMNS, EVENT_COLUMNS, details_text

DDL = {
    "audit_events": """
        CREATE TABLE IF NOT EXISTS audit_events (
            signal_id String, stream_id String, seq UInt16,
            stage LowCardinality(String), outcome LowCardinality(String), reason String,
            ts_ms Int64, source LowCardinality(String), venue LowCardinality(String),
            symbol LowCardinality(String), size_usd Nullable(Float64), details String,
            latency_us UInt64, recorded_ms Int64, book LowCardinality(String) DEFAULT '',
            ts DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(ts_ms)
        ) ENGINE = ReplacingMergeTree(recorded_ms) ORDER BY (signal_id, stream_id, seq)""",
    "filter_drops": """
        CREATE TABLE IF NOT EXISTS filter_drops (
            signal_id String, stream_id String, filter LowCardinality(String),
            ts_ms Int64, source LowCardinality(String), venue LowCardinality(String),
            symbol LowCardinality(String), confidence Float64, regime LowCardinality(String),
            book LowCardinality(String) DEFAULT '',
            ts DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(ts_ms)
        ) ENGINE = ReplacingMergeTree ORDER BY (signal_id, stream_id)""",
    "executions": """
        CREATE TABLE IF NOT EXISTS executions (
            signal_id String, client_order_id String, kind LowCardinality(String),
            venue LowCardinality(String), symbol LowCardinality(String), side LowCardinality(String),
            quantity Float64, price Float64, fee_usd Float64, order_id String, ts_ms Int64,
            book LowCardinality(String) DEFAULT '',
            ts DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(ts_ms)
        ) ENGINE = ReplacingMergeTree ORDER BY (signal_id, client_order_id)""",
    "trades": """
        CREATE TABLE IF NOT EXISTS trades (
            signal_id String, source LowCardinality(String), venue LowCardinality(String),
            symbol LowCardinality(String), side LowCardinality(String),
            entry_ms Int64, exit_ms Int64,
            entry_price Float64, exit_price Float64, quantity Float64, fees_usd Float64,
            pnl_usd Float64, return_pct Float64, exit_reason LowCardinality(String),
            expected_win_rate Float64, avg_win Nullable(Float64), avg_loss Nullable(Float64),
            book LowCardinality(String) DEFAULT '',
            entry_ts DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(entry_ms),
            exit_ts DateTime64(3, 'UTC') ALIAS fromUnixTimestamp64Milli(exit_ms)
        ) ENGINE = ReplacingMergeTree ORDER BY signal_id""",
}

COLUMNS = {
    "audit_events": list(EVENT_COLUMNS),
    "filter_drops": list(DROP_COLUMNS),
    "executions": ["signal_id", "client_order_id", "kind", "venue", "symbol", "side", "quantity",
                   "price", "fee_usd", "order_id", "ts_ms"],
    "trades": ["signal_id", "source", "venue", "symbol", "side", "entry_ms", "exit_ms", "entry_price",
               "exit_price", "quantity", "fees_usd", "pnl_usd", "return_pct", "exit_reason",
               "expected_win_rate", "avg_win", "avg_loss"],
}


# The schema, as numbered steps: a store records each step it has taken in
# ``schema_migrations``, and ``connect`` takes the ones it has not, in order. Every step is
# safe to take twice (IF NOT EXISTS), so processes of a cluster starting at once against one
# server may both take a step and the store ends the same.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, list(DDL.values())),
    # stores made before books: every row so far is the one book's ("")
    (2, [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS book LowCardinality(String) DEFAULT ''"
         for table in DDL]),
]
VERSIONS_DDL = """
    CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_ms Int64)
    ENGINE = ReplacingMergeTree ORDER BY version"""


def migrate(client) -> list[int]:
    """Take every schema step the store has not recorded; the versions taken, in order."""
    client.command(VERSIONS_DDL)
    done = {v for (v,) in client.query("SELECT DISTINCT version FROM schema_migrations").result_rows}
    taken = []
    for version, statements in MIGRATIONS:
        if version in done:
            continue
        for sql in statements:
            client.command(sql)
        client.insert("schema_migrations", [[version, int(time.time() * 1000)]],
                      column_names=["version", "applied_ms"])
        taken.append(version)
    return taken


def connect(dsn: str):
    client = clickhouse_connect.get_client(dsn=dsn)
    migrate(client)
    return client


class AuditStore:
    """Batched writes of the four tables; one insert per table per batch."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.client = connect(dsn)
        # column types read once: without them every insert first asks the server to DESCRIBE
        rows = self.client.query(
            "SELECT table, name, type FROM system.columns WHERE database = currentDatabase()"
            " AND table IN {tables:Array(String)}", parameters={"tables": list(COLUMNS)}).result_rows
        known = {(t, n): ty for t, n, ty in rows}
        self.types = {t: [known[(t, c)] for c in cols] for t, cols in COLUMNS.items()}

    def write(self, rows: dict[str, list[list | dict[str, Any]]], book: str = "") -> None:
        """Rows are lists of values in ``COLUMNS`` order (events and drops) or objects keyed by
        column (executions and trades). ``book``: the book they are of, a column of its own
        (left to its default, "", for the one book of a pipeline without books)."""
        for table, items in rows.items():
            if not items:
                continue
            cols = COLUMNS[table]
            # by column: clickhouse-connect builds Native columns, and rows would be transposed
            # first, a good share of the insert's CPU; JSONEachRow parsed in ClickHouse cost more still
            data = list(zip(*(r if isinstance(r, list) else [r.get(c) for c in cols] for r in items)))
            if table == "audit_events":
                data[DETAILS] = [details_text(d) for d in data[DETAILS]]
            types = self.types[table]
            if book:
                data, cols, types = [*data, [book] * len(items)], [*cols, "book"], [*types, "LowCardinality(String)"]
            self.client.insert(table, data, column_names=cols, column_type_names=types, column_oriented=True)

    def query(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self.client.query(sql, parameters=parameters).result_rows

    def query_dicts(self, sql: str, parameters: dict | None = None) -> Iterable[dict]:
        res = self.client.query(sql, parameters=parameters)
        return (dict(zip(res.column_names, row)) for row in res.result_rows)

    def close(self) -> None:
        self.client.close()
