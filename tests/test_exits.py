"""Trade lifecycle: each exit kind fires at the right tick with the right PnL,
and closes feed the KellyTracker that sizes the next signal."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from pathlib import Path

import pytest
from bytewax.testing import run_main

from connectors.clickhouse import AuditStore
from connectors.ledger import Ledger
from connectors.venues.paper import PaperVenue
from dataflows.apex import wire
from dataflows.config import parse
from operators.exits import (
    HARD_STOP, MAX_HOLDING, REGIME_ALERT, REGIME_EXIT, ClosedTrade, TradeTerms,
    booked, close_leaves_rest, holding_expired, regime_exit, stop_hit,
)
from operators.fill import Fill

T0 = 1_767_312_000_000  # 2026-01-02T00:00:00Z
MIN = 60_000
SIGNALS, PRICES = "argus:signals:stream", "argus:prices:stream"


def terms(side="buy", entry=100.0, stop=0.05, regimes=("choppy",), alert=False, qty=10.0, fee=0.0):
    return TradeTerms("s1", "macro", "okx", "BTC-USDT", side, qty, entry, T0, fee, "trending_up",
                      stop, regimes, T0 + 3_600_000, alert, 0.6)


def test_booked_takes_the_fill_and_keeps_every_other_term():
    values = dict(signal_id="s1", source="macro", venue="okx", symbol="BTC-USDT", side="buy", quantity=10.0,
                  entry_price=100.0, entry_ms=T0, entry_fee_usd=0.5, regime="trending_up", hard_stop_pct=0.05,
                  exit_regimes=("choppy",), deadline_ms=T0 + 3_600_000, regime_change_alert=True,
                  expected_win_rate=0.6, avg_win=0.02, avg_loss=0.01)
    assert set(values) == {f.name for f in fields(TradeTerms)}  # a new term needs a value here, not its default
    expected = TradeTerms(**values)
    fill = Fill("s1", "c1", "o1", "okx", "BTC-USDT", "buy", 9.5, 100.2, 0.48, T0 + 40)
    got = booked(expected, fill)
    assert (got.quantity, got.entry_price, got.entry_ms, got.entry_fee_usd) == (9.5, 100.2, T0 + 40, 0.48)
    assert got.deadline_ms == T0 + 40 + 3_600_000  # the holding period runs from the fill
    taken = {"quantity", "entry_price", "entry_ms", "entry_fee_usd", "deadline_ms"}
    for name, value in values.items():
        if name not in taken:
            assert getattr(got, name) == value, name


@pytest.mark.parametrize("side,price,hit", [
    ("buy", 95.0, True), ("buy", 95.01, False), ("buy", 120.0, False),
    ("sell", 105.0, True), ("sell", 104.99, False), ("sell", 80.0, False),
])
def test_hard_stop_boundary_both_sides(side, price, hit):
    assert stop_hit(terms(side=side), price) is hit


def test_regime_exit_and_alert_only_when_configured():
    t = terms(regimes=("choppy",), alert=True)
    assert regime_exit(t, "choppy", on_alert=False) == REGIME_EXIT
    assert regime_exit(t, "trending_down", on_alert=False) is None
    assert regime_exit(t, "trending_down", on_alert=True) == REGIME_ALERT
    assert regime_exit(t, "trending_up", on_alert=True) is None  # no change from the entry regime
    assert regime_exit(terms(alert=False), "trending_down", on_alert=True) is None


def test_holding_deadline_inclusive():
    t = terms()
    assert not holding_expired(t, T0 + 3_600_000 - 1)
    assert holding_expired(t, T0 + 3_600_000)


def test_closed_trade_pnl_long_and_short_net_of_fees():
    long = ClosedTrade(terms(side="buy", qty=10, fee=1.0), 110.0, T0 + MIN, 1.5, MAX_HOLDING)
    assert long.pnl_usd == pytest.approx(100 - 2.5)
    assert long.return_pct == pytest.approx(97.5 / 1000)
    assert long.won
    short = ClosedTrade(terms(side="sell", qty=10, fee=0.0), 110.0, T0 + MIN, 0.0, HARD_STOP)
    assert short.pnl_usd == pytest.approx(-100)
    assert not short.won


# --- the dataflow over a recording with prices ---------------------------------------------------


def signal(n, ms, symbol, side, price, *, stop=0.05, regimes=("choppy",), hold=None, kelly=0.01,
           cap=10_000.0, win_rate=0.6, regime="trending_up", venue="okx", alert=None):
    exit_rules = {"description": "test", "hard_stop_pct": stop, "exit_regimes": list(regimes)}
    if hold:
        exit_rules["max_holding_hours"] = hold
    sig = {
        "version": "1.1" if alert is not None else "1.0", "signal_id": f"t{n}",
        "timestamp": _iso(ms - 5), "ttl_seconds": 60, "source": "macro", "venue": venue,
        "symbol": symbol, "side": side, "confidence": 0.9, "regime": regime, "reference_price": price,
        "suggested_kelly": kelly, "max_position_usd": cap, "holding_period_hours": 24,
        "exit_rules": exit_rules, "backtest_stats": {"win_rate": win_rate, "avg_win": 0.05, "avg_loss": 0.03},
    }
    if alert is not None:
        sig["regime_change_alert"] = alert
    return {"stream": SIGNALS, "id": f"{ms}-0", "fields": {"payload": json.dumps(sig)}}


def tick(ms, symbol, price, seq=0):
    return {"stream": PRICES, "id": f"{ms}-{seq}", "fields": {"symbol": symbol, "price": str(price)}}


def regime(ms, name):
    return {"stream": PRICES, "id": f"{ms}-0", "fields": {"regime": name}}


def _iso(ms):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


PIPELINE = """
state_dir: {state}
exits: {{on_regime_change_alert: {alert}}}
stages:
  - filter: confidence
  - filter: concentration
    max_nav_fraction: 0.5
  - size: kelly
  - execute: {{venue: paper, initial_nav_usd: 1000000, slippage_bps: 0, fee_bps: {fee}}}
