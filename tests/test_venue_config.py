"""pipeline.yaml's ``venues:`` section and the venues built from it (issue 18, items 1 and 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex.cli import app
from connectors.venues.factory import VenueSetupError, build_venues
from connectors.venues.paper import PaperVenue
from connectors.venues.settings import VenueSettings
from dataflows.apex import make_venues
from dataflows.config import ConfigError, load, parse
from helpers import KELLY_AND_EXECUTE
from operators.orders import Order

REPO = Path(__file__).resolve().parents[1]
OKX_ENV = {"OKX_API_KEY": "k-value", "OKX_API_SECRET": "s-value", "OKX_API_PASSPHRASE": "p-value"}
PAPER_OPTIONS = {"slippage_bps": 0.0, "fee_bps": 0.0, "cash_usd": 0.0}


def pipeline(tmp_path: Path, venues: str, env: dict[str, str] | None = None):
    text = f"state_dir: {tmp_path / 'state'}\n{venues}\nstages:\n{KELLY_AND_EXECUTE}"
    return parse(text, tmp_path / "pipeline.yaml", env or {})


def errors(tmp_path: Path, venues: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        pipeline(tmp_path, venues, env)
    return e.value.errors


class Recorded:
    """Stands in for OkxVenue or IbkrVenue: keeps the keywords it was made with."""

    name = "recorded"

    def __init__(self, **kwargs):
        self.kwargs = kwargs


# --- the section -----------------------------------------------------------------------------

def test_without_a_venues_section_every_market_is_on_paper(tmp_path):
    p = pipeline(tmp_path, "")
    assert p.venues == VenueSettings()
    assert (p.venues.kind("okx"), p.venues.kind("ibkr")) == ("paper", "paper")


def test_an_empty_venues_section_is_the_same_as_none(tmp_path):
    assert pipeline(tmp_path, "venues:\n").venues == VenueSettings()


def test_the_shipped_pipeline_has_no_venues_section_and_stays_on_paper():
    p = load(REPO / "pipeline.yaml", {})
    assert p.venues == VenueSettings()
    assert p.execute.venue == "paper"


def test_the_documented_example_takes_its_values_from_the_environment():
    example = REPO / "docs" / "pipeline-venues.example.yaml"
    p = load(example, {"APEX_OKX_URL": "http://127.0.0.1:18080", "APEX_IBKR_PORT": "14002",
                       "APEX_IBKR_ACCOUNT": "DU123456"})
    assert (p.venues.okx.kind, p.venues.okx.url, p.venues.okx.demo) == ("okx", "http://127.0.0.1:18080", True)
    assert (p.venues.ibkr.kind, p.venues.ibkr.port, p.venues.ibkr.account) == ("ibkr", 14002, "DU123456")
    defaults = load(example, {})
    assert (defaults.venues.okx.url, defaults.venues.ibkr.port, defaults.venues.ibkr.account) == ("", 4002, "")


def test_the_documented_section_parses_with_its_defaults(tmp_path):
    p = pipeline(tmp_path, """
venues:
  okx:
    kind: okx
    url: ${APEX_OKX_URL:-}
    demo: true
    credentials: {api_key: OKX_API_KEY, secret: OKX_API_SECRET, passphrase: OKX_API_PASSPHRASE}
  ibkr:
    kind: ibkr
    host: ${APEX_IBKR_HOST:-127.0.0.1}
    port: ${APEX_IBKR_PORT:-4002}
    client_id: 7
    account: ${APEX_IBKR_ACCOUNT:-}
""")
    assert p.venues.okx.url == "" and p.venues.okx.credentials.secret == "OKX_API_SECRET"
    assert (p.venues.ibkr.host, p.venues.ibkr.port, p.venues.ibkr.client_id) == ("127.0.0.1", 4002, 7)


def test_every_mistake_in_the_section_is_reported_at_once_with_its_path(tmp_path):
    found = errors(tmp_path, """
venues:
  okx: {kind: okx, port: 3, demo: maybe}
  ibkr: {kind: ibkr, port: 99999, client_id: -1}
  bitmex: {kind: paper}
