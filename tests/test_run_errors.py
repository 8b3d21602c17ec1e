"""What a run says about errors and about what it decided (issue 16, items 8 and 12).

A user filter that raises is a bug in the user's code, not in the signal: the entry
is left undecided (pending), the first error is shown once with where it was raised,
the rest are counted, and a replay with errors exits 1. A rerun on the same state dir
tells what it decided now from what the ledger held already.
"""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

import apex.cli
from helpers import KELLY_AND_EXECUTE, entry, write_recording

RULES = """def picky(signal, portfolio, broken):
    if broken and signal.venue == "okx":
        return {}[signal.symbol]
    return True
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with the user's filter module and a recording of two okx and one ibkr signal."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # parse() puts the YAML folder on sys.path
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    (tmp_path / "apexerr_rules.py").write_text(RULES)
    write_recording(tmp_path / "rec.jsonl", [
        entry("1767261601000-0", signal_id="okx-1"),
        entry("1767261602000-0", signal_id="ibkr-1", venue="ibkr", symbol="AAPL", reference_price=200.0),
        entry("1767261603000-0", signal_id="okx-2", symbol="ETH-USDT", reference_price=2000.0),
    ])
    return tmp_path


def run(workdir, broken: bool):
    yaml_path = workdir / f"pipeline-{broken}.yaml"
    yaml_path.write_text(f"source: recording:rec.jsonl\nstate_dir: state\nstages:\n"
                         f"  - filter: apexerr_rules:picky\n    broken: {str(broken).lower()}\n{KELLY_AND_EXECUTE}")
    summary = workdir / "summary.json"
    res = CliRunner().invoke(apex.cli.app, ["run", str(yaml_path), "--no-progress", "--json", str(summary)],
                             env={"APEX_ENV": None, "COLUMNS": "100"})
    return res, json.loads(summary.read_text())


def test_a_raising_filter_is_shown_once_with_its_line_and_a_replay_with_errors_exits_1(workdir):
    res, s = run(workdir, broken=True)
    assert res.exit_code == 1, res.output
    where = f"{workdir / 'apexerr_rules.py'}:3"
    first = f"FilterError: filter 'picky' raised KeyError: 'BTC-USDT' in {where}"
    errors = [line for line in res.output.splitlines() if "KeyError" in line]
    assert errors == [f"error: 2 entries left undecided (a redelivery or a rerun decides them once fixed); "
                      f"the first: {first}"]
    assert (s["errors"], s["first_error"], s["outcomes"]) == (2, first, {"error": 2, "filled": 1})
    assert "Traceback" not in res.output


def test_entries_a_filter_error_left_undecided_are_decided_once_it_is_fixed(workdir):
    run(workdir, broken=True)
    res, s = run(workdir, broken=False)
    assert res.exit_code == 0, res.output
    assert (s["entries"], s["decided_now"], s["already_decided"], s["fills"]) == (3, 2, {"filled": 1}, 2)
    assert "decided now 2 · already decided 1" in res.output


def test_a_rerun_on_the_same_state_dir_sends_nothing_and_says_so(workdir):
    run(workdir, broken=False)
    res, s = run(workdir, broken=False)
    assert res.exit_code == 0, res.output
    assert (s["entries"], s["decided_now"], s["already_decided"], s["fills"]) == (3, 0, {"filled": 3}, 0)
    assert s["outcomes"] == {"filled": 3}
    assert "decided now 0 · already decided 3" in res.output
    assert "fills: 0 " in res.output
