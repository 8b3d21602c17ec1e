"""The risk gate's filters in pipeline.yaml: `apex validate` shows them, binds their parameters,
and refuses a bad one (or a bad sector file) with its YAML path, every error at once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex.cli import app
from dataflows.config import ConfigError, load, parse
from helpers import KELLY_AND_EXECUTE

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "pipeline-risk.example.yaml"
RISK = ("position_risk", "gross_exposure", "sector_exposure", "daily_loss", "correlation_budget")


def _stages(filters: str) -> str:
    return "stages:\n" + filters.rstrip() + "\n" + KELLY_AND_EXECUTE


def _errors(text: str, path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, path, {})
    return info.value.errors


def _sectors(tmp_path: Path, text: str = "symbol,sector\nBTC-USDT,crypto\nAAPL,tech\n", name: str = "s.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _validate(path: Path):
    return CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})


def test_the_example_pipeline_sets_every_risk_filter_with_its_defaults():
    p = load(EXAMPLE, env={})
    by_name = {f.name: f for f in p.filters}
    assert [n for n in by_name if n in RISK] == list(RISK)
    assert by_name["position_risk"].params == {"max_risk": 0.01, "assumed_stop_pct": 1.0}
    assert by_name["gross_exposure"].params == {"max_gross": 1.0}
    assert by_name["daily_loss"].params == {"max_loss": 0.03, "on_breach": "halt"}
    assert by_name["correlation_budget"].params == {"max_combined": 0.06, "window_minutes": 60, "min_returns": 30,
                                                    "assumed_stop_pct": 1.0}
    sector = by_name["sector_exposure"].params
    assert sector["sectors"]["BTC-USDT"] == "crypto_majors" and sector["sectors"]["QQQ"] == "index"
    assert (sector["max_net"], sector["limits"], sector["unknown_symbol"]) == (0.25, {"index": 0.5}, "drop")
    assert all(by_name[n].needs_portfolio for n in RISK)


def test_the_example_sector_file_names_every_symbol_of_the_shipped_universe():
    p = load(EXAMPLE, env={})
    by_name = {f.name: f for f in p.filters}
    universe = by_name["symbol_universe"].params["universe"]
    assert set(universe["okx"]) | set(universe["ibkr"]) <= set(by_name["sector_exposure"].params["sectors"])


def test_apex_validate_shows_the_risk_filters_in_their_order():
    res = _validate(EXAMPLE)
    assert res.exit_code == 0, res.output
    assert ("filter:position_risk → filter:gross_exposure → filter:sector_exposure → filter:daily_loss → "
            "filter:correlation_budget → size:kelly") in " ".join(res.output.split())


def test_the_filters_may_be_reordered_and_named(tmp_path):
    sectors = _sectors(tmp_path)
    p = parse(_stages(f"  - filter: daily_loss\n  - filter: sector_exposure\n    sectors: {sectors}\n"
                      "  - filter: gross_exposure\n    name: leverage\n    max_gross: 2\n"
                      "  - filter: gross_exposure\n"), tmp_path / "pipeline.yaml", {})
    assert [f.name for f in p.filters] == ["daily_loss", "sector_exposure", "leverage", "gross_exposure"]
    assert p.filters[2].params == {"max_gross": 2.0}


def test_a_relative_sector_file_is_read_beside_the_pipeline(tmp_path):
    _sectors(tmp_path, "MSFT: tech\nETH-USDT: crypto\n", "sectors.yaml")
    p = parse(_stages("  - filter: sector_exposure\n    sectors: sectors.yaml\n"), tmp_path / "pipeline.yaml", {})
    assert p.filters[0].params["sectors"] == {"MSFT": "tech", "ETH-USDT": "crypto"}


# (filter, setting, the last value accepted, the first refused beyond it, the error)
EDGES = [
    ("position_risk", "max_risk", 1.0, math.nextafter(1.0, 2), "input should be less than or equal to 1"),
    ("position_risk", "max_risk", 5e-324, 0.0, "input should be greater than 0"),
    ("position_risk", "assumed_stop_pct", 1.0, math.nextafter(1.0, 2), "input should be less than or equal to 1"),
    ("gross_exposure", "max_gross", 100.0, math.nextafter(100.0, 200), "input should be less than or equal to 100"),
    ("gross_exposure", "max_gross", 5e-324, 0.0, "input should be greater than 0"),
    ("daily_loss", "max_loss", math.nextafter(1.0, 0), 1.0, "input should be less than 1"),
    ("daily_loss", "max_loss", 5e-324, 0.0, "input should be greater than 0"),
    ("daily_loss", "on_breach", "reduce", "pause", "input should be 'halt' or 'reduce'"),
    ("correlation_budget", "max_combined", 1.0, math.nextafter(1.0, 2), "input should be less than or equal to 1"),
    ("correlation_budget", "window_minutes", 1440, 1441, "input should be less than or equal to 1440"),
    ("correlation_budget", "window_minutes", 30, 1, "input should be greater than or equal to 2"),
    ("correlation_budget", "min_returns", 2, 1, "input should be greater than or equal to 2"),
]


@pytest.mark.parametrize("name,key,last,beyond,why", EDGES, ids=[f"{e[0]}.{e[1]}={e[3]!r}" for e in EDGES])
def test_a_parameter_takes_its_last_value_and_refuses_the_next_with_its_path(tmp_path, name, key, last, beyond, why):
    text = "  - filter: confidence\n  - filter: {name}\n    {key}: {value!r}\n"
    p = parse(_stages(text.format(name=name, key=key, value=last)), tmp_path / "pipeline.yaml", {})
    assert p.filters[1].params[key] == last
    errors = _errors(_stages(text.format(name=name, key=key, value=beyond)), tmp_path / "pipeline.yaml")
    assert errors == [f"stages[1].{key}: {why}"]


def test_min_returns_more_than_the_window_holds_is_refused(tmp_path):
    ok = "  - filter: correlation_budget\n    window_minutes: 40\n    min_returns: 40\n"
    assert parse(_stages(ok), tmp_path / "pipeline.yaml", {}).filters[0].params["min_returns"] == 40
    errors = _errors(_stages(ok.replace("min_returns: 40", "min_returns: 41")), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].min_returns: value error, 41 is more than window_minutes (40) holds: every pair "
                      "would be taken as perfectly correlated"]


def test_an_unknown_parameter_is_refused_with_its_path(tmp_path):
    errors = _errors(_stages("  - filter: gross_exposure\n    max_gros: 2\n"), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].max_gros: extra inputs are not permitted"]


# --- the sector file -----------------------------------------------------------------------------

def _sector_errors(tmp_path: Path, params: str) -> list[str]:
    return _errors(_stages("  - filter: confidence\n  - filter: sector_exposure\n" + params),
                   tmp_path / "pipeline.yaml")


def test_a_missing_sector_file_is_refused_with_its_path(tmp_path):
    errors = _sector_errors(tmp_path, "    sectors: nowhere.csv\n")
    assert errors == [f"stages[1].sectors: cannot read {tmp_path / 'nowhere.csv'}: No such file or directory"]


def test_a_sector_file_is_required(tmp_path):
    assert _sector_errors(tmp_path, "    max_net: 0.2\n") == ["stages[1].sectors: field required"]


@pytest.mark.parametrize("text, why", [
    ("sym,sec\nBTC-USDT,crypto\n", " line 1: the header must be symbol,sector, not 'sym,sec'"),
    ("symbol,sector\nBTC-USDT,crypto\nETH-USDT\n", " line 3: a row is symbol,sector, not 'ETH-USDT'"),
    ("symbol,sector\nBTC-USDT,crypto\nAAPL,\n", " line 3: a row is symbol,sector, not 'AAPL,'"),
    ("symbol,sector\nBTC-USDT,crypto\n\nBTC-USDT,tech\n", " line 4: BTC-USDT is also on line 2"),
    ("symbol,sector\n", " names no symbol"),
])
def test_a_malformed_csv_is_refused_with_its_line(tmp_path, text, why):
    path = _sectors(tmp_path, text)
    assert _sector_errors(tmp_path, f"    sectors: {path}\n") == [f"stages[1].sectors: {path}{why}"]


@pytest.mark.parametrize("text, why", [
    ("- BTC-USDT\n", ": must be a mapping of SYMBOL: sector"),
    ("BTC-USDT: [crypto]\n", ": BTC-USDT: the sector must be a name, not ['crypto']"),
    ("BTC-USDT: crypto\n  bad: [\n", " line 2: not YAML: "),
])
def test_a_malformed_yaml_sector_file_is_refused(tmp_path, text, why):
    path = _sectors(tmp_path, text, "s.yaml")
    errors = _sector_errors(tmp_path, f"    sectors: {path}\n")
    assert len(errors) == 1 and errors[0].startswith(f"stages[1].sectors: {path}{why}"), errors


def test_a_sector_file_of_another_kind_is_refused(tmp_path):
    path = _sectors(tmp_path, "BTC-USDT crypto\n", "s.txt")
    assert _sector_errors(tmp_path, f"    sectors: {path}\n") == [
        f"stages[1].sectors: {path}: a sector file is .csv (symbol,sector) or .yaml (SYMBOL: sector)"]


def test_a_limit_for_a_sector_the_file_does_not_name_is_refused(tmp_path):
    path = _sectors(tmp_path)
    errors = _sector_errors(tmp_path, f"    sectors: {path}\n    limits: {{tech: 0.1, tecj: 0.2}}\n")
    assert errors == ["stages[1].limits: value error, sector 'tecj' is not in the sector file; known: crypto, tech"]


@pytest.mark.parametrize("params, error", [
    ("    unknown_symbol: ignore\n", "stages[1].unknown_symbol: input should be 'drop' or 'pass'"),
    ("    limits: {tech: 0}\n", "stages[1].limits.tech: input should be greater than 0"),
    ("    max_net: -1\n", "stages[1].max_net: input should be greater than 0"),
])
def test_a_bad_sector_setting_is_refused_with_its_path(tmp_path, params, error):
    path = _sectors(tmp_path)
    assert _sector_errors(tmp_path, f"    sectors: {path}\n" + params) == [error]


def test_every_risk_error_is_reported_at_once_through_apex_validate(tmp_path):
    f = tmp_path / "pipeline.yaml"
    f.write_text(_stages("  - filter: position_risk\n    max_risk: 2\n"
                         "  - filter: sector_exposure\n    sectors: absent.csv\n    unknown_symbol: ignore\n"
                         "  - filter: daily_loss\n    on_breach: pause\n"
                         "  - filter: correlation_budget\n    window_minutes: 0\n"))
    res = _validate(f)
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    for want in ("stages[0].max_risk: input should be less than or equal to 1",
                 f"stages[1].sectors: cannot read {tmp_path / 'absent.csv'}",
                 "stages[1].unknown_symbol: input should be 'drop' or 'pass'",
                 "stages[2].on_breach: input should be 'halt' or 'reduce'",
                 "stages[3].window_minutes: input should be greater than or equal to 2"):
        assert want in out, (want, out)
    assert "Traceback" not in res.output


def test_a_sector_file_that_leaves_out_symbols_the_universe_trades_is_refused(tmp_path):
    path = _sectors(tmp_path)  # BTC-USDT and AAPL only
    universe = "  - filter: symbol_universe\n    universe: {okx: [BTC-USDT, ETH-USDT, SOL-USDT], ibkr: [AAPL]}\n"
    errors = _errors(_stages(universe + f"  - filter: sector_exposure\n    sectors: {path}\n"), tmp_path / "p.yaml")
    assert errors == ["stages[1].sectors: leaves out ETH-USDT, SOL-USDT, which stages[0] (symbol_universe) trades: "
                      "every signal of theirs would be dropped as 'sector_exposure'; name their sector, or set "
                      "unknown_symbol: pass"]
    # letting them through unchecked is a choice the file may make
    p = parse(_stages(universe + f"  - filter: sector_exposure\n    sectors: {path}\n    unknown_symbol: pass\n"),
              tmp_path / "p.yaml", {})
    assert p.filters[1].params["unknown_symbol"] == "pass"
    # and a file naming every symbol is enough
    path.write_text("symbol,sector\nBTC-USDT,crypto\nETH-USDT,crypto\nSOL-USDT,crypto\nAAPL,tech\n")
    assert len(parse(_stages(universe + f"  - filter: sector_exposure\n    sectors: {path}\n"),
                     tmp_path / "p.yaml", {}).filters) == 2
