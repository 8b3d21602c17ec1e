"""`apex bench --quick`: every scenario runs to the end and yields numbers.

A smoke test only: the figures depend on the machine and its load, so nothing
here asserts on a time or a rate (BENCHMARKS.md holds a real run's table).
"""

from __future__ import annotations

import json
import numbers
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"latency", "saturation", "recovery", "replay", "lookup"}


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v


def test_quick_bench_runs_every_scenario_and_produces_numbers(tmp_path):
    if not Path("/usr/bin/redis-server").exists() and not shutil.which("redis-server"):
        pytest.fail("redis-server not found: install Debian's redis-server (make redis)")
    out = tmp_path / "bench.json"
    only = [a for s in sorted(SCENARIOS) for a in ("--only", s)]  # the venues have a test of their own
    proc = subprocess.run([sys.executable, "-m", "apex.cli", "bench", "--quick", "--json", str(out), *only],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["all_completed"] and not report["errors"]
    assert {s["scenario"] for s in report["scenarios"]} == SCENARIOS
    for s in report["scenarios"]:
        systems = {r["system"] for r in s["runs"]}
        assert systems == {"apex", "floor"}, s["scenario"]
        for r in s["runs"]:
            where = f"{s['scenario']} {r['system']} {r['what']}"
            assert is_number(r["throughput_per_s"]) and r["throughput_per_s"] > 0, where
            assert is_number(r["cpu_s"]) and is_number(r["peak_rss_mb"]) and r["peak_rss_mb"] > 0, where
            if r["latency_us"] is not None:
                assert all(is_number(r["latency_us"][q]) for q in ("p50", "p99", "p999", "max")), where
        assert s["targets"], s["scenario"]
        for t in s["targets"]:
            assert t["measured"] is not None and isinstance(t["pass"], bool), (s["scenario"], t["name"])
    live = {s["scenario"]: s for s in report["scenarios"]}
    assert live["latency"]["runs"][0]["latency_us"]["n"] > 0  # orders reached the venue
    assert "bench" in proc.stdout and "targets" in proc.stdout


def test_quick_venues_bench_measures_both_simulators(tmp_path):
    """`apex bench --quick --only venues`: orders reach both simulators and every row and
    target has a number (whether a target passes depends on the engine and the machine)."""
    if not Path("/usr/bin/redis-server").exists() and not shutil.which("redis-server"):
        pytest.fail("redis-server not found: install Debian's redis-server (make redis)")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "apex.cli", "bench", "--quick", "--only", "venues", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["all_completed"] and [s["scenario"] for s in report["scenarios"]] == ["venues"]
    s = report["scenarios"][0]
    for r in s["runs"]:
        if r["system"] == "apex" and ("emit → accepted" in r["what"] or "burst" in r["what"]):
            assert is_number(r["throughput_per_s"]) and r["throughput_per_s"] > 0, r["what"]
            assert r["latency_us"]["n"] > 0 and is_number(r["latency_us"]["p99"]), r["what"]
        if r["system"] == "loopback":
            assert is_number(r["latency_us"]["p50"]), r["what"]
    for t in s["targets"]:
        assert is_number(t["measured"]) and isinstance(t["pass"], bool), t["name"]
    runs = s["checks"]["runs"]
    assert all(r["accepted"] > 0 and len(r["instruments"]) >= 10 for r in runs.values()), runs
    # issue 23's round trips: paper and each latency decided the sample, every fate came back
    rtt = s["checks"]["rtt"]["runs"]
    assert {"paper-1", "20ms", "250ms"} <= set(rtt), rtt.keys()
    assert all(is_number(r["decided_acked_per_s"]) and r["filled"] > 0 for r in rtt.values()), rtt
    assert all(r["drain_s"] is not None for r in rtt.values()), rtt
    assert is_number(s["checks"]["exits"]["tick_step_us"]), s["checks"]["exits"]
    assert s["checks"]["exits"]["closes"].get("filled") == s["checks"]["exits"]["trades"]
    for run in s["checks"]["isolation"]["runs"].values():
        assert {"okx", "ibkr"} <= set(run["durable_by_venue"]), run
    assert "venues" in proc.stdout and "ceiling" in proc.stdout and "paper against each round trip" in proc.stdout


def test_bench_outside_a_checkout_says_so_in_one_line(tmp_path):
    """The bench is not in the installed package: an installed apex without the
    repository beside it refuses in one line, exit 2, instead of a traceback."""
    for pkg in ("apex", "operators", "connectors", "dataflows"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "apex.cli", "bench", "--quick"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "apex bench runs from a checkout of the Apex repository (git clone, make install, then apex bench)"]


def test_decisions_unlike_paper_are_counted_by_their_designed_cause_and_the_rest_as_other():
    """OKX's spot rule, the simulators' one price per instrument (price protection), and the
    concentration verdicts of a position that differs are differences by design; paper's
    concentration drop taken by a venue counts as one only after an earlier difference on the
    symbol (else the venue was looser than the limit: other)."""
    from bench.rtt import compare

    paper = {"s1": ("filled", ""), "s2": ("filled", ""), "s3": ("dropped", "concentration"),
             "s4": ("filled", ""), "s5": ("dropped", "concentration"), "s6": ("filled", ""),
             "s7": ("filled", "")}
    venue = {"s1": ("dropped", "spot_cannot_short: a spot market holds no short"),
             "s2": ("price_protection", "reference 1, limit 1.005, venue price 1.2"),
             "s3": ("filled", ""), "s4": ("dropped", "concentration"), "s5": ("filled", ""),
             "s6": ("rejected", "insufficient funds"), "s7": ("expired", "ttl")}
    symbol = {"s1": "BTC-USDT", "s2": "AAPL", "s3": "AAPL", "s4": "META", "s5": "MSFT", "s6": "SPY", "s7": "QQQ"}
    venue_of = {s: ("okx" if sym.endswith("USDT") else "ibkr") for s, sym in symbol.items()}
    cmp = compare(paper, venue, venue_of, symbol)
    assert (cmp["spot_cannot_short"], cmp["price_protection"], cmp["concentration"], cmp["refused_by_venue"]) == (
        1, 1, 2, 1)
    assert cmp["other"] == 2 and cmp["other_by_kind"] == {"ibkr: dropped(concentration) → filled": 1,
                                                          "ibkr: filled → expired": 1}
    assert compare(paper, paper)["same"] == len(paper) and compare(paper, paper)["other"] == 0
