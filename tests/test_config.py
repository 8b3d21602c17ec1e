"""pipeline.yaml: parsing, validation errors by YAML path, interpolation, `apex validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex.cli import app
from dataflows.config import ConfigError, load, parse
from helpers import KELLY_AND_EXECUTE

REPO = Path(__file__).resolve().parents[1]


def _errors(text: str, path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, path, {} if env is None else env)
    return info.value.errors


def _stages(filters: str) -> str:
    return "stages:\n" + filters.rstrip() + "\n" + KELLY_AND_EXECUTE


# --- the shipped pipeline ------------------------------------------------------------------

def test_shipped_pipeline_parses_with_the_seed_values():
    p = load(REPO / "pipeline.yaml", env={})
    assert p.stages == [
        "filter:confidence", "filter:regime_compatibility", "filter:symbol_universe",
        "filter:concentration", "filter:margin", "size:kelly", "execute:paper",
    ]
    by_name = {f.name: f for f in p.filters}
    assert by_name["confidence"].params == {"min": 0.65}
    assert by_name["concentration"].params == {"max_nav_fraction": 0.05}
    assert by_name["margin"].params == {"initial_margin_rate": 0.5, "max_utilization": 0.8}
    assert by_name["regime_compatibility"].params["incompatible"] == {
        "trend_following": ["choppy"], "mean_reversion": ["trending_up", "trending_down"],
    }
    universe = by_name["symbol_universe"].params["universe"]
    assert "DOGE-USDT" in universe["okx"] and "QQQ" in universe["ibkr"]
    assert [f.needs_portfolio for f in p.filters] == [False, False, False, True, True]
    assert p.execute.initial_nav_usd == 1_000_000
    assert (p.execute.slippage_bps, p.execute.fee_bps) == (2, 5)
    assert p.source == "recording:recordings/argus-sample.jsonl"
    assert p.state_dir == REPO / ".apex"
    assert p.clickhouse is None
    assert p.clickhouse_dsn == f"chdb://{REPO / '.apex' / 'clickhouse'}"


def test_shipped_pipeline_takes_values_from_the_environment(tmp_path):
    p = load(REPO / "pipeline.yaml", env={"APEX_STATE_DIR": str(tmp_path / "s"), "APEX_SOURCE": "redis://h:6379/0",
                                          "APEX_CONSUMER": "w2"})
    assert p.state_dir == tmp_path / "s"
    assert p.source == "redis://h:6379/0"
    assert p.redis.consumer == "w2"


# --- symbol_universe paths ---------------------------------------------------------------------

def test_universe_file_path_is_relative_to_the_yaml_folder(tmp_path, monkeypatch):
    (tmp_path / "conf" / "lists").mkdir(parents=True)
    (tmp_path / "conf" / "lists" / "okx.txt").write_text("# pairs\nBTC-USDT\n\n  ETH-USDT  # main\n")
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    text = _stages("  - filter: symbol_universe\n    universe:\n      okx: lists/okx.txt\n      ibkr: [AAPL, MSFT]\n")
    p = parse(text, tmp_path / "conf" / "pipeline.yaml", {})
    assert p.filters[0].params["universe"] == {"okx": frozenset({"BTC-USDT", "ETH-USDT"}),
                                               "ibkr": frozenset({"AAPL", "MSFT"})}


def test_universe_absolute_file_path(tmp_path):
    f = tmp_path / "ibkr.txt"
    f.write_text("SPY\nQQQ\n")
    text = _stages(f"  - filter: symbol_universe\n    universe:\n      ibkr: {f}\n")
    p = parse(text, tmp_path / "elsewhere" / "pipeline.yaml", {})
    assert p.filters[0].params["universe"] == {"ibkr": frozenset({"SPY", "QQQ"})}


def test_universe_missing_file_is_an_error_with_its_path(tmp_path):
    text = _stages("  - filter: confidence\n  - filter: symbol_universe\n    universe:\n      okx: nope.txt\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("stages[1].universe.okx: cannot read ")
    assert "nope.txt" in errors[0]


def test_universe_unknown_venue_key_is_an_error(tmp_path):
    # a typo such as `ibrk:` would otherwise silently drop every ibkr signal
    text = _stages("  - filter: symbol_universe\n    universe:\n      okx: [BTC-USDT]\n      ibrk: [AAPL]\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert any(e.startswith("stages[0].universe") and "ibrk" in e for e in errors), errors


# --- validation errors --------------------------------------------------------------------------

def test_unknown_filter_suggests_the_closest_name(tmp_path):
    errors = _errors(_stages("  - filter: confidnce\n"), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].filter: unknown filter 'confidnce'; did you mean 'confidence'?"]


def test_unknown_filter_with_nothing_close_lists_the_known_ones(tmp_path):
    errors = _errors(_stages("  - filter: zzz\n"), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].filter: unknown filter 'zzz'; known: confidence, regime_compatibility, "
                      "symbol_universe, concentration, margin, position_risk, gross_exposure, "
                      "sector_exposure, daily_loss, correlation_budget"]


def test_wrong_type_is_reported_with_its_path(tmp_path):
    errors = _errors(_stages("  - filter: confidence\n    min: high\n"), tmp_path / "pipeline.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("stages[0].min: input should be a valid number")


def test_out_of_range_and_unknown_parameter(tmp_path):
    text = _stages("  - filter: confidence\n    min: 1.5\n  - filter: concentration\n    max_nav: 0.05\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].min: input should be less than or equal to 1",
                      "stages[1].max_nav: extra inputs are not permitted"]


def test_kelly_parameter_errors_name_the_nested_path(tmp_path):
    text = ("stages:\n  - size: kelly\n    vol_haircut: 2\n    tracker: {window: 0}\n"
            "  - execute:\n      initial_nav_usd: -1\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert "stages[0].vol_haircut: input should be less than or equal to 1" in errors
    assert "stages[0].tracker.window: input should be greater than or equal to 1" in errors
    assert "stages[1].execute.initial_nav_usd: input should be greater than 0" in errors


def test_unknown_top_level_key_suggests(tmp_path):
    errors = _errors("sourse: x\n" + _stages("  - filter: confidence\n"), tmp_path / "pipeline.yaml")
    assert errors == ["sourse: unknown key; did you mean 'source'?"]


def test_missing_size_and_execute(tmp_path):
    errors = _errors("stages:\n  - filter: confidence\n", tmp_path / "pipeline.yaml")
    assert errors == ["stages: missing `- size: kelly`", "stages: missing `- execute:` (it must be the last stage)"]


def test_missing_execute_only(tmp_path):
    errors = _errors("stages:\n  - size: kelly\n", tmp_path / "pipeline.yaml")
    assert errors == ["stages: missing `- execute:` (it must be the last stage)"]


def test_stage_after_execute(tmp_path):
    text = "stages:\n  - size: kelly\n  - execute: {}\n  - filter: confidence\n"
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == ["stages[2]: nothing may follow the execute stage"]


def test_stage_with_two_kinds_or_none(tmp_path):
    text = "stages:\n  - {filter: confidence, size: kelly}\n  - {min: 1}\n  - size: kelly\n  - execute: {}\n"
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == ["stages[0]: must be a mapping with exactly one of filter:, size: or execute:",
                      "stages[1]: must be a mapping with exactly one of filter:, size: or execute:"]


def test_unknown_sizing_and_second_size_stage(tmp_path):
    text = "stages:\n  - size: fixed\n  - size: kelly\n  - size: kelly\n  - execute: {}\n"
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].size: unknown sizing 'fixed'; known: 'kelly'", "stages[2]: a second size stage"]


def test_every_error_is_reported_at_once(tmp_path):
    text = _stages("  - filter: confidence\n    min: high\n  - filter: margn\n  - filter: concentration\n"
                   "    max_nav_fraction: 0\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert [e.split(":")[0] for e in errors] == ["stages[0].min", "stages[1].filter", "stages[2].max_nav_fraction"]


def test_regime_table_errors_have_their_path(tmp_path):
    text = _stages("  - filter: regime_compatibility\n    incompatible: {astrology: [choppy]}\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("stages[0].incompatible: value error, unknown source 'astrology'")


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert _errors("- a\n- b\n", tmp_path / "p.yaml") == ["(root): must be a mapping with a stages: list"]
    assert _errors("stages: [\n", tmp_path / "p.yaml")[0].startswith("(yaml):")


def test_custom_filter_module_not_found(tmp_path):
    errors = _errors(_stages("  - filter: nosuchmodule_apex:fn\n"), tmp_path / "pipeline.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("stages[0].filter: cannot load 'nosuchmodule_apex:fn'")


# --- ${VAR:-default} interpolation ----------------------------------------------------------------

def test_interpolation_default_and_override(tmp_path):
    text = "state_dir: ${APEX_T_DIR:-/tmp/apex-default}\n" + _stages("  - filter: confidence\n    min: ${APEX_T_MIN:-0.7}\n")
    p = parse(text, tmp_path / "pipeline.yaml", {})
    assert p.state_dir == Path("/tmp/apex-default")
    assert p.filters[0].params == {"min": 0.7}
    p = parse(text, tmp_path / "pipeline.yaml", {"APEX_T_DIR": "/srv/apex", "APEX_T_MIN": "0.9"})
    assert p.state_dir == Path("/srv/apex")
    assert p.filters[0].params == {"min": 0.9}


def test_interpolation_empty_default(tmp_path):
    p = parse("clickhouse: ${APEX_T_CH:-}\n" + _stages("  - filter: confidence\n"), tmp_path / "pipeline.yaml", {})
    assert p.clickhouse is None
    assert p.clickhouse_dsn == f"chdb://{(tmp_path / '.apex' / 'clickhouse').resolve()}"


def test_missing_variable_without_default_is_an_error_with_its_line(tmp_path):
    text = _stages("  - filter: confidence\n    min: ${APEX_T_UNSET}\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert "line 3: ${APEX_T_UNSET} is not set and has no default (use ${APEX_T_UNSET:-value})" in errors


def test_relative_state_dir_resolves_against_the_yaml_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    p = parse("state_dir: run/state\n" + _stages("  - filter: confidence\n"), tmp_path / "pipeline.yaml", {})
    assert p.state_dir == tmp_path / "run" / "state"


# --- apex validate ------------------------------------------------------------------------------

def _validate(path: Path):
    return CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_cli_validate_ok(tmp_path):
    f = tmp_path / "pipeline.yaml"
    f.write_text(_stages("  - filter: confidence\n  - filter: margin\n"))
    res = _validate(f)
    assert res.exit_code == 0, res.output
    assert "ok:" in res.output
    assert "filter:confidence → filter:margin → size:kelly → execute:paper" in _flat(res.output)


def test_cli_validate_shipped_pipeline():
    res = _validate(REPO / "pipeline.yaml")
    assert res.exit_code == 0, res.output


def test_cli_validate_reports_every_error_with_its_path_and_exits_1(tmp_path):
    f = tmp_path / "pipeline.yaml"
    f.write_text("stages:\n  - filter: confidence\n    min: high\n  - filter: confidnce\n  - size: kelly\n"
                 "  - execute: {}\n  - filter: margin\n")
    res = _validate(f)
    assert res.exit_code == 1
    out = _flat(res.output)
    assert "stages[0].min: input should be a valid number" in out
    assert "stages[1].filter: unknown filter 'confidnce'; did you mean 'confidence'?" in out
    assert "stages[4]: nothing may follow the execute stage" in out


def test_cli_validate_missing_stages_and_unknown_key(tmp_path):
    f = tmp_path / "pipeline.yaml"
    f.write_text("stagez: []\nstages:\n  - filter: confidence\n")
    res = _validate(f)
    assert res.exit_code == 1
    out = _flat(res.output)
    assert "stagez: unknown key; did you mean 'stages'?" in out
    assert "stages: missing `- size: kelly`" in out
    assert "stages: missing `- execute:`" in out


def test_cli_validate_missing_file(tmp_path):
    res = _validate(tmp_path / "absent.yaml")
    assert res.exit_code == 1
    assert "No such file or directory" in _flat(res.output)


# --- every error at once (issue 16, items 8 and 9) ---------------------------------------------------

def test_a_bad_top_level_section_does_not_hide_the_stages_errors(tmp_path):
    text = "redis: {count: lots}\n" + _stages("  - filter: confidence\n    min: high\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert [e.split(":")[0] for e in errors] == ["redis.count", "stages[0].min"]


def test_inverted_tracker_bounds_are_reported_beside_a_bad_block_ms(tmp_path):
    text = ("redis: {block_ms: 0}\nstages:\n  - size: kelly\n    tracker: {bounds: [1.5, 0.5]}\n"
            "  - execute: {}\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors[0].startswith("redis.block_ms: input should be greater than or equal to 1")
    assert errors[1] == "stages[0].tracker: value error, bounds must satisfy 0 < low <= 1 <= high"
    assert len(errors) == 2


def test_missing_stages_is_one_error_not_three(tmp_path):
    assert _errors("state_dir: x\n", tmp_path / "pipeline.yaml") == ["stages: field required"]


def test_duplicate_keys_are_refused_at_every_level_with_line_and_path(tmp_path):
    text = ("state_dir: a\nstate_dir: b\nredis: {count: 5, count: 6}\nstages:\n"
            "  - filter: confidence\n    min: 0.6\n    min: 0.7\n  - size: kelly\n  - execute: {}\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == [
        "state_dir: line 2: duplicate key 'state_dir' (first on line 1); YAML would keep only the last",
        "redis.count: line 3: duplicate key 'count' (first on line 3); YAML would keep only the last",
        "stages[0].min: line 7: duplicate key 'min' (first on line 6); YAML would keep only the last",
    ]


def test_a_recording_source_that_does_not_exist_is_refused(tmp_path):
    errors = _errors("source: recording:nowhere.jsonl\n" + _stages("  - filter: confidence\n"),
                     tmp_path / "pipeline.yaml")
    assert errors == [f"source: recording {tmp_path / 'nowhere.jsonl'} does not exist"]
    (tmp_path / "here.jsonl").write_text("")
    parse("source: recording:here.jsonl\n" + _stages("  - filter: confidence\n"), tmp_path / "pipeline.yaml", {})


def test_a_filter_name_must_be_a_string(tmp_path):
    errors = _errors(_stages("  - filter: confidence\n    name: [a, b]\n"), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].name: must be a string (it is the drop reason), not list"]


def test_two_filters_with_the_same_drop_reason_are_refused(tmp_path):
    text = _stages("  - filter: confidence\n  - filter: margin\n  - filter: confidence\n    min: 0.9\n"
                   "  - filter: margin\n    name: min_size\n")
    errors = _errors(text, tmp_path / "pipeline.yaml")
    assert errors == [
        "stages[2]: drop reason 'confidence' is also stages[0]'s; give one of them another `name:`",
        "stages[3]: drop reason 'min_size' is the sizing stage's; give the filter another `name:`",
    ]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes a module beside pipeline.yaml; sys.path and sys.modules are restored afterwards."""
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)

    return write


