"""The dataflow over a hand-made recording: the outcome of every entry, the audit
trail in ClickHouse, and the `apex run` / `apex audit` commands over the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import apex.cli
from dataflows.config import parse
from helpers import DROP, audit_query, entry, paper_orders, payload, pipeline_yaml, run_flow, sig, write_recording

APEX = str(Path(sys.executable).with_name("apex"))
OKX_UNIVERSE = "# okx pairs for the test\nBTC-USDT\nETH-USDT\nSOL-USDT\nDOGE-USDT\nXRP-USDT\n"
FILTERS = """\
  - filter: confidence
    min: 0.65
  - filter: regime_compatibility
    incompatible:
      trend_following: [choppy]
      mean_reversion: [trending_up, trending_down]
  - filter: symbol_universe
    universe:
      okx: universe/okx.txt
      ibkr: [AAPL, MSFT, SPY]
  - filter: concentration
    max_nav_fraction: 0.05
  - filter: margin
    initial_margin_rate: 0.5
    max_utilization: 0.01
"""

# NAV 1,000,000, no fees, no slippage: concentration limit 50,000 per symbol; ibkr margin
# proposed x 0.5 <= 0.01 x (NAV - 0.5 x sum|ibkr|). Every signal is emitted at
# 2026-01-01T10:00:00.000Z (1767261600000) with ttl 300 s unless it says otherwise.
V11 = sig("v11-aapl", version="1.1", regime_change_alert=True, venue="ibkr", symbol="AAPL",
          reference_price=200.0, argus_build="1.84.2")
V11["exit_rules"]["trailing_stop_pct"] = 0.02
NAIVE = sig("bad-naive-ts", timestamp="2026-01-01T10:00:00")
OVERSIZE = sig("bad-oversize", debug_blob="x" * (65 * 1024))
NO_ID = sig(DROP)

# (stream id, fields, signal_id recorded, outcome, reason or its beginning for invalid)
CASES: list[tuple[str, dict, str, str, str]] = [
    ("1767261601000-0", {"payload": payload(sig("fill-btc"))}, "fill-btc", "filled", ""),
    ("1767261602000-0", {"payload": payload(sig("fill-aapl", venue="ibkr", symbol="AAPL", reference_price=200.0))},
     "fill-aapl", "filled", ""),
    ("1767261603000-0", {"payload": payload(sig("low-conf", confidence=0.6499))}, "low-conf", "dropped", "confidence"),
    ("1767261604000-0", {"payload": payload(sig("conf-edge", confidence=0.65, symbol="DOGE-USDT",
                                                reference_price=0.25))}, "conf-edge", "filled", ""),
    ("1767261605000-0", {"payload": payload(sig("trend-choppy", source="trend_following", regime="choppy"))},
     "trend-choppy", "dropped", "regime_compatibility"),
    ("1767261606000-0", {"payload": payload(sig("mr-up", source="mean_reversion", regime="trending_up"))},
     "mr-up", "dropped", "regime_compatibility"),
    ("1767261607000-0", {"payload": payload(sig("mr-down", source="mean_reversion", regime="trending_down"))},
     "mr-down", "dropped", "regime_compatibility"),
    ("1767261608000-0", {"payload": payload(sig("caution-choppy", source="regime_caution", regime="choppy"))},
     "caution-choppy", "filled", ""),
    ("1767261609000-0", {"payload": payload(sig("out-okx", symbol="PEPE-USDT", reference_price=0.00001))},
     "out-okx", "dropped", "symbol_universe"),
    ("1767261610000-0", {"payload": payload(sig("out-ibkr", venue="ibkr", symbol="GME", reference_price=20.0))},
     "out-ibkr", "dropped", "symbol_universe"),
    ("1767261611000-0", {"payload": payload(sig("eth-40k", symbol="ETH-USDT", reference_price=2000.0,
                                                suggested_kelly=0.05, max_position_usd=40000.0))},
     "eth-40k", "filled", ""),
    # 40,000 held + 10,000 proposed = exactly 5% of NAV: passes
    ("1767261612000-0", {"payload": payload(sig("eth-edge", symbol="ETH-USDT", reference_price=2000.0,
                                                max_position_usd=10000.0))}, "eth-edge", "filled", ""),
    ("1767261613000-0", {"payload": payload(sig("eth-over", symbol="ETH-USDT", reference_price=2000.0,
                                                max_position_usd=100.0))}, "eth-over", "dropped", "concentration"),
    ("1767261614000-0", {"payload": payload(sig("sol-short", symbol="SOL-USDT", side="sell", reference_price=50.0,
                                                suggested_kelly=0.05, max_position_usd=40000.0))},
     "sol-short", "filled", ""),
    # |-40,000| + 20,000 > 50,000 (signed it would pass)
    ("1767261615000-0", {"payload": payload(sig("sol-buy", symbol="SOL-USDT", reference_price=50.0,
                                                suggested_kelly=0.05, max_position_usd=20000.0))},
     "sol-buy", "dropped", "concentration"),
    # 30,000 x 0.5 = 15,000 > 0.01 x (1,000,000 - 0.5 x 5,000) = 9,975
    ("1767261616000-0", {"payload": payload(sig("msft-margin", venue="ibkr", symbol="MSFT", reference_price=400.0,
                                                suggested_kelly=0.05, max_position_usd=30000.0))},
     "msft-margin", "dropped", "margin"),
    # the same size on okx: margin does not apply
    ("1767261617000-0", {"payload": payload(sig("doge-big", symbol="DOGE-USDT", reference_price=0.25,
                                                suggested_kelly=0.05, max_position_usd=30000.0))},
     "doge-big", "filled", ""),
    ("1767261618000-0", {"payload": payload(sig("spy-min", venue="ibkr", symbol="SPY", reference_price=10000.0))},
     "spy-min", "dropped", "min_size"),
    ("1767261619000-0", {"payload": payload(sig("btc-dust", max_position_usd=0.0000001))},
     "btc-dust", "dropped", "min_size"),
    # no reference price: priced at the book's mark of BTC-USDT (the last fill, 100)
    ("1767261620000-0", {"payload": payload(sig("btc-mark", reference_price=DROP))}, "btc-mark", "filled", ""),
    ("1767261621000-0", {"payload": payload(V11)}, "v11-aapl", "filled", ""),
    ("1767261630000-0", {"payload": payload(sig("ttl-edge", ttl_seconds=30, symbol="XRP-USDT", reference_price=2.0))},
     "ttl-edge", "filled", ""),
    ("1767261630001-0", {"payload": payload(sig("ttl-over", ttl_seconds=30, symbol="XRP-USDT", reference_price=2.0))},
     "ttl-over", "expired", "ttl"),
    ("1767261631000-0", {"payload": payload(sig("fill-btc"))}, "fill-btc", "duplicate",
     "signal_id decided at 1767261601000-0 as filled"),
    ("1767261632000-0", {"payload": payload(sig("low-conf", confidence=0.6499))}, "low-conf", "duplicate",
     "signal_id decided at 1767261603000-0 as dropped"),
    ("1767261633000-0", {"payload": payload(sig("ttl-over", ttl_seconds=30, symbol="XRP-USDT", reference_price=2.0))},
     "ttl-over", "duplicate", "signal_id decided at 1767261630001-0 as expired"),
    ("1767261640000-0", {"payload": payload(sig("bad-json"))[:100]}, "", "invalid", "not_json:"),
    ("1767261641000-0", {"payload": payload([sig("bad-array")])}, "", "invalid", "not_object:"),
    ("1767261642000-0", {"payload": payload(sig("bad-conf-str", confidence="0.8"))}, "bad-conf-str", "invalid",
     "schema: confidence:"),
    ("1767261643000-0", {"payload": payload(sig("bad-conf-bool", confidence=True))}, "bad-conf-bool", "invalid",
     "schema: confidence:"),
    ("1767261644000-0", {"payload": payload(sig("bad-conf-nan", confidence=float("nan")))}, "bad-conf-nan",
     "invalid", "schema: confidence:"),
    ("1767261645000-0", {"payload": payload(sig("bad-conf-range", confidence=1.01))}, "bad-conf-range", "invalid",
     "schema: confidence:"),
    ("1767261646000-0", {"payload": payload(sig("bad-version", version="2.0"))}, "bad-version", "invalid",
     "schema: version:"),
    ("1767261647000-0", {"payload": payload(NAIVE)}, "bad-naive-ts", "invalid", "schema: timestamp:"),
    ("1767261648000-0", {"payload": payload(NO_ID)}, "", "invalid", "schema: signal_id: Field required"),
    ("1767261649000-0", {"payload": payload(sig("L" * 129))}, "", "invalid", "schema: signal_id:"),
    ("1767261650000-0", {"payload": payload(sig("bad-ttl", ttl_seconds=0))}, "bad-ttl", "invalid",
     "schema: ttl_seconds:"),
    ("1767261651000-0", {"payload": payload(sig("bad-venue", venue="binance"))}, "bad-venue", "invalid",
     "schema: venue:"),
    ("1767261652000-0", {"payload": payload(OVERSIZE)}, "", "invalid", "payload_too_large:"),
    ("1767261653000-0", {"data": payload(sig("bad-no-payload"))}, "", "invalid", "missing payload field"),
    # redeliveries of earlier entries (same stream id): their own outcome again, never a duplicate
    ("1767261602000-0", {"payload": payload(sig("fill-aapl", venue="ibkr", symbol="AAPL", reference_price=200.0))},
     "fill-aapl", "filled", ""),
    ("1767261603000-0", {"payload": payload(sig("low-conf", confidence=0.6499))}, "low-conf", "dropped", "confidence"),
]

FILLED = [c[2] for c in CASES[:-2] if c[3] == "filled"]
FILTER_DROPS = {(c[2], c[4]) for c in CASES if c[3] == "dropped" and c[4] not in ("min_size", "no_price")}
SIX_STAGES = ["SIGNAL_RECEIVED", "FILTER_CHECK", "POSITION_SIZING", "EXECUTION_ATTEMPT", "EXECUTION_CONFIRMED",
              "TRADE_OPEN"]


def _setup(root: Path) -> tuple[Path, Path]:
    (root / "universe").mkdir(parents=True)
    (root / "universe" / "okx.txt").write_text(OKX_UNIVERSE)
    yaml_path = root / "pipeline.yaml"
    yaml_path.write_text(pipeline_yaml(root / "state", FILTERS))
    rec = write_recording(root / "handmade.jsonl", [entry(sid, fields) for sid, fields, *_ in CASES])
    return yaml_path, rec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("handmade")
    yaml_path, rec = _setup(root)
    pipeline = parse(yaml_path.read_text(), yaml_path, {})
    return pipeline, run_flow(pipeline, rec)


def test_every_entry_has_its_expected_outcome(run):
    _, col = run
    got = [(o.stream_id, o.signal_id, o.outcome, o.reason) for o in col.outcomes]
    want = [(sid, signal_id, outcome, reason) for sid, _, signal_id, outcome, reason in CASES]
    assert len(got) == len(want) == 42
    for g, w in zip(got, want):
        if w[2] == "invalid":
            assert g[:3] == w[:3], (g, w)
            assert g[3].startswith(w[3]), (g, w)
        else:
            assert g == w
    assert all(o.terminal for o in col.outcomes)


def test_fills_happened_once_each_on_the_paper_venue(run):
    pipeline, col = run
    assert paper_orders(pipeline) == (11, 0)
    executed = [x["signal_id"] for o in col.outcomes for x in o.executions]
    assert sorted(executed) == sorted(FILLED)


def test_fills_have_the_expected_quantities(run):
    _, col = run
    confirmed = {o.signal_id: o.events[4] for o in col.outcomes if o.outcome == "filled" and o.executions}
    qty = {sid: ev.details["quantity"] for sid, ev in confirmed.items()}
    assert qty == {"fill-btc": 50.0, "fill-aapl": 25.0, "conf-edge": 20000.0, "caution-choppy": 50.0,
                   "eth-40k": 20.0, "eth-edge": 5.0, "sol-short": 800.0, "doge-big": 120000.0,
                   "btc-mark": 50.0, "v11-aapl": 25.0, "ttl-edge": 2500.0}
    assert confirmed["btc-mark"].details["price"] == 100.0
    assert confirmed["sol-short"].details["price"] == 50.0
    assert all(ev.details["resolved_without_send"] is False for ev in confirmed.values())


def test_v11_signal_records_its_unknown_fields(run):
    _, col = run
    received = next(o for o in col.outcomes if o.signal_id == "v11-aapl").events[0]
    assert received.stage == "SIGNAL_RECEIVED"
    assert received.details["version"] == "1.1"
    assert sorted(received.details["unknown_fields"]) == ["argus_build", "exit_rules.trailing_stop_pct"]


def test_clickhouse_holds_the_six_stages_of_a_fill_in_order(run):
    pipeline, _ = run
    rows = audit_query(pipeline, "SELECT stream_id, seq, stage, outcome, ts, size_usd FROM audit_events FINAL"
                                 " WHERE signal_id = {s:String} ORDER BY stream_id, seq", {"s": "fill-btc"})
    first = [r for r in rows if r[0] == "1767261601000-0"]
    assert [(r[1], r[2], r[3]) for r in first] == [
        (0, "SIGNAL_RECEIVED", "received"), (1, "FILTER_CHECK", "passed"), (2, "POSITION_SIZING", "sized"),
        (3, "EXECUTION_ATTEMPT", "sent"), (4, "EXECUTION_CONFIRMED", "filled"), (5, "TRADE_OPEN", "opened")]
    assert {int(r[4].timestamp() * 1000) for r in first} == {1767261601000}
    dup = [r for r in rows if r[0] == "1767261631000-0"]
    assert [(r[2], r[3]) for r in dup] == [("SIGNAL_RECEIVED", "duplicate")]


def test_clickhouse_position_sizing_carries_size_and_factors(run):
    pipeline, _ = run
    (size_usd, details), = audit_query(
        pipeline, "SELECT size_usd, details FROM audit_events FINAL WHERE signal_id = 'eth-40k'"
                  " AND stage = 'POSITION_SIZING'")
    assert size_usd == 40000.0
    assert json.loads(details) == {
        "suggested_kelly": 0.05, "vol": 0.0, "vol_factor": 1.0, "drawdown": 0.0, "drawdown_factor": 1.0,
        "tracker_multiplier": 1.0, "kelly": 0.05, "nav": 1000000.0, "cap_usd": 40000.0, "price": 2000.0,
        "quantity": 20.0,
    }


def test_clickhouse_min_size_is_a_sizing_drop_not_a_filter_drop(run):
    pipeline, _ = run
    rows = audit_query(pipeline, "SELECT stage, outcome, reason, size_usd FROM audit_events FINAL"
                                 " WHERE signal_id = 'spy-min' ORDER BY seq")
    assert rows == [("SIGNAL_RECEIVED", "received", "", None), ("FILTER_CHECK", "passed", "", None),
                    ("POSITION_SIZING", "dropped", "min_size", 5000.0)]


def test_clickhouse_filter_drops_hold_every_filter_drop(run):
    pipeline, _ = run
    rows = audit_query(pipeline, "SELECT signal_id, filter, stream_id, confidence, regime FROM filter_drops FINAL")
    assert {(r[0], r[1]) for r in rows} == FILTER_DROPS
    assert len(rows) == len(FILTER_DROPS) == 9
    low = next(r for r in rows if r[0] == "low-conf")
    assert (low[2], low[3], low[4]) == ("1767261603000-0", 0.6499, "trending_up")
    events = audit_query(pipeline, "SELECT signal_id, reason FROM audit_events FINAL"
                                   " WHERE stage = 'FILTER_CHECK' AND outcome = 'dropped'")
    assert set(events) == FILTER_DROPS


def test_clickhouse_executions_and_invalid_and_expired(run):
    pipeline, _ = run
    ex = audit_query(pipeline, "SELECT signal_id FROM executions FINAL")
    assert sorted(r[0] for r in ex) == sorted(FILLED)
    invalid = audit_query(pipeline, "SELECT count(), countIf(reason = '') FROM audit_events FINAL"
                                    " WHERE stage = 'SIGNAL_RECEIVED' AND outcome = 'invalid'")
    assert invalid == [(14, 0)]
    expired = audit_query(pipeline, "SELECT signal_id, reason FROM audit_events FINAL WHERE outcome = 'expired'")
    assert expired == [("ttl-over", "ttl")]


def test_clickhouse_redelivery_rewrites_rather_than_adds_rows(run):
    pipeline, _ = run
    rows = audit_query(pipeline, "SELECT stage FROM audit_events FINAL WHERE signal_id = 'fill-aapl' ORDER BY seq")
    assert [r[0] for r in rows] == SIX_STAGES


# --- the CLI over the same recording ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    yaml_path, rec = _setup(root)
    state = root / "cli-state"
    summary = root / "summary.json"
    res = CliRunner().invoke(apex.cli.app, [
        "run", str(yaml_path), "--source", f"recording:{rec}", "--state-dir", str(state), "--no-progress",
        "--json", str(summary)], env={"APEX_ENV": None})
    return res, state, summary


def test_cli_run_summary(cli_run):
    res, state, summary = cli_run
    assert res.exit_code == 0, res.output
    s = json.loads(summary.read_text())
    # 42 deliveries of 40 entries: the two redelivered ones (fill-aapl, low-conf) count once each
    assert s["entries"] == 40
    assert s["outcomes"] == {"filled": 11, "dropped": 11, "invalid": 14, "duplicate": 3, "expired": 1}
    assert (s["decided_now"], s["already_decided"], s["errors"]) == (40, {}, 0)
    assert s["fills"] == 11
    assert s["filter_drop_rate"] == {"confidence": 1 / 22, "regime_compatibility": 3 / 22, "symbol_universe": 2 / 22,
                                     "concentration": 2 / 22, "margin": 1 / 22, "min_size": 2 / 22}
    assert "40 entries in" in res.output
    assert "decided now 40 · already decided 0" in res.output
    assert (state / "ledger.sqlite").exists() and (state / "clickhouse").is_dir()


def test_cli_audit_one_signal_jsonl(cli_run):
    _, state, _ = cli_run
    res = CliRunner().invoke(apex.cli.app, ["audit", "--state-dir", str(state), "fill-btc", "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["stream_id"], r["stage"]) for r in rows] == [("1767261601000-0", s) for s in SIX_STAGES] + [
        ("1767261631000-0", "SIGNAL_RECEIVED")]
    sizing = rows[2]
    assert sizing["size_usd"] == 5000.0
    assert sizing["details"]["quantity"] == 50.0
    assert rows[0]["ts"].startswith("2026-01-01T10:00:01")
    assert rows[-1]["outcome"] == "duplicate"


def test_cli_audit_every_event_jsonl(cli_run):
    _, state, _ = cli_run
    res = CliRunner().invoke(apex.cli.app, ["audit", "--state-dir", str(state), "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    # 11 fills x 6, 2 min_size x 3, 9 filter drops x 2, 14 invalid + 3 duplicate + 1 expired x 1
    assert len(rows) == 66 + 6 + 18 + 18
    assert Counter(r["stage"] for r in rows) == {"SIGNAL_RECEIVED": 40, "FILTER_CHECK": 22, "POSITION_SIZING": 13,
                                                  "EXECUTION_ATTEMPT": 11, "EXECUTION_CONFIRMED": 11, "TRADE_OPEN": 11}


def test_cli_audit_table(cli_run):
    """The table of one signal's chain shows every stage and the sizes, at a width the test sets:
    a process of its own, whatever COLUMNS the test run itself was started with."""
    _, state, _ = cli_run
    res = subprocess.run([APEX, "audit", "--state-dir", str(state), "eth-40k"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})
    assert res.returncode == 0, res.stdout + res.stderr
    for stage in SIX_STAGES:
        assert stage in res.stdout
    assert "40,000.00" in res.stdout


def test_cli_audit_unknown_signal_and_missing_state(cli_run, tmp_path):
    _, state, _ = cli_run
    res = CliRunner().invoke(apex.cli.app, ["audit", "--state-dir", str(state), "no-such-signal"])
    assert res.exit_code == 1
    assert "no audit events for signal_id 'no-such-signal'" in " ".join(res.output.split())
    res = CliRunner().invoke(apex.cli.app, ["audit", "--state-dir", str(tmp_path / "empty")])
    assert res.exit_code == 1
    assert "no audit trail under" in " ".join(res.output.split())


# --- no price at all ------------------------------------------------------------------------------

def test_signal_without_reference_price_or_mark_is_dropped_no_price(tmp_path):
    from helpers import make_pipeline, run_entries

    p = make_pipeline(tmp_path, "  - filter: confidence\n")
    col = run_entries(tmp_path, p, [
        entry("1767261601000-0", signal_id="msft-no-price", venue="ibkr", symbol="MSFT", reference_price=DROP),
        entry("1767261602000-0", signal_id="after", venue="ibkr", symbol="MSFT", reference_price=400.0),
    ])
    assert col.table() == [("1767261601000-0", "dropped", "no_price"), ("1767261602000-0", "filled", "")]
    sizing = col.outcomes[0].events[2]
    assert (sizing.stage, sizing.outcome, sizing.reason) == ("POSITION_SIZING", "dropped", "no_price")
    assert paper_orders(p) == (1, 0)
