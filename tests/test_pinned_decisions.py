"""One book decides exactly as it did when these digests were taken: every decision, every
order and fill, every trade and every audit event of the bundled recordings, through the
shipped pipeline.yaml. Code may move (one engine per book, venues passed in); a digest that
changes means a decision changed, and that needs a reason, not a new digest.

To see what differs, print ``_rows(...)`` before and after the change and compare them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from dataflows.config import load
from helpers import audit_query, run_flow

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = {
    "argus-sample.jsonl": "d6ba953a497f84e5f83a5b57c21769d98fd7b9ce511c35193a8ed549bdbc3a60",
    "argus-prices.jsonl": "519a51597a03d16b5c979f3764cf116d294afe4378e30205e3b558739f259033",
}


def _rows(pipeline) -> dict[str, list]:
    """Everything a run decided, in a stable order, without the wall-clock columns."""
    db = sqlite3.connect(pipeline.ledger_path)
    try:
        out = {
            "decisions": db.execute("SELECT signal_id, stream_id, outcome, reason, ts_ms FROM decisions"
                                    " ORDER BY signal_id").fetchall(),
            "executions": db.execute("SELECT client_order_id, signal_id, kind, venue, symbol, side, quantity,"
                                     " status, order_id, price, fee_usd, filled_ms, reason FROM executions"
                                     " ORDER BY client_order_id").fetchall(),
            "trades": db.execute("SELECT signal_id, terms, status, won FROM trades ORDER BY signal_id").fetchall(),
        }
    finally:
        db.close()
    out["audit_events"] = audit_query(
        pipeline, "SELECT signal_id, stream_id, seq, stage, outcome, reason, ts_ms, source, venue, symbol,"
        " size_usd, details FROM audit_events FINAL ORDER BY stream_id, signal_id, seq")
    out["filter_drops"] = audit_query(
        pipeline, "SELECT signal_id, stream_id, filter, ts_ms, source, venue, symbol, confidence, regime"
        " FROM filter_drops FINAL ORDER BY stream_id")
    out["ch_trades"] = audit_query(
        pipeline, "SELECT signal_id, entry_ms, exit_ms, entry_price, exit_price, quantity, fees_usd, pnl_usd,"
        " exit_reason FROM trades FINAL ORDER BY signal_id")
    return out


def digest(rows: dict[str, list]) -> str:
    text = json.dumps({k: [list(r) for r in v] for k, v in rows.items()}, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("name", list(RECORDINGS))
def test_one_book_decides_exactly_as_before(tmp_path, name):
    """Promise: restructuring the engine changes no decision, order, trade or audit event."""
    pipeline = load(REPO / "pipeline.yaml", env={"APEX_STATE_DIR": str(tmp_path / "state")})
    run_flow(pipeline, REPO / "recordings" / name)
    rows = _rows(pipeline)
    assert all(rows[k] for k in ("decisions", "executions", "audit_events")), {k: len(v) for k, v in rows.items()}
    assert digest(rows) == RECORDINGS[name]