""")
    assert sorted(found) == sorted([
        "venues.okx.port: extra inputs are not permitted",
        "venues.okx.demo: input should be a valid boolean, unable to interpret input",
        "venues.ibkr.port: input should be less than or equal to 65535",
        "venues.ibkr.client_id: input should be greater than or equal to 0",
        "venues.bitmex: extra inputs are not permitted",
    ])


def test_a_bad_venues_section_does_not_hide_the_stages_errors(tmp_path):
    text = (f"state_dir: {tmp_path}\nvenues:\n  okx: {{kind: kraken}}\n"
            "stages:\n  - filter: confidence\n    min: high\n" + KELLY_AND_EXECUTE)
    with pytest.raises(ConfigError) as e:
        parse(text, tmp_path / "pipeline.yaml", {})
    assert "venues.okx.kind: input should be 'paper' or 'okx'" in e.value.errors
    assert any(line.startswith("stages[0].min:") for line in e.value.errors)


def test_a_market_needs_its_kind_and_a_venue_of_its_own_market(tmp_path):
    found = errors(tmp_path, "venues:\n  okx: {demo: true}\n  ibkr: {kind: okx}\n")
    assert "venues.okx.kind: field required" in found
    assert "venues.ibkr.kind: input should be 'paper' or 'ibkr'" in found


def test_kind_paper_refuses_connection_settings_it_would_ignore(tmp_path):
    assert errors(tmp_path, "venues:\n  okx: {kind: paper, demo: false, url: 'http://127.0.0.1:1'}\n") == [
        "venues.okx: kind: paper takes no other settings (remove demo, url, or choose the venue's own kind)"]


def test_a_url_with_a_path_or_another_scheme_is_refused_without_repeating_it(tmp_path):
    found = errors(tmp_path, "venues:\n  okx: {kind: okx, url: 'ftp://user:hunter2@host/x'}\n")
    assert found == ["venues.okx.url: must be empty (OKX itself) or http(s)://HOST[:PORT] with no path"]


@pytest.mark.parametrize("value", ["a1b2c3d4-0000-4e5f-9a8b-7c6d5e4f3a2b", "2D8F0C6A9B1E4F7A3C5D8E0F1A2B3C4D",
                                   "MyPassPhrase!", "okx_api_key", "OKXKEY"])
def test_a_credential_written_in_the_file_is_refused_without_repeating_it(tmp_path, value):
    found = errors(tmp_path, f"venues:\n  okx:\n    kind: okx\n    credentials: {{api_key: '{value}'}}\n")
    assert len(found) == 1
    assert found[0].startswith("venues.okx.credentials.api_key: must be the NAME of the environment variable")
    assert value not in found[0]


def test_a_credential_interpolated_into_the_file_is_refused_without_repeating_it(tmp_path):
    found = errors(tmp_path, "venues:\n  okx:\n    kind: okx\n    credentials: {secret: '${OKX_API_SECRET}'}\n",
                   {"OKX_API_SECRET": "9f86d081884c7d659a2feaa0c55ad015"})
    assert found[0].startswith("venues.okx.credentials.secret: must be the NAME")
    assert "9f86d081884c7d659a2feaa0c55ad015" not in " ".join(found)


# --- building them ---------------------------------------------------------------------------

def test_without_a_section_one_paper_venue_serves_every_market(tmp_path):
    venues = build_venues(VenueSettings(), state_dir=tmp_path, paper_options=PAPER_OPTIONS, env={})
    assert set(venues) == {"okx", "ibkr"}
    assert isinstance(venues["okx"], PaperVenue) and venues["okx"] is venues["ibkr"]


def test_make_venues_keeps_the_paper_venue_of_execute(tmp_path):
    p = pipeline(tmp_path, "venues:\n  okx: {kind: paper}\n  ibkr: {kind: paper}\n")
    venues = make_venues(p, env={})
    assert venues["okx"] is venues["ibkr"]
    order = Order("ax" + "0" * 30, "s1", "open", "ibkr", "AAPL", "buy", 10, 100.0, 0)
    assert venues["ibkr"].place_many([order])[0].quantity == 10
    assert venues["okx"].positions() == {("ibkr", "AAPL"): 10}
    assert (tmp_path / "state" / "paper-venue.sqlite").is_file()


def test_okx_and_ibkr_are_made_from_their_settings(tmp_path):
    p = pipeline(tmp_path, """
venues:
  okx: {kind: okx, demo: true, timeout_s: 5}
  ibkr: {kind: ibkr, host: 10.0.0.2, port: 4002, client_id: 11, account: DU42}
