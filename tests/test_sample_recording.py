"""The bundled recordings/argus-sample.jsonl replays through the shipped pipeline.yaml."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dataflows.config import load
from helpers import audit_query, paper_orders, run_flow
from operators.signal import Invalid, parse_signal

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recordings" / "argus-sample.jsonl"
PRICES = REPO / "recordings" / "argus-prices.jsonl"


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    pipeline = load(REPO / "pipeline.yaml", env={"APEX_STATE_DIR": str(tmp_path_factory.mktemp("sample"))})
    col = run_flow(pipeline, SAMPLE)
    # outcomes of signal-stream entries (not exits on the clock, nor market-stream entries)
    own = [o for o in col.outcomes if o.stream_id and o.stream == "argus:signals:stream"]
    return pipeline, own


def test_every_entry_is_decided_once(replay):
    _, own = replay
    lines = [e for e in map(json.loads, SAMPLE.read_text().splitlines()) if e["stream"] == "argus:signals:stream"]
    assert len(lines) == 3000
    assert [o.stream_id for o in own] == [e["id"] for e in lines]
    assert all(o.terminal for o in own)


def test_outcome_counts(replay):
    """The README's `make run` summary: every outcome of the sample, counted as it states them."""
    _, own = replay
    assert Counter(o.outcome for o in own) == {"dropped": 1767, "filled": 963, "invalid": 120, "expired": 90,
                                               "duplicate": 60}


def test_invalid_kinds_in_the_sample(replay):
    _, own = replay
    kinds = Counter(o.reason.split(":")[0] + (":" + o.reason.split()[1].rstrip(":") if o.reason.startswith("schema")
                                               else "") for o in own if o.outcome == "invalid")
    assert kinds["payload_too_large"] == 5
    assert set(kinds) == {"payload_too_large", "not_json", "not_object", "missing payload field", "schema:confidence",
                          "schema:version", "schema:timestamp", "schema:signal_id", "schema:ttl_seconds",
                          "schema:venue"}


def test_no_signal_id_filled_twice(replay):
    pipeline, own = replay
    filled = [o.signal_id for o in own if o.outcome == "filled"]
    assert len(filled) == len(set(filled)) > 0
    assert paper_orders(pipeline)[0] >= len(filled)  # exits may add close orders, never a second open
    opens = audit_query(pipeline, "SELECT signal_id, count() FROM executions FINAL WHERE kind = 'open'"
                                  " GROUP BY signal_id HAVING count() > 1")
    assert opens == []
    assert audit_query(pipeline, "SELECT count() FROM executions FINAL WHERE kind = 'open'") == [(len(filled),)]


def test_each_duplicate_repeats_a_signal_id_decided_earlier(replay):
    _, own = replay
    first: dict[str, tuple[str, str]] = {}
    for o in own:
        if o.outcome == "duplicate":
            stream_id, outcome = first[o.signal_id]
            assert o.reason == f"signal_id decided at {stream_id} as {outcome}"
        elif o.outcome != "invalid":
            assert o.signal_id not in first
            first[o.signal_id] = (o.stream_id, o.outcome)


def test_expired_agrees_with_the_stream_clock(replay):
    _, own = replay
    expired = {o.stream_id for o in own if o.outcome == "expired"}
    seen, stale = set(), set()
    for line in SAMPLE.read_text().splitlines():
        e = json.loads(line)
        if e["stream"] != "argus:signals:stream":
            continue
        try:
            s = parse_signal(e["fields"].get("payload"))
        except Invalid:
            continue
        if s.signal_id in seen:
            continue
        seen.add(s.signal_id)
        if int(e["id"].split("-")[0]) - s.emitted_ms > s.ttl_seconds * 1000:
            stale.add(e["id"])
    assert expired == stale


def test_the_price_recording_fills_closes_and_realizes_what_the_readme_states(tmp_path):
    """The README's replay of recordings/argus-prices.jsonl: 291 fills; closes hard_stop 13,
    max_holding 94, regime_exit 152; realized PnL -2,704.39 USD, as the run's closes carry it
    and as the trades landed in ClickHouse."""
    pipeline = load(REPO / "pipeline.yaml", env={"APEX_STATE_DIR": str(tmp_path / "prices")})
    col = run_flow(pipeline, PRICES)
    closed = [o for o in col.outcomes if o.outcome == "closed"]
    assert sum(o.outcome == "filled" for o in col.outcomes) == 291
    assert Counter(o.reason for o in closed) == {"hard_stop": 13, "max_holding": 94, "regime_exit": 152}
    assert round(sum(t["pnl_usd"] for o in closed for t in o.trades), 2) == -2704.39
    (stored,) = audit_query(pipeline, "SELECT count(), round(sum(pnl_usd), 2) FROM trades FINAL")
    assert stored == (259, -2704.39)
