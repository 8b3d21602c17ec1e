"""Paper or live, and no credential in any output (issue 18, items 3 and 4).

Live trading never starts by accident: it needs APEX_ENV=live, APEX_LIVE_CONFIRM=yes,
a real venue for every market, none of them on a demo or paper environment, and every
credential present. Each refusal is a sentence naming what to change; none of them, nor
anything `apex validate` or `apex run` prints, ever shows a credential's value.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.venues.factory import VenueSetupError, build_venues, okx_credentials
from connectors.venues.settings import VenueSettings
from operators.trading_mode import refusals

REPO = Path(__file__).resolve().parents[1]
APEX = str(Path(sys.executable).with_name("apex"))

# unique strings no message could contain by chance
MARKERS = {"OKX_API_KEY": "mk-key-5e1f0c2a", "OKX_API_SECRET": "mk-secret-a93b7d41",
           "OKX_API_PASSPHRASE": "mk-pass-3c88e9f0"}
CONFIRMED = {"APEX_ENV": "live", "APEX_LIVE_CONFIRM": "yes", **MARKERS}

LIVE_OKX = {"kind": "okx", "demo": False}
LIVE_IBKR = {"kind": "ibkr", "port": 4001, "account": "U1234567"}


def venues(**markets) -> VenueSettings:
    return VenueSettings.model_validate(markets)


def no_marker(text: str) -> None:
    for value in MARKERS.values():
        assert value not in text


# --- the rules, as a pure function of the environment and the settings ------------------------

def test_paper_is_the_default_and_the_paper_venue_is_paper():
    assert refusals({}, VenueSettings()) == []
    assert refusals({"APEX_ENV": "paper"}, venues(okx={"kind": "paper"}, ibkr={"kind": "paper"})) == []


def test_an_unknown_apex_env_is_refused():
    assert refusals({"APEX_ENV": "staging"}, VenueSettings()) == ["APEX_ENV must be paper or live, not 'staging'"]


def test_paper_takes_the_venues_own_paper_environments():
    assert refusals(MARKERS, venues(okx={"kind": "okx", "demo": True},
                                    ibkr={"kind": "ibkr", "port": 4002, "account": "DU111"})) == []
    # a simulator on this machine: demo or not, no credentials needed; an IBKR simulator on any port
    assert refusals({}, venues(okx={"kind": "okx", "url": "http://127.0.0.1:18080", "demo": False},
                               ibkr={"kind": "ibkr", "host": "localhost", "port": 17497})) == []


def test_paper_refuses_a_venue_that_would_trade_live():
    reasons = refusals(MARKERS, venues(okx={"kind": "okx", "demo": False}, ibkr=LIVE_IBKR))
    assert reasons == [
        "APEX_ENV=paper: venues.okx would trade on OKX's live environment (demo: false); "
        "set demo: true for OKX demo trading, or point url at a simulator",
        "APEX_ENV=paper: venues.ibkr.port 4001 is IB Gateway's live port; use its paper port (4002 IB Gateway, 7497 TWS)",
        "APEX_ENV=paper: venues.ibkr.account is a live account; use the paper account (it starts with DU)",
    ]


def test_live_without_the_confirmation_is_refused():
    env = {k: v for k, v in CONFIRMED.items() if k != "APEX_LIVE_CONFIRM"}
    assert refusals(env, venues(okx=LIVE_OKX, ibkr=LIVE_IBKR)) == [
        "APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment"]
    assert refusals({**env, "APEX_LIVE_CONFIRM": "y"}, venues(okx=LIVE_OKX, ibkr=LIVE_IBKR)) != []


def test_live_with_everything_in_place_starts():
    assert refusals(CONFIRMED, venues(okx=LIVE_OKX, ibkr=LIVE_IBKR)) == []


@pytest.mark.parametrize("settings", [VenueSettings(), venues(okx=LIVE_OKX), venues(okx=LIVE_OKX, ibkr={"kind": "paper"})],
                         ids=["no venues section", "ibkr left out", "ibkr kind paper"])
def test_live_refuses_a_market_on_the_paper_venue(settings):
    reasons = refusals(CONFIRMED, settings)
    assert ("APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
            "give venues.ibkr its own kind, or run with APEX_ENV=paper") in reasons


def test_live_refuses_demo_trading_a_simulator_and_a_paper_gateway():
    assert refusals(CONFIRMED, venues(okx={"kind": "okx"}, ibkr={"kind": "ibkr", "account": "DU1"})) == [
        "APEX_ENV=live: venues.okx.demo is true (OKX demo trading); set demo: false to trade live",
        "APEX_ENV=live: venues.ibkr.port 4002 is IB Gateway's paper port; use its live port (4001 IB Gateway, 7496 TWS)",
        "APEX_ENV=live: venues.ibkr.account is a paper account (DU…); name the live account",
    ]
    sim = venues(okx={"kind": "okx", "url": "http://127.0.0.1:18080", "demo": False},
                 ibkr={"kind": "ibkr", "port": 4001})
    assert refusals(CONFIRMED, sim) == [
        "APEX_ENV=live: venues.okx.url points at a simulator on this machine; leave it empty to trade on OKX",
        "APEX_ENV=live: venues.ibkr.account must name the account to trade",
    ]


def test_live_with_a_missing_credential_is_refused_naming_the_variable():
    env = {k: v for k, v in CONFIRMED.items() if k != "OKX_API_PASSPHRASE"}
    assert refusals(env, venues(okx=LIVE_OKX, ibkr=LIVE_IBKR)) == [
        "venues.okx.credentials.passphrase: environment variable OKX_API_PASSPHRASE is not set"]


# --- no credential in any output ----------------------------------------------------------------

SETTINGS = [VenueSettings(), venues(okx=LIVE_OKX), venues(okx={"kind": "okx"}, ibkr=LIVE_IBKR),
            venues(okx={"kind": "okx", "url": "http://127.0.0.1:1"}), venues(okx=LIVE_OKX, ibkr=LIVE_IBKR)]
ENVS = [MARKERS, {**MARKERS, "APEX_ENV": "live"}, CONFIRMED, {**CONFIRMED, "APEX_ENV": "staging"},
        {"APEX_ENV": "live", "OKX_API_KEY": MARKERS["OKX_API_KEY"]}]


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("settings", SETTINGS)
def test_no_refusal_shows_a_credential(env, settings):
    no_marker("\n".join(refusals(env, settings)))


def test_neither_the_settings_nor_the_credentials_built_from_them_show_a_value(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = venues(okx=LIVE_OKX)
    creds = okx_credentials(settings.okx, MARKERS)
    assert creds.secret.get_secret_value() == MARKERS["OKX_API_SECRET"]  # the value is there, only hidden
    no_marker(repr(settings) + str(settings) + repr(creds) + str(creds) + repr(settings.okx.model_dump()))
    with pytest.raises(VenueSetupError) as e:
        build_venues(settings, state_dir=tmp_path, paper_options={}, env={"OKX_API_KEY": MARKERS["OKX_API_KEY"]},
                     okx_class=lambda **kw: None)
    no_marker(str(e.value) + repr(e.value) + caplog.text)


def apex(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("APEX_", "OKX_"))}
    return subprocess.run([APEX, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**base, "COLUMNS": "200", **env})


def shipped_with(tmp_path: Path, venues_yaml: str, name: str = "pipeline.yaml") -> Path:
    """The shipped pipeline in ``tmp_path`` (its recordings and universe beside it) with a venues section."""
    for folder in ("recordings", "universe"):
        if not (tmp_path / folder).exists():
            (tmp_path / folder).symlink_to(REPO / folder)
    path = tmp_path / name
    path.write_text((REPO / "pipeline.yaml").read_text() + venues_yaml)
    return path


OKX_SECTION = """
venues:
  okx:
    kind: okx
    url: ${APEX_OKX_URL:-}
    demo: false
    credentials: {api_key: OKX_API_KEY, secret: OKX_API_SECRET, passphrase: OKX_API_PASSPHRASE}
