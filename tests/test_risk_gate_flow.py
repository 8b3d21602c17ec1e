"""The risk gate through the real dataflow (recording source, paper venue, ledger, embedded
ClickHouse): the day's loss breached by a price tick holds the book's new trades until the
next UTC day; correlations learnt from the price stream let an OKX and an IBKR position
hedge each other where, without that history, the same orders are refused; and the gate
sizes once whatever the filters' order, naming the filter that dropped."""

from __future__ import annotations

import math

import pytest

from helpers import make_pipeline, run_entries
from operators.daily_loss import DAY_MS
from tests.test_exits import T0, signal, tick

MIN = 60_000


def _by_signal(col) -> dict[str, tuple[str, str]]:
    """Each signal's own outcome (a close it later met is an outcome of its own)."""
    out: dict[str, tuple[str, str]] = {}
    for o in col.outcomes:
        if o.signal_id:
            out.setdefault(o.signal_id, (o.outcome, o.reason))
    return out


def _checked(col, signal_id: str) -> list:
    [out] = [o for o in col.outcomes if o.signal_id == signal_id]
    [check] = [e for e in out.events if e.stage == "FILTER_CHECK"]
    return [tuple(c) for c in check.details["checked"]]


def test_a_fall_past_the_days_limit_drops_new_trades_until_the_next_utc_day(tmp_path):
    p = make_pipeline(tmp_path, "  - filter: confidence\n  - filter: daily_loss\n    max_loss: 0.03\n")
    small = dict(kelly=0.001, cap=1000.0)
    entries = [
        signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.5, kelly=0.5, cap=500_000.0),  # 5,000 BTC
        tick(T0 + MIN, "BTC-USDT", 94.0),  # 30,000 lost: exactly 3% of the day's opening 1,000,000
        signal(2, T0 + MIN + 1000, "ETH-USDT", "buy", 100.0, **small),
        tick(T0 + 2 * MIN, "BTC-USDT", 93.99),  # 30,050 lost: past it
        tick(T0 + 3 * MIN, "BTC-USDT", 100.0),  # back where it was: the breach holds for the day
        signal(3, T0 + 3 * MIN + 1000, "ETH-USDT", "buy", 100.0, **small),
        signal(4, T0 + DAY_MS - 1000, "SOL-USDT", "buy", 100.0, **small),  # the day's last second
        signal(5, T0 + DAY_MS + 1000, "SOL-USDT", "buy", 100.0, **small),  # the next UTC day
    ]
    col = run_entries(tmp_path, p, entries)
    assert _by_signal(col) == {"t1": ("filled", ""), "t2": ("filled", ""), "t3": ("dropped", "daily_loss"),
                               "t4": ("dropped", "daily_loss"), "t5": ("filled", "")}
    assert _checked(col, "t3") == [("confidence", True), ("daily_loss", False)]


def _walk(start: int, minutes: int) -> tuple[list[dict], dict[str, float]]:
    """A tick a minute of BTC-USDT (OKX) and SPY (IBKR) moving opposite ways, ±1% a minute."""
    price = {"BTC-USDT": 100.0, "SPY": 100.0}
    out = []
    for m in range(minutes):
        for seq, (symbol, sign) in enumerate((("BTC-USDT", 1), ("SPY", -1))):
            price[symbol] *= math.exp(0.01 * sign * (1 if m % 2 else -1))
            out.append(tick(start + m * MIN, symbol, price[symbol], seq))
    return out, price


def _hedge_signals(at: int, price: dict[str, float]) -> list[dict]:
    return [
        # 50,000 of BTC with a 10% stop: 5,000 at risk
        signal(1, at, "BTC-USDT", "buy", price["BTC-USDT"], stop=0.1, kelly=0.05, cap=1e6),
        # 120,000 of SPY with a 50% stop: 60,000 at risk; with BTC 65,000 if they moved together
        signal(2, at + 1000, "SPY", "buy", price["SPY"], stop=0.5, kelly=0.12, cap=1e6, venue="ibkr"),
    ]


BUDGET = "  - filter: correlation_budget\n    max_combined: 0.06\n    window_minutes: 30\n    min_returns: 20\n"


@pytest.mark.parametrize("minutes, spy", [
    (40, ("filled", "")),  # moving opposite ways, the two longs hedge: |5,000 − 60,000| = 55,000 ≤ 60,000
    (22, ("filled", "")),  # 20 returns of both in the completed minutes: the 20 asked for
    (21, ("dropped", "correlation_budget")),  # 19: too little, taken as perfectly correlated: 65,000
    (0, ("dropped", "correlation_budget")),  # no history at all
])
def test_correlations_from_the_price_stream_let_two_venues_positions_hedge(tmp_path, minutes, spy):
    ticks, price = _walk(T0, minutes)
    p = make_pipeline(tmp_path, BUDGET)
    col = run_entries(tmp_path, p, ticks + _hedge_signals(T0 + 40 * MIN, price))
    assert _by_signal(col) == {"t1": ("filled", ""), "t2": spy}


def test_the_whole_gate_in_one_pass_names_the_filter_that_dropped(tmp_path):
    sectors = tmp_path / "sectors.csv"
    sectors.write_text("symbol,sector\nBTC-USDT,crypto\nETH-USDT,crypto\nSPY,index\n")
    gate = ("  - filter: position_risk\n    max_risk: 0.01\n"
            "  - filter: gross_exposure\n    max_gross: 0.2\n"
            f"  - filter: sector_exposure\n    sectors: {sectors}\n    max_net: 0.15\n"
            "  - filter: daily_loss\n"
            "  - filter: correlation_budget\n")
    p = make_pipeline(tmp_path, gate)
    entries = [
        signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.05, kelly=0.1, cap=1e6),  # 100,000; risks 5,000
        signal(2, T0 + 2000, "ETH-USDT", "buy", 100.0, stop=0.05, kelly=0.3, cap=1e6),  # risks 15,000
        signal(3, T0 + 3000, "ETH-USDT", "buy", 100.0, stop=0.05, kelly=0.08, cap=1e6),  # crypto 180,000
        signal(4, T0 + 4000, "SPY", "buy", 100.0, stop=0.05, kelly=0.15, cap=1e6, venue="ibkr"),  # gross 250,000
        signal(5, T0 + 5000, "DOGE-USDT", "buy", 0.1, stop=0.05, kelly=0.01, cap=1e6),  # no sector
        signal(6, T0 + 6000, "SPY", "buy", 100.0, stop=0.05, kelly=0.05, cap=1e6, venue="ibkr"),
    ]
    col = run_entries(tmp_path, p, entries)
    assert _by_signal(col) == {"t1": ("filled", ""), "t2": ("dropped", "position_risk"),
                               "t3": ("dropped", "sector_exposure"), "t4": ("dropped", "gross_exposure"),
                               "t5": ("dropped", "sector_exposure"), "t6": ("filled", "")}
    assert [c[0] for c in _checked(col, "t6")] == ["position_risk", "gross_exposure", "sector_exposure",
                                                  "daily_loss", "correlation_budget"]