"""


def replay(tmp_path: Path, entries: list[dict], *, fee=0, alert="false"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rec = tmp_path / "rec.jsonl"
    rec.write_text("".join(json.dumps(e) + "\n" for e in entries))
    state = tmp_path / "state"
    p = parse(PIPELINE.format(state=state, fee=fee, alert=alert), tmp_path / "pipeline.yaml")
    seen = []

    class Obs:
        def observe(self, outcomes, done_ns):
            seen.extend(outcomes)

    flow, _ = wire(p, source=f"recording:{rec}", observer=Obs())
    run_main(flow)
    store = AuditStore(p.clickhouse_dsn)
    trades = {r["signal_id"]: r for r in store.query_dicts("SELECT * FROM trades FINAL")}
    sizing = {r["signal_id"]: json.loads(r["details"]) | {"size_usd": r["size_usd"]} for r in store.query_dicts(
        "SELECT signal_id, size_usd, details FROM audit_events FINAL WHERE stage = 'POSITION_SIZING'")}
    closed_events = list(store.query_dicts(
        "SELECT signal_id, stream_id, reason, details FROM audit_events FINAL WHERE stage = 'TRADE_CLOSED'"))
    store.close()
    return seen, trades, sizing, closed_events, state


def test_each_exit_kind_fires_at_the_right_tick_with_the_right_pnl(tmp_path):
    entries = [
        # BTC long 100 @ 100 (1,000,000 × 0.01 = 10,000 USD), stop 5%
        signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05),
        # ETH short 50 @ 200, wide stop, leaves on 'choppy'
        signal(2, T0 + 1, "ETH-USDT", "sell", 200.0, stop=0.5, regimes=("choppy",)),
        # SOL long 200 @ 50, no regime exit, 1 hour maximum holding
        signal(3, T0 + 2, "SOL-USDT", "buy", 50.0, stop=0.5, regimes=(), hold=1),
        tick(T0 + MIN, "BTC-USDT", 96.0),          # -4%: holds
        tick(T0 + 2 * MIN, "BTC-USDT", 95.0),      # -5%: hard stop here
        tick(T0 + 2 * MIN, "ETH-USDT", 190.0, 1),  # ETH mark for the regime exit
        tick(T0 + 3 * MIN, "BTC-USDT", 80.0),      # already closed: nothing more
        tick(T0 + 4 * MIN, "SOL-USDT", 55.0),
        regime(T0 + 10 * MIN, "trending_down"),    # not in ETH's exit regimes
        regime(T0 + 11 * MIN, "choppy"),           # ETH's regime exit here
        tick(T0 + 60 * MIN + 2, "SOL-USDT", 54.0),  # the first entry at SOL's 1 h deadline (filled at T0+2)
    ]
    seen, trades, _, closed_events, state = replay(tmp_path, entries)
    assert {sid: (t["exit_reason"], t["exit_ms"], t["exit_price"]) for sid, t in trades.items()} == {
        "t1": (HARD_STOP, T0 + 2 * MIN, 95.0),
        "t2": (REGIME_EXIT, T0 + 11 * MIN, 190.0),
        # the deadline is checked before the entry that passes it: SOL closes at the mark before that tick
        "t3": (MAX_HOLDING, T0 + 60 * MIN + 2, 55.0),
    }
    assert trades["t1"]["pnl_usd"] == pytest.approx((95 - 100) * 100)
    assert trades["t2"]["pnl_usd"] == pytest.approx((200 - 190) * 50)
    assert trades["t3"]["pnl_usd"] == pytest.approx((55 - 50) * 200)
    assert trades["t1"]["return_pct"] == pytest.approx(-0.05)
    assert trades["t1"]["expected_win_rate"] == 0.6
    by_trigger = {e["signal_id"]: e["stream_id"] for e in closed_events}
    assert by_trigger == {"t1": f"{T0 + 2 * MIN}-0", "t2": f"{T0 + 11 * MIN}-0", "t3": f"{T0 + 60 * MIN + 2}-0"}
    assert sum(o.outcome == "closed" for o in seen) == 3
    ledger = Ledger(state / "ledger.sqlite")
    assert ledger.open_trades() == []
    ledger.close()


def test_max_holding_falls_back_to_the_holding_period(tmp_path):
    """A signal without exit_rules.max_holding_hours is held for its holding_period_hours
    (README, maximum holding: "falling back to holding_period_hours"): closed by the first
    entry at entry time + 24 h, and not by the one a millisecond before."""
    day = 24 * 60 * MIN
    entries = [
        signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.5, regimes=()),  # holding_period_hours 24, no maximum
        tick(T0 + day - 1, "BTC-USDT", 101.0),  # still held
        tick(T0 + day, "BTC-USDT", 102.0),      # due: closed at the mark before this tick
    ]
    _, trades, _, _, _ = replay(tmp_path, entries)
    assert {sid: (t["exit_reason"], t["exit_ms"], t["exit_price"]) for sid, t in trades.items()} == {
        "t1": (MAX_HOLDING, T0 + day, 101.0)}


def test_a_failed_max_holding_close_is_retried_at_the_next_entry(tmp_path):
    """A maximum-holding close that fails (here the ledger refuses to record its intent)
    leaves the entry that triggered it pending and the trade due: the next entry closes it,
    within the same run, with one close order at the venue."""
    due = T0 + 60 * MIN
    state = tmp_path / "state"
    Ledger(state / "ledger.sqlite").close()
    db = sqlite3.connect(state / "ledger.sqlite")
    db.execute("CREATE TRIGGER no_close_yet BEFORE INSERT ON executions"  # the close at the deadline only
               f" WHEN NEW.kind = 'close' AND NEW.intent_ms <= {due} BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    db.commit()
    db.close()
    entries = [
        signal(1, T0, "SOL-USDT", "buy", 50.0, stop=0.5, regimes=(), hold=1),
        tick(due, "SOL-USDT", 54.0),          # due: its close fails
        tick(due + MIN, "SOL-USDT", 53.0),    # still due: closed before this tick
    ]
    seen, trades, _, _, _ = replay(tmp_path, entries)
    (failed,) = [o for o in seen if o.outcome == "error"]
    assert (failed.stream_id, failed.terminal) == (f"{due}-0", False) and "disk says no" in failed.reason
    assert {sid: (t["exit_reason"], t["exit_ms"]) for sid, t in trades.items()} == {"t1": (MAX_HOLDING, due + MIN)}
    venue = PaperVenue(state / "paper-venue.sqlite")
    assert venue.orders_sent() == (2, 0)  # the open and one close, nothing refused as a repeat
    venue.db.close()


def test_fees_enter_pnl(tmp_path):
    entries = [signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05), tick(T0 + MIN, "BTC-USDT", 90.0)]
    _, trades, _, _, _ = replay(tmp_path, entries, fee=10)  # 10 bps each way
    qty = 100.0
    fees = qty * 100 * 0.001 + qty * 90 * 0.001
    assert trades["t1"]["fees_usd"] == pytest.approx(fees)
    assert trades["t1"]["pnl_usd"] == pytest.approx((90 - 100) * qty - fees)


def test_regime_change_alert_exit_only_when_configured(tmp_path):
    entries = [signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.5, regimes=(), alert=True),
               regime(T0 + MIN, "trending_down")]
    _, trades, _, _, _ = replay(tmp_path / "off", entries)
    assert trades == {}
    _, trades, _, _, _ = replay(tmp_path / "on", entries, alert="true")
    assert trades["t1"]["exit_reason"] == REGIME_ALERT


def test_kelly_tracker_multiplier_after_scripted_closes_changes_the_next_size(tmp_path):
    """Four wins and a loss against a promised 0.6: (4/5) / 0.6 = 1.3333, and the
    sixth signal is sized at NAV × suggested_kelly × 1.3333."""
    coins = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT"]
    entries = [signal(i, T0 + i, c, "buy", 100.0, stop=0.05, regimes=(), hold=1)
               for i, c in enumerate(coins)]
    entries += [tick(T0 + MIN, c, 110.0 if i < 4 else 90.0, i) for i, c in enumerate(coins)]
    entries.append(signal(9, T0 + 2 * 60 * MIN, "LTC-USDT", "buy", 100.0, kelly=0.01, cap=1e6))
    _, trades, sizing, _, _ = replay(tmp_path, entries)
    assert sorted((t["exit_reason"], t["pnl_usd"] > 0) for t in trades.values()) == sorted(
        [(MAX_HOLDING, True)] * 4 + [(HARD_STOP, False)])
    assert sizing["t0"]["tracker_multiplier"] == 1.0  # nothing closed yet
    s = sizing["t9"]
    assert s["tracker_multiplier"] == pytest.approx((4 / 5) / 0.6)
    assert s["size_usd"] == pytest.approx(s["nav"] * 0.01 * (4 / 5) / 0.6)
    assert s["nav"] == pytest.approx(1_000_000 + 4 * 100 * 10 - 100 * 10)


def test_restart_rebuilds_open_trades_and_tracker_from_the_ledger(tmp_path):
    """A second run on the same state dir closes what the first left open."""
    first = [signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.05)]
    replay(tmp_path, first)
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps(tick(T0 + MIN, "BTC-USDT", 94.0)) + "\n")
    p = parse(PIPELINE.format(state=tmp_path / "state", fee=0, alert="false"), tmp_path / "pipeline.yaml")
    flow, _ = wire(p, source=f"recording:{rec}")
    run_main(flow)
    store = AuditStore(p.clickhouse_dsn)
    rows = store.query("SELECT signal_id, exit_reason, pnl_usd FROM trades FINAL")
    store.close()
    assert rows == [("t1", HARD_STOP, pytest.approx(-600.0))]


def test_a_close_rounded_down_to_the_venues_lot_leaves_dust_not_a_remainder():
    """OKX rounds a sell down to 1e-8 of a coin: what that leaves is dust, said nothing of; a
    part of the trade really left held is a remainder (warned of, outside any trade)."""
    t = terms(qty=0.12345678912)
    assert not close_leaves_rest(t, 0.12345678)  # floored to the lot
    assert not close_leaves_rest(t, t.quantity)
    assert close_leaves_rest(t, 0.06)  # a partial fill, the rest cancelled
    big = terms(qty=1000.0)
    assert not close_leaves_rest(big, 1000.0 - 0.0009)  # within a millionth of the trade
    assert close_leaves_rest(big, 1000.0 - 0.0011)