"""


def test_validate_in_live_reports_the_run_refusals_without_a_credential(tmp_path):
    path = shipped_with(tmp_path, OKX_SECTION)
    res = apex("validate", path.name, cwd=tmp_path, env={"APEX_ENV": "live", **MARKERS})
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.splitlines() == [
        f"error {path.name}: APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment",
        f"error {path.name}: APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
        "give venues.ibkr its own kind, or run with APEX_ENV=paper",
    ]
    no_marker(res.stdout + res.stderr)
    ok = apex("validate", path.name, cwd=tmp_path, env={"APEX_ENV": "paper"})  # paper: OKX live is refused
    assert ok.returncode == 1 and "APEX_ENV=paper: venues.okx would trade on OKX's live environment" in ok.stderr


def test_run_in_live_is_refused_before_anything_is_built_without_a_credential(tmp_path):
    path = shipped_with(tmp_path, OKX_SECTION)
    env = {"APEX_ENV": "live", "APEX_LIVE_CONFIRM": "yes", **MARKERS, "OKX_API_SECRET": ""}
    res = apex("run", path.name, "--state-dir", "state", "--no-progress", cwd=tmp_path, env=env)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
        "give venues.ibkr its own kind, or run with APEX_ENV=paper",
        "venues.okx.credentials.secret: environment variable OKX_API_SECRET is not set",
    ]
    no_marker(res.stdout + res.stderr)
    assert not (tmp_path / "state").exists()


def test_a_paper_run_with_every_market_on_paper_decides_as_without_the_section(tmp_path):
    plain = shipped_with(tmp_path, "", "plain.yaml")
    named = shipped_with(tmp_path, "\nvenues:\n  okx: {kind: paper}\n  ibkr: {kind: paper}\n", "named.yaml")
    summaries = []
    for path in (plain, named):
        out = tmp_path / f"{path.stem}.json"
        res = apex("run", path.name, "--state-dir", f"state-{path.stem}", "--no-progress", "--json", str(out),
                   cwd=tmp_path, env=MARKERS)
        assert res.returncode == 0, res.stderr
        no_marker(res.stdout + res.stderr)
        summaries.append(json.loads(out.read_text()))
    keys = ("entries", "outcomes", "fills", "closes", "realized_pnl_usd", "filter_drop_rate")
    before, after = ({k: s[k] for k in keys} for s in summaries)
    assert before == after
    assert summaries[0]["fills"] > 0


# --- every live mistake at once (issue 24, mistakes 5) ------------------------------------------

def test_live_names_every_mistake_at_once_none_hiding_another():
    settings = venues(okx={"kind": "okx", "url": "http://127.0.0.1:18080"}, ibkr={"kind": "ibkr"})
    assert refusals({"APEX_ENV": "live"}, settings) == [
        "APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment",
        "APEX_ENV=live: venues.okx.url points at a simulator on this machine; leave it empty to trade on OKX",
        "APEX_ENV=live: venues.okx.demo is true (OKX demo trading); set demo: false to trade live",
        "APEX_ENV=live: venues.ibkr.port 4002 is IB Gateway's paper port; use its live port (4001 IB Gateway, 7496 TWS)",
        "APEX_ENV=live: venues.ibkr.account must name the account to trade",
        # OKX itself, once the URL is emptied, needs them: said now rather than on the next try
        "venues.okx.credentials.api_key: environment variable OKX_API_KEY is not set",
        "venues.okx.credentials.secret: environment variable OKX_API_SECRET is not set",
        "venues.okx.credentials.passphrase: environment variable OKX_API_PASSPHRASE is not set",
    ]


def test_a_gateway_on_a_port_of_its_own_is_taken_live_with_a_live_account():
    """IB lets the operator choose the API port (and Docker images of the gateway remap it), so
    a port is refused in live only when it is one of IB's paper ports; the live account, named
    and not a paper one (DU…), is what says the run trades real money (README, Paper or live)."""
    assert refusals(CONFIRMED, venues(okx=LIVE_OKX, ibkr={**LIVE_IBKR, "port": 4003})) == []
    assert refusals(CONFIRMED, venues(okx=LIVE_OKX, ibkr={**LIVE_IBKR, "port": 4003, "account": "DU1"})) == [
        "APEX_ENV=live: venues.ibkr.account is a paper account (DU…); name the live account"]


STAGE_MISTAKE = "  - filter: confidence\n    min: 0.65\n"


@pytest.mark.parametrize("command", [["validate"], ["run", "--state-dir", "state", "--no-progress"]])
def test_a_file_with_other_mistakes_still_names_its_live_ones(tmp_path, command):
    path = shipped_with(tmp_path, OKX_SECTION.replace("demo: false", "demo: true"))
    path.write_text(path.read_text().replace(STAGE_MISTAKE, "  - filter: confidence\n    min: 7\n"))
    res = apex(*command[:1], path.name, *command[1:], cwd=tmp_path, env={"APEX_ENV": "live", **MARKERS})
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout
    assert res.stderr.splitlines() == [f"error {path.name}: {line}" for line in (
        "stages[0].min: input should be less than or equal to 1",
        "APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment",
        "APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
        "give venues.ibkr its own kind, or run with APEX_ENV=paper",
        "APEX_ENV=live: venues.okx.demo is true (OKX demo trading); set demo: false to trade live")]
    no_marker(res.stdout + res.stderr)
    assert not (tmp_path / "state").exists()


def test_bytewax_runs_gate_names_them_together_too(tmp_path, monkeypatch):
    from dataflows.gates import Refused, load_pipeline

    path = shipped_with(tmp_path, OKX_SECTION)
    path.write_text(path.read_text().replace(STAGE_MISTAKE, "  - filter: confidence\n    min: 7\n"))
    monkeypatch.setenv("APEX_ENV", "live")
    monkeypatch.setenv("APEX_LIVE_CONFIRM", "yes")
    for name, value in MARKERS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("APEX_OKX_URL", raising=False)
    with pytest.raises(Refused) as e:
        load_pipeline(path)
    assert e.value.lines == [f"error {path}: stages[0].min: input should be less than or equal to 1",
                             f"error {path}: APEX_ENV=live: ibkr orders would go to the built-in paper venue; "
                             "give venues.ibkr its own kind, or run with APEX_ENV=paper"]
