"""Several books in one dataflow: each its own Bytewax key, its own NAV, filters, Kelly
state and ledger; a signal goes to the one book that takes it, a market entry to every
book, and an entry is acknowledged only once every book it reached has made it durable."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from bytewax.testing import cluster_main

from dataflows.apex import wire
from dataflows.config import ConfigError, parse
from helpers import Collector, audit_query, write_recording
from test_exits import signal, tick

T = 1767261600000
BOOKS = """
state_dir: {state}
books:
  big: {{takes: {{source: macro}}, initial_nav_usd: 1000000}}
  small: {{takes: {{source: trend_following}}, initial_nav_usd: 20000}}
stages:
  - filter: confidence
  - filter: concentration
    max_nav_fraction: 0.05
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: 0}}
"""


def from_source(n: int, ms: int, source: str, **kw) -> dict:
    e = signal(n, ms, "BTC-USDT", "buy", 100.0, **kw)
    doc = json.loads(e["fields"]["payload"])
    doc["source"] = source
    e["fields"]["payload"] = json.dumps(doc)
    return e


ENTRIES = [
    tick(T, "BTC-USDT", 100.0),
    from_source(1, T + 10, "macro"),  # big: 1% of its NAV
    from_source(2, T + 20, "trend_following"),  # small: 1% of its NAV
    from_source(3, T + 30, "macro", kelly=0.2),  # big: 5,000 of 1,000,000, within 5%
    from_source(4, T + 40, "trend_following", kelly=0.2),  # small: 4,000 of 20,000, past 5%
    from_source(5, T + 45, "smart_money"),  # no book takes it
    tick(T + 50, "BTC-USDT", 90.0, 1),  # through every trade's 5% stop, in both books
]


class DurableAcker:
    """The sink's acker: at the moment each entry is acknowledged, reads every book's
    ledger on connections of its own, to see what is durable then."""

    def __init__(self, ledgers: dict[str, Path]):
        self.ledgers = ledgers
        self.acked: list[str] = []
        self.seen: dict[str, dict] = {}

    def settle(self, outcomes) -> None:
        for o in outcomes:
            if not (o.terminal and o.stream_id):
                continue
            self.acked.append(o.stream_id)
            self.seen[o.stream_id] = {book: _ledger(path) for book, path in self.ledgers.items()}


def _ledger(path: Path) -> dict:
    if not path.exists():
        return {"decisions": {}, "trades": {}}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {"decisions": dict(db.execute("SELECT signal_id, outcome FROM decisions")),
                "trades": dict(db.execute("SELECT signal_id, status FROM trades"))}
    finally:
        db.close()


def test_two_books_under_two_workers(tmp_path):
    """Promise: each book's concentration limit applies to its own NAV, a tick for a symbol
    both hold marks both, and every entry is acknowledged once, only after every book it
    reached has made its outcome durable."""
    p = parse(BOOKS.format(state=tmp_path / "state"), tmp_path / "pipeline.yaml", {})
    rec = write_recording(tmp_path / "rec.jsonl", ENTRIES)
    acker, obs = DurableAcker({b.book: b.ledger_path for b in p.books}), Collector()
    flow, _ = wire(p, source=f"recording:{rec}", observer=obs, acker=acker)
    cluster_main(flow, [], 0, worker_count_per_proc=2)

    big, small = (_ledger(b.ledger_path) for b in p.books)
    assert big["decisions"] == {"t1": "filled", "t3": "filled", "t5": "dropped"}
    assert small["decisions"] == {"t2": "filled", "t4": "dropped"}
    drops = {o.signal_id: o.reason for o in obs.outcomes if o.outcome == "dropped"}
    assert drops == {"t4": "concentration", "t5": "no_book"}
    # the 10% fall marked both books: every trade in each closed on its hard stop
    assert big["trades"] == {"t1": "closed", "t3": "closed"} and small["trades"] == {"t2": "closed"}
    closes = sorted(o.signal_id for o in obs.outcomes if o.outcome == "closed")
    assert closes == ["t1", "t2", "t3"]

    assert sorted(acker.acked) == sorted(e["id"] for e in ENTRIES), "each entry acknowledged exactly once"
    for entry, book in zip(ENTRIES[1:6], ("big", "small", "big", "small", "big")):
        sid = json.loads(entry["fields"]["payload"])["signal_id"]
        assert sid in acker.seen[entry["id"]][book]["decisions"], f"{sid} acknowledged before its decision was durable"
    at_fall = acker.seen[f"{T + 50}-1"]
    assert at_fall["big"]["trades"] == {"t1": "closed", "t3": "closed"}
    assert at_fall["small"]["trades"] == {"t2": "closed"}


def test_audit_rows_carry_their_book(tmp_path):
    p = parse(BOOKS.format(state=tmp_path / "state"), tmp_path / "pipeline.yaml", {})
    rec = write_recording(tmp_path / "rec.jsonl", ENTRIES)
    flow, _ = wire(p, source=f"recording:{rec}")
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    events = audit_query(p, "SELECT DISTINCT signal_id, book FROM audit_events FINAL WHERE signal_id != ''")
    assert dict(events) == {"t1": "big", "t2": "small", "t3": "big", "t4": "small", "t5": "big"}
    assert dict(audit_query(p, "SELECT signal_id, book FROM trades FINAL")) == {"t1": "big", "t2": "small",
                                                                               "t3": "big"}
    assert dict(audit_query(p, "SELECT signal_id, book FROM filter_drops FINAL")) == {"t4": "small", "t5": "big"}


def test_a_book_with_its_own_stages_uses_them(tmp_path):
    """The small book's own confidence floor refuses what the pipeline's stages would take."""
    text = BOOKS.format(state=tmp_path / "state").replace(
        "small: {takes: {source: trend_following}, initial_nav_usd: 20000}",
        "small:\n    takes: {source: trend_following}\n    initial_nav_usd: 20000\n    stages:\n"
        "      - filter: confidence\n        min: 0.95\n      - size: kelly\n      - execute: {venue: paper}")
    p = parse(text, tmp_path / "pipeline.yaml", {})
    obs = Collector()
    flow, _ = wire(p, source=f"recording:{write_recording(tmp_path / 'rec.jsonl', ENTRIES[:3])}", observer=obs)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert {o.signal_id: (o.outcome, o.reason) for o in obs.outcomes if o.signal_id} == {
        "t1": ("filled", ""), "t2": ("dropped", "confidence")}


@pytest.mark.parametrize("books,error", [
    ("books: {}", "books: declare at least one book"),
    ("books:\n  all: {}\n  late: {takes: {venue: okx}}", "books.late: never reached: books.all takes every signal"),
    ("books:\n  Bad Name: {}", "books.Bad Name"),
    ("books:\n  a: {takes: {market: okx}}", "books.a.takes.market: extra inputs are not permitted"),
    ("books:\n  a:\n    stages: [{filter: nope}]", "books.a.stages[0].filter: unknown filter 'nope'"),
    ("books:\n  a: {initial_nav_usd: -1}", "books.a.initial_nav_usd: input should be greater than 0"),
    ("books:\n  a: {takes: {venue: kraken}}", "books.a.takes.venue[0]: input should be 'okx' or 'ibkr'"),
])
def test_a_broken_books_section_is_refused_with_its_paths(tmp_path, books, error):
    text = "stages:\n  - size: kelly\n  - execute: {venue: paper}\n" + books + "\n"
    with pytest.raises(ConfigError) as got:
        parse(text, tmp_path / "pipeline.yaml", {})
    assert any(line.startswith(error) for line in got.value.errors), got.value.errors