""")
    venues = build_venues(p.venues, state_dir=tmp_path, paper_options=PAPER_OPTIONS, env=OKX_ENV,
                          okx_class=Recorded, ibkr_class=Recorded)
    assert venues["okx"].kwargs == {"url": None, "sandbox": True, "api_key": "k-value", "secret": "s-value",
                                    "passphrase": "p-value", "timeout_ms": 5000}
    assert venues["ibkr"].kwargs == {"host": "10.0.0.2", "port": 4002, "client_id": 11, "account": "DU42",
                                     "connect_timeout": 10.0, "request_timeout": 10.0}
    assert not (tmp_path / "paper-venue.sqlite").exists()  # no market left on paper


def test_a_market_left_out_stays_on_paper_beside_a_real_one(tmp_path):
    p = pipeline(tmp_path, "venues:\n  ibkr: {kind: ibkr}\n")
    venues = build_venues(p.venues, state_dir=tmp_path, paper_options=PAPER_OPTIONS, env={},
                          ibkr_class=Recorded)
    assert isinstance(venues["okx"], PaperVenue)
    assert venues["ibkr"].kwargs["account"] == ""


def test_credentials_come_from_the_variables_the_file_names(tmp_path):
    p = pipeline(tmp_path, "venues:\n  okx:\n    kind: okx\n"
                           "    credentials: {api_key: DESK_KEY, secret: DESK_SECRET, passphrase: DESK_PASS}\n")
    env = {"DESK_KEY": "dk", "DESK_SECRET": "ds", "DESK_PASS": "dp", **OKX_ENV}
    made = build_venues(p.venues, state_dir=tmp_path, paper_options=PAPER_OPTIONS, env=env, okx_class=Recorded)
    assert [made["okx"].kwargs[k] for k in ("api_key", "secret", "passphrase")] == ["dk", "ds", "dp"]


def test_a_missing_credential_is_refused_naming_the_variable(tmp_path):
    p = pipeline(tmp_path, "venues:\n  okx: {kind: okx}\n")
    env = {"OKX_API_KEY": "k-value", "OKX_API_SECRET": ""}  # empty is as good as unset
    with pytest.raises(VenueSetupError) as e:
        build_venues(p.venues, state_dir=tmp_path, paper_options=PAPER_OPTIONS, env=env, okx_class=Recorded)
    assert str(e.value) == ("venues.okx.credentials.secret: environment variable OKX_API_SECRET is not set; "
                            "venues.okx.credentials.passphrase: environment variable OKX_API_PASSPHRASE is not set")
    assert "k-value" not in str(e.value)


def test_a_simulator_on_this_machine_needs_no_credentials(tmp_path):
    p = pipeline(tmp_path, "venues:\n  okx: {kind: okx, url: 'http://127.0.0.1:18080'}\n")
    made = build_venues(p.venues, state_dir=tmp_path, paper_options=PAPER_OPTIONS, env={}, okx_class=Recorded)
    assert made["okx"].kwargs["url"] == "http://127.0.0.1:18080"
    assert made["okx"].kwargs["api_key"]  # a stand-in: the client refuses to sign without one


# --- a universe that leaves out a configured venue (issue 24, mistakes 1) -----------------------

BOTH_SIM = "venues:\n  okx: {kind: okx, url: 'http://127.0.0.1:1'}\n  ibkr: {kind: ibkr}\n"


def universe_pipeline(tmp_path: Path, venues: str, stages: str, books: str = "") -> str:
    text = f"state_dir: {tmp_path / 'state'}\n{venues}{books}stages:\n{stages}{KELLY_AND_EXECUTE}"
    (tmp_path / "pipeline.yaml").write_text(text)
    return text


def test_a_universe_leaving_out_a_configured_venue_is_refused_with_every_other_error(tmp_path):
    text = universe_pipeline(tmp_path, BOTH_SIM, "  - filter: confidence\n    min: 2\n"
                             "  - filter: symbol_universe\n    name: listed\n    universe: {okx: [BTC-USDT]}\n")
    with pytest.raises(ConfigError) as e:
        parse(text, tmp_path / "pipeline.yaml", {})
    assert e.value.errors == [
        "stages[0].min: input should be less than or equal to 1",
        "stages[1].universe: leaves out ibkr, which venues.ibkr configures: every ibkr signal would be dropped "
        "as 'listed'; list its symbols, or `ibkr: []` to trade none there"]
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "pipeline.yaml")])
    assert res.exit_code == 1 and "ok:" not in res.output
    assert "stages[1].universe: leaves out ibkr" in res.output and "stages[0].min" in res.output


def test_a_venue_listed_as_empty_and_markets_left_on_paper_need_no_symbols(tmp_path):
    stages = "  - filter: symbol_universe\n    universe: {okx: [BTC-USDT], ibkr: []}\n"
    p = parse(universe_pipeline(tmp_path, BOTH_SIM, stages), tmp_path / "pipeline.yaml", {})
    assert p.filters[0].params["universe"]["ibkr"] == frozenset()
    only_okx = "venues:\n  okx: {kind: okx, url: 'http://127.0.0.1:1'}\n"
    stages = "  - filter: symbol_universe\n    universe: {okx: [BTC-USDT]}\n"
    assert parse(universe_pipeline(tmp_path, only_okx, stages), tmp_path / "pipeline.yaml", {}).venues.ibkr is None


def test_a_book_that_takes_one_market_needs_only_that_market_in_its_universe(tmp_path):
    own = ("books:\n  crypto:\n    takes: {venue: okx}\n    stages:\n"
           "      - filter: symbol_universe\n        universe: {okx: [BTC-USDT]}\n"
           "      - size: kelly\n      - execute: {venue: paper}\n"
           "  rest:\n    takes: {venue: ibkr}\n")
    stages = "  - filter: symbol_universe\n    universe: {okx: [BTC-USDT]}\n"
    with pytest.raises(ConfigError) as e:
        parse(universe_pipeline(tmp_path, BOTH_SIM, stages, own), tmp_path / "pipeline.yaml", {})
    # the pipeline's stages run book `rest`, which takes ibkr; book `crypto` takes okx alone
    assert e.value.errors == ["stages[0].universe: leaves out ibkr, which venues.ibkr configures: every ibkr "
                              "signal would be dropped as 'symbol_universe'; list its symbols, or `ibkr: []` "
                              "to trade none there"]
