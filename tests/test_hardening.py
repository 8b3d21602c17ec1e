"""Hostile numbers and clocks: a market entry, a reference price or a duration that no
real market or producer sends is refused with its reason and never reaches the book,
and nothing that can fail is left between recording a decision and recording its order.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.clickhouse import AuditStore
from connectors.ledger import Ledger
from dataflows.config import ConfigError, parse
from operators.limits import Limits, PriceGuard
from operators.signal import Invalid, parse_signal
from tests.helpers import paper_orders, sig
from tests.test_exits import PRICES, T0, _iso, replay, signal, tick

HOSTILE = ["1e308", "1e-300", "inf", "-inf", "nan", "0", "-5", "1e400", "abc", "", "5e-324", "1", "1e6"]


def _finite_everywhere(state) -> None:
    """Every number the run left in the ledger and in the audit store is finite."""
    db = sqlite3.connect(state / "ledger.sqlite")
    for q in ("SELECT quantity, price, fee_usd FROM executions", "SELECT terms FROM trades"):
        for row in db.execute(q):
            for v in row:
                if isinstance(v, str):
                    v = [x for x in json.loads(v).values() if isinstance(x, float)]
                for x in v if isinstance(v, list) else [v]:
                    assert x is None or math.isfinite(x), (q, row)
    db.close()
    store = AuditStore(f"chdb://{state / 'clickhouse'}")
    try:
        for q in ("SELECT quantity, price, fee_usd FROM executions FINAL",
                  "SELECT entry_price, exit_price, quantity, fees_usd, pnl_usd, return_pct FROM trades FINAL",
                  "SELECT size_usd FROM audit_events FINAL WHERE size_usd IS NOT NULL"):
            for row in store.query(q):
                assert all(math.isfinite(x) for x in row), (q, row)
    finally:
        store.close()


def test_hostile_ticks_are_refused_and_never_mark_the_book_or_close_a_trade(tmp_path):
    """Promise: a market entry must be finite, positive and inside the band around its
    symbol's last accepted mark; anything else is recorded as an invalid market entry
    and neither marks the book nor triggers an exit (issue 16, item 1)."""
    entries = [signal(1, T0, "TSLA", "buy", 100.0, stop=0.05, venue="ibkr")]
    entries += [tick(T0 + 10 + i, "TSLA", p) for i, p in enumerate(HOSTILE)]
    entries += [tick(T0 + 100, "TSLA", 99.0), tick(T0 + 200, "TSLA", 94.0)]  # the stop, from a real price
    seen, trades, _, closed, state = replay(tmp_path, entries)
    refused = [o for o in seen if o.outcome == "invalid_tick"]
    assert [o.stream_id for o in refused] == [f"{T0 + 10 + i}-0" for i in range(len(HOSTILE))]
    assert all(o.reason for o in refused)
    assert any("limits.price_band" in o.reason for o in refused)  # 1 and 1e6 are plausible prices, not here
    assert trades["t1"]["exit_reason"] == "hard_stop"
    assert trades["t1"]["exit_price"] == 94.0  # closed by the real price, not by 1e308 or 1e-300
    assert [c["stream_id"] for c in closed] == [f"{T0 + 200}-0"]
    _finite_everywhere(state)


def test_a_refused_tick_is_in_the_audit_trail_with_its_reason_price_and_mark(tmp_path):
    entries = [signal(1, T0, "TSLA", "buy", 100.0, venue="ibkr"), tick(T0 + 10, "TSLA", "1e308"),
               tick(T0 + 20, "TSLA", 1.0)]
    _, _, _, _, state = replay(tmp_path, entries)
    store = AuditStore(f"chdb://{state / 'clickhouse'}")
    rows = list(store.query_dicts("SELECT stream_id, outcome, reason, symbol, details FROM audit_events FINAL"
                                  " WHERE outcome = 'invalid_tick' ORDER BY stream_id"))
    store.close()
    assert [(r["stream_id"], r["outcome"]) for r in rows] == [(f"{T0 + 10}-0", "invalid_tick"),
                                                               (f"{T0 + 20}-0", "invalid_tick")]
    assert "limits.max_price" in rows[0]["reason"]
    assert json.loads(rows[1]["details"]) == {"price": 1.0, "mark": 100.0}
    assert rows[1]["symbol"] == "TSLA"


def test_a_real_gap_moves_the_mark_once_enough_ticks_agree(tmp_path):
    """A market that really moved past the band is not frozen at a stale mark: the
    confirming tick marks the book and fires the stop it hits."""
    entries = [signal(1, T0, "ETH-USDT", "sell", 100.0, stop=0.5),
               tick(T0 + 10, "ETH-USDT", 300.0), tick(T0 + 20, "ETH-USDT", 310.0),
               tick(T0 + 30, "ETH-USDT", 305.0)]
    seen, trades, _, _, _ = replay(tmp_path, entries)
    outcomes = [o.outcome for o in seen if o.stream_id.startswith(str(T0 + 10)[:-2]) and o.signal_id == ""]
    assert outcomes == ["invalid_tick", "invalid_tick", "tick"]
    assert trades["t1"]["exit_price"] == 305.0


def test_price_guard_confirmation_needs_agreeing_ticks_in_a_row():
    g = PriceGuard(Limits(price_band=2.0, band_confirm_ticks=3))
    assert g.check("X", 100.0, None) is None
    assert g.check("X", 300.0, 100.0) and g.check("X", 301.0, 100.0)
    assert g.check("X", 100.5, 100.0) is None  # back in the band: the run is broken
    assert g.check("X", 300.0, 100.0) and g.check("X", 900.0, 100.0)  # 3x apart: a new run
    assert g.check("X", 901.0, 100.0)
    assert g.check("X", 902.0, 100.0) is None
    never = PriceGuard(Limits(band_confirm_ticks=0))
    assert all(never.check("X", 300.0, 100.0) for _ in range(10))
    assert PriceGuard(Limits()).check("X", 1e308, 100.0)  # out of range: never confirmed


@pytest.mark.parametrize("venue,symbol", [("ibkr", "AAPL"), ("okx", "BTC-USDT")])
@pytest.mark.parametrize("ref", [1e-300, 5e-324, 1e12, 1e300])
def test_an_absurd_reference_price_with_no_mark_is_dropped_not_sized(tmp_path, venue, symbol, ref):
    """Issue 16, item 2: 1e-300 filled 5.25e303 shares on IBKR and overflowed on OKX."""
    seen, trades, sizing, _, state = replay(tmp_path, [signal(1, T0, symbol, "buy", ref, venue=venue)])
    (own,) = [o for o in seen if o.signal_id == "t1"]
    assert (own.outcome, own.reason) == ("dropped", "price_band")
    # the audit trail says which price was refused, and that there was no mark to hold it to
    assert (sizing["t1"]["price"], sizing["t1"]["mark"]) == (ref, None)
    assert sizing["t1"]["why"].startswith("price_band: ") and "limits.m" in sizing["t1"]["why"]
    assert paper_orders(_pipeline_at(state)) == (0, 0)
    _finite_everywhere(state)


def test_a_reference_price_far_from_the_mark_is_dropped(tmp_path):
    entries = [tick(T0, "BTC-USDT", 100.0), signal(1, T0 + 10, "BTC-USDT", "buy", 1.0),
               signal(2, T0 + 20, "BTC-USDT", "buy", 101.0)]
    seen, _, sizing, _, _ = replay(tmp_path, entries)
    assert [(o.signal_id, o.outcome, o.reason) for o in seen if o.signal_id] == [
        ("t1", "dropped", "price_band"), ("t2", "filled", "")]
    # the refused reference price and the mark it was held to, not the 0.0 nothing was sized at
    assert (sizing["t1"]["price"], sizing["t1"]["mark"]) == (1.0, 100.0)
    assert sizing["t1"]["why"] == "price_band: 1 is more than 2x from the last mark 100 (limits.price_band)"
    # every order: quantity x price = size_usd <= max_position_usd, finite and positive
    s = sizing["t2"]
    assert 0 < s["quantity"] and math.isclose(s["quantity"] * s["price"], s["size_usd"], rel_tol=1e-6)
    assert s["size_usd"] <= 10_000.0


@pytest.mark.parametrize("path,value", [
    ("holding_period_hours", 1e308), ("holding_period_hours", 1e16),
    ("exit_rules.max_holding_hours", 1e308), ("ttl_seconds", 10**12), ("max_position_usd", 1e308),
    ("backtest_stats.trades", 10**30), ("signal_id", "id\x1b[2J"), ("symbol", "BTC\x1b[2J"),
    ("symbol", "B" * 65), ("signal_id", "a\x00b"), ("signal_id", "a\x9bb"),
])
def test_schema_bounds_refuse_extreme_durations_sizes_and_control_characters(path, value):
    doc = sig("s1")
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(Invalid) as e:
        parse_signal(json.dumps(doc))
    assert path in e.value.reason


def test_an_out_of_bounds_holding_period_is_invalid_and_a_corrected_republish_trades(tmp_path):
    """Promise: an invalid payload is decided per stream entry, not per signal_id, so a
    corrected re-publish under the same id is traded. (Issue 16, item 3: 1e308 hours
    overflowed after "sent" was recorded, the entry was dead-lettered, and the corrected
    re-publish was called a duplicate.)"""
    bad = signal(1, T0, "BTC-USDT", "buy", 100.0)
    doc = json.loads(bad["fields"]["payload"])
    doc["holding_period_hours"] = 1e308
    bad["fields"]["payload"] = json.dumps(doc)
    seen, trades, _, _, state = replay(tmp_path, [bad, signal(1, T0 + 10, "BTC-USDT", "buy", 100.0)])
    assert [(o.signal_id, o.outcome) for o in seen if o.signal_id] == [("t1", "invalid"), ("t1", "filled")]
    assert paper_orders(_pipeline_at(state)) == (1, 0)


def test_a_failure_writing_the_intent_leaves_no_sent_decision_behind(tmp_path):
    """Whatever fails between deciding to send and recording the order, no decision says
    "sent" without the order behind it: the entry stays pending, and its redelivery is
    decided and sent exactly once."""
    state = tmp_path / "state"
    Ledger(state / "ledger.sqlite").close()
    db = sqlite3.connect(state / "ledger.sqlite")
    db.execute("CREATE TRIGGER no_intents BEFORE INSERT ON executions BEGIN"
               " SELECT RAISE(ABORT, 'disk says no'); END")
    db.commit()
    entries = [signal(1, T0, "BTC-USDT", "buy", 100.0)]
    seen, _, _, _, _ = replay(tmp_path, entries)
    (own,) = [o for o in seen if o.signal_id == "t1"]
    assert (own.outcome, own.terminal) == ("error", False) and "disk says no" in own.reason
    assert db.execute("SELECT outcome FROM decisions WHERE signal_id = 't1'").fetchall() == []
    db.execute("DROP TRIGGER no_intents")
    db.commit()
    db.close()
    seen, trades, _, _, _ = replay(tmp_path, entries)  # the same entry again, as a redelivery
    assert [(o.signal_id, o.outcome) for o in seen if o.signal_id] == [("t1", "filled")]
    assert paper_orders(_pipeline_at(state)) == (1, 0)


@pytest.mark.parametrize("ahead_ms,outcome", [(3_600_000, "invalid"), (5_001, "invalid"), (2_000, "filled")])
def test_a_signal_from_the_future_is_invalid_beyond_the_clock_skew_allowance(tmp_path, ahead_ms, outcome):
    s = signal(1, T0, "BTC-USDT", "buy", 100.0)
    doc = json.loads(s["fields"]["payload"])
    doc["timestamp"] = _iso(T0 + ahead_ms)
    s["fields"]["payload"] = json.dumps(doc)
    seen, _, _, _, _ = replay(tmp_path, [s])
    (own,) = [o for o in seen if o.signal_id == "t1"]
    assert own.outcome == outcome
    if outcome == "invalid":
        assert own.reason.startswith("timestamp_in_future")


def test_a_year_9999_signal_is_invalid_and_its_corrected_republish_trades(tmp_path):
    """Promise: a signal from the future is invalid (timestamp_in_future), decided per stream
    entry, so its corrected re-publish under the same signal_id is traded."""
    s = signal(1, T0, "BTC-USDT", "buy", 100.0)
    doc = json.loads(s["fields"]["payload"])
    doc["timestamp"] = "9999-12-31T23:59:59.999+00:00"
    s["fields"]["payload"] = json.dumps(doc)
    seen, _, _, _, _ = replay(tmp_path, [s, signal(1, T0 + 10, "BTC-USDT", "buy", 100.0)])
    assert [(o.signal_id, o.outcome) for o in seen if o.signal_id] == [("t1", "invalid"), ("t1", "filled")]


def test_limits_are_set_in_pipeline_yaml_and_checked(tmp_path):
    base = "stages:\n  - size: kelly\n  - execute: {venue: paper}\n"
    p = parse("limits: {price_band: 1.5, clock_skew_ms: 0, band_confirm_ticks: 0}\n" + base,
              tmp_path / "pipeline.yaml", {})
    assert (p.limits.price_band, p.limits.clock_skew_ms, p.limits.band_confirm_ticks) == (1.5, 0, 0)
    assert parse(base, tmp_path / "pipeline.yaml", {}).limits == Limits()
    with pytest.raises(ConfigError) as e:
        parse("limits: {price_band: 0.5}\n" + base, tmp_path / "p.yaml", {})
    assert "limits.price_band: input should be greater than 1" in e.value.errors
    with pytest.raises(ConfigError) as e:
        parse("limits: {min_price: 10, max_price: 1}\n" + base, tmp_path / "p.yaml", {})
    assert any(x.startswith("limits") and "min_price must be below max_price" in x for x in e.value.errors)


def _pipeline_at(state):
    return parse(f"state_dir: {state}\nstages:\n  - size: kelly\n  - execute: {{venue: paper}}\n",
                 state.parent / "pipeline.yaml", {})


def test_refused_ticks_are_counted_in_the_summary_status_and_report(tmp_path, redis_server):
    """Promise: an invalid market entry is counted where an operator looks: the run
    summary, `apex status` and `apex report` (issue 16, item 1)."""
    from tests.test_live_prices import APEX, PIPELINE, _run

    feed = tmp_path / "market.jsonl"
    feed.write_text("".join(json.dumps(e) + "\n" for e in [
        tick(T0, "BTC-USDT", 100.0), tick(T0 + 1, "BTC-USDT", "1e308"), tick(T0 + 2, "BTC-USDT", 1.0),
        {"stream": PRICES, "id": f"{T0 + 3}-0", "fields": {"symbol": "BTC-USDT", "price": "abc"}}]))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(state=tmp_path / "state", url=redis_server.url))
    assert _run("publish", str(feed), "--rate", "0", "--redis", redis_server.url, cwd=tmp_path).returncode == 0
    run = _run("run", str(pipeline), "--stop-when-idle", "300", "--no-progress", "--json", "summary.json",
               cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["market_entries"], summary["invalid_market_entries"]) == (4, 3)
    assert "(3 refused)" in run.stdout
    status = _run("status", "--redis", redis_server.url, "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["invalid_market_entries"] == 3
    report = subprocess.run([APEX, "report", "--state-dir", str(tmp_path / "state")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": str(Path(sys.executable).parent), "COLUMNS": "200"})
    assert report.returncode == 0, report.stderr
    assert "3 invalid market entries" in report.stdout