def test_a_filter_module_with_a_syntax_error_is_refused_with_its_file_and_line(tmp_path, user_module):
    user_module("apex_t_syntax", "def keep(signal, portfolio):\n    return signal.confidence >\n")
    errors = _errors(_stages("  - filter: apex_t_syntax:keep\n"), tmp_path / "pipeline.yaml")
    assert len(errors) == 1
    assert errors[0].startswith(f"stages[0].filter: cannot load 'apex_t_syntax:keep': SyntaxError in "
                                f"{tmp_path / 'apex_t_syntax.py'} line 2: ")


def test_a_filter_module_that_raises_on_import_is_refused_with_its_line(tmp_path, user_module):
    user_module("apex_t_raises", "import os\n\nLIMIT = int(os.environ.get('APEX_T_NOPE', 'many'))\n")
    errors = _errors(_stages("  - filter: apex_t_raises:keep\n"), tmp_path / "pipeline.yaml")
    assert errors == ["stages[0].filter: cannot load 'apex_t_raises:keep': ValueError: invalid literal for int() "
                      f"with base 10: 'many' (raised at {tmp_path / 'apex_t_raises.py'} line 3)"]


def test_cli_validate_a_raising_filter_module_is_one_line_without_traceback(tmp_path, user_module):
    user_module("apex_t_boom", "raise RuntimeError('no config for the rules')\n")
    f = tmp_path / "pipeline.yaml"
    f.write_text("redis: {count: lots}\n" + _stages("  - filter: apex_t_boom:keep\n"))
    res = _validate(f)
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    lines = res.output.splitlines()
    assert len(lines) == 2, res.output
    assert "redis.count: input should be a valid integer" in lines[0]
    assert "RuntimeError: no config for the rules" in lines[1] and "apex_t_boom.py line 1" in lines[1]


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    assert _errors("stages: [\n  - a\n", tmp_path / "p.yaml") == [
        "(yaml): line 2, column 3: expected the node content, but found '-' (while parsing a flow node)"]
    assert _errors("\t\n", tmp_path / "p.yaml") == [
        "(yaml): line 1, column 1: found character '\\t' that cannot start any token (while scanning for the next token)"]
