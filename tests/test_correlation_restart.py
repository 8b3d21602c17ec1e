"""The correlation budget across a restart, through the real dataflow (recording source,
paper venue, ledger): a book restarted between its price history and a signal decides the
signal as a book that ran without a stop does, because the history is kept in its ledger."""

from __future__ import annotations

import math
from pathlib import Path

from dataflows.config import parse
from helpers import pipeline_yaml, run_entries
from tests.test_exits import T0, signal, tick

MIN = 60_000
FILTERS = ("  - filter: correlation_budget\n    max_combined: 0.06\n    window_minutes: 60\n"
           "    min_returns: 30\n")


def _pipeline(root: Path):
    root.mkdir()
    path = root / "pipeline.yaml"
    path.write_text(pipeline_yaml(root / "state", FILTERS))
    return parse(path.read_text(), path)


def _history() -> list[dict]:
    """A long BTC position (risk 5,000 to its stop), then an hour of BTC and ETH moving
    exactly apart, a tick a minute each."""
    out = [signal(1, T0 + 1000, "BTC-USDT", "buy", 100.0, stop=0.1, kelly=0.5, cap=50_000.0)]
    price = {"BTC-USDT": 100.0, "ETH-USDT": 100.0}
    for m in range(1, 64):
        step = 0.01 if m % 2 else -0.01
        price["BTC-USDT"] *= math.exp(step)
        price["ETH-USDT"] *= math.exp(-step)
        out += [tick(T0 + m * MIN, "BTC-USDT", round(price["BTC-USDT"], 6), 0),
                tick(T0 + m * MIN, "ETH-USDT", round(price["ETH-USDT"], 6), 1)]
    return out


# an ETH long risking 60,000 to its stop: 65,000 with BTC's if nothing is known of the two
# (past 6% of NAV), 55,000 as a hedge of an exactly opposite BTC
HEDGE = signal(2, T0 + 64 * MIN + 1000, "ETH-USDT", "buy", 100.0, stop=0.5, kelly=0.5, cap=120_000.0)


def _decisions(col) -> dict[str, tuple[str, str]]:
    return {o.signal_id: (o.outcome, o.reason) for o in col.outcomes if o.stream_id}


def test_a_restart_between_the_history_and_a_signal_decides_as_an_uninterrupted_run(tmp_path):
    whole = _pipeline(tmp_path / "whole")
    straight = _decisions(run_entries(tmp_path, whole, [*_history(), HEDGE], name="whole.jsonl"))
    assert straight["t1"][0] == "filled"
    assert straight["t2"] == ("filled", ""), straight

    split = _pipeline(tmp_path / "split")
    before = _decisions(run_entries(tmp_path, split, _history(), name="before.jsonl"))
    assert before["t1"][0] == "filled"
    after = _decisions(run_entries(tmp_path, split, [HEDGE], name="after.jsonl"))
    assert after["t2"] == straight["t2"]
