"""Instruments and account from the venues (issue 18): the instrument lists cached from the
real clients against the simulators, ``universe: {okx: venue}`` reading them, the refresh
once a day (an injected ``now``), a venue that cannot be asked keeping yesterday's list, and
the margin filter reading IBKR's AvailableFunds instead of the book's own estimate."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from connectors import instruments_cache as cache
from connectors.sims.ibkr import running as ibkr_running
from connectors.venues import Instrument
from connectors.venues.ibkr import IbkrVenue
from connectors.venues.paper import PaperVenue
from dataflows.config import ConfigError, parse, read_venue_lists
from dataflows.startup import refresh_instruments
from dataflows.venue_funds import VenueFunds
from operators.exits import TradeTerms
from operators.fill import Fill
from operators.kelly import KellyParams
from operators.portfolio import Portfolio
from tests.helpers import APEX, KELLY_AND_EXECUTE, entry, run_entries, write_recording
from tests.ibkr_fixtures import PRICES as IBKR_PRICES
from tests.okx_fixtures import CREDENTIAL_ENV, PRICES, free_port, okx_sim, okx_venue  # noqa: F401  (fixtures)

NOW = 1_780_000_000.0  # an instant in 2026; every refresh below is told the time, never waits for it
DAY = 86_400.0


def pipeline_text(state: os.PathLike, universe: str, venues: str = "") -> str:
    return (f"state_dir: {state}\n{venues}stages:\n  - filter: symbol_universe\n    universe: {universe}\n"
            f"{KELLY_AND_EXECUTE}")


def okx_venues(url: str) -> str:
    return f"venues:\n  okx: {{kind: okx, url: '{url}'}}\n"


def test_the_cache_is_written_from_okx_with_each_instruments_rules(okx_sim, tmp_path):
    directory = tmp_path / "instruments"
    assert cache.refresh({"okx": okx_sim.venue}, directory, NOW) == ["okx"]
    lines = (directory / "okx.txt").read_text().splitlines()
    assert lines[0].startswith("# okx instruments from OkxVenue(http://127.0.0.1:") and "2026-" in lines[0]
    assert lines[1:] == sorted(PRICES)
    doc = json.loads((directory / "okx.json").read_text())
    assert doc["fetched_at_s"] == NOW
    assert doc["instruments"]["BTC-USDT"] == {"lot_size": 1e-8, "tick_size": 0.01, "min_size": 1e-5}
    # the simulator's tick is about a ten-thousandth of the price: 0.001 for ETH at 50
    assert cache.read_rules(directory, "okx")["ETH-USDT"] == Instrument("okx", "ETH-USDT", 1e-8, 0.001, 1e-5)
    assert sorted(p.name for p in directory.iterdir()) == ["okx.json", "okx.txt"]  # no temporary file left


def test_symbol_universe_venue_reads_the_cache_and_drops_what_the_venue_does_not_list(okx_sim, tmp_path):
    state = tmp_path / "state"
    p = parse(pipeline_text(state, "{okx: venue, ibkr: [AAPL]}", okx_venues(okx_sim.url)), tmp_path / "p.yaml", {})
    cache.refresh({"okx": okx_sim.venue}, state / "instruments", NOW)
    assert read_venue_lists(p) == []
    rec = [entry("1767261600000-0", signal_id="listed", symbol="ETH-USDT"),
           entry("1767261600001-0", signal_id="unlisted", symbol="DOGE-USDT")]  # not on the simulator
    paper = PaperVenue(state / "paper-venue.sqlite")
    got = run_entries(tmp_path, p, rec, venues={"okx": paper, "ibkr": paper}).table()
    assert got == [("1767261600000-0", "filled", ""), ("1767261600001-0", "dropped", "symbol_universe")]


def test_an_old_cache_is_refreshed_and_a_fresh_one_is_not(okx_sim, tmp_path):
    directory = tmp_path / "instruments"
    assert cache.refresh({"okx": okx_sim.venue}, directory, NOW) == ["okx"]
    okx_sim.server.set_price("TRX-USDT", 0.5)  # unchanged list; what matters is whether it is asked
    assert cache.refresh({"okx": okx_venue(okx_sim.url)}, directory, NOW + DAY - 1) == []
    assert cache.fetched_at(directory, "okx") == NOW
    assert cache.refresh({"okx": okx_venue(okx_sim.url)}, directory, NOW + DAY) == ["okx"]
    assert cache.fetched_at(directory, "okx") == NOW + DAY
    (directory / "okx.json").unlink()  # half a cache is no cache
    assert cache.refresh({"okx": okx_venue(okx_sim.url)}, directory, NOW + DAY) == ["okx"]


def test_a_venue_that_cannot_be_asked_keeps_the_old_files_and_says_so_in_one_line(okx_sim, tmp_path):
    directory = tmp_path / "instruments"
    cache.refresh({"okx": okx_sim.venue}, directory, NOW)
    before = {p.name: p.read_text() for p in directory.iterdir()}
    said: list[str] = []
    nobody = okx_venue(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert cache.refresh({"okx": nobody}, directory, NOW + 2 * DAY, say=said.append) == []
    assert {p.name: p.read_text() for p in directory.iterdir()} == before
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith("instruments of okx:") and "keeping the list of 2026-" in said[0]


def test_a_market_on_the_paper_venue_is_never_cached(tmp_path):
    paper = PaperVenue(tmp_path / "paper.sqlite")
    assert cache.refresh({"okx": paper, "ibkr": paper}, tmp_path / "instruments", NOW) == []
    assert not (tmp_path / "instruments").exists()


def test_ibkr_lists_the_symbols_it_is_asked_about_and_knows(tmp_path):
    with ibkr_running(cash=100_000.0, prices=IBKR_PRICES) as gw:
        venue = IbkrVenue("127.0.0.1", gw.port, 9, "DU1234567", connect_timeout=2.0, request_timeout=2.0)
        try:
            p = parse(pipeline_text(tmp_path / "state", "{okx: [BTC-USDT], ibkr: [MSFT, NOPE, AAPL]}"),
                      tmp_path / "p.yaml", {})
            assert refresh_instruments(p, {"ibkr": venue}, NOW, print) == ["ibkr"]
        finally:
            venue.close()
    directory = tmp_path / "state" / "instruments"
    assert cache.read_symbols(directory, "ibkr") == ["AAPL", "MSFT"]
    assert cache.read_rules(directory, "ibkr")["AAPL"] == Instrument("ibkr", "AAPL", 1.0, 0.01, 1.0)


def test_venue_for_a_market_on_the_paper_venue_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse(pipeline_text(tmp_path / "state", "{okx: venue, ibkr: [AAPL]}"), tmp_path / "p.yaml", {})
    assert e.value.errors == ["stages[0].universe.okx: 'venue' is the list okx's own venue gives, but okx "
                              "trades on the paper venue (give it one under venues.okx)"]


def test_validate_refuses_it_in_one_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(tmp_path / "state", "{okx: venue}"))
    res = subprocess.run([APEX, "validate", str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "APEX_ENV": "paper"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error {path}: stages[0].universe.okx: 'venue' is the list okx's "
                                               "own venue gives, but okx trades on the paper venue (give it one "
                                               "under venues.okx)"]


def test_apex_run_fetches_the_list_before_the_flow_reads_it(okx_sim, tmp_path):
    state = tmp_path / "state"
    path = tmp_path / "p.yaml"
    path.write_text(pipeline_text(state, "{okx: venue, ibkr: [AAPL]}", okx_venues(okx_sim.url)))
    rec = write_recording(tmp_path / "rec.jsonl", [entry("1767261600000-0", signal_id="unlisted",
                                                         symbol="DOGE-USDT")])
    res = subprocess.run([APEX, "run", str(path), "--source", f"recording:{rec}", "--no-progress"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "APEX_ENV": "paper", **CREDENTIAL_ENV})
    assert res.returncode == 0, res.stderr
    assert cache.read_symbols(state / "instruments", "okx") == sorted(PRICES)
    assert okx_sim.logged() == []  # the one signal was not in the venue's list: nothing sent


def test_a_missing_list_is_one_line_not_a_traceback(okx_sim, tmp_path):
    p = parse(pipeline_text(tmp_path / "state", "{okx: venue}", okx_venues(okx_sim.url)), tmp_path / "p.yaml", {})
    (problem,) = read_venue_lists(p)
    assert problem.startswith("stages[0].universe.okx: no instrument list of okx at ") and "apex run" in problem


# margin from IBKR

MARGIN = """
  - filter: margin
    initial_margin_rate: 0.5
    max_utilization: 0.8
"""


def margin_pipeline(tmp_path, venues: str = ""):
    text = f"state_dir: {tmp_path / 'state'}\n{venues}stages:\n{MARGIN}{KELLY_AND_EXECUTE}"
    return parse(text, tmp_path / "p.yaml", {})


BIG = entry("1767261600000-0", signal_id="big", venue="ibkr", symbol="AAPL", reference_price=100.0,
            suggested_kelly=0.01, max_position_usd=5000.0)  # 5,000 USD: 2,500 of margin


def test_the_book_alone_passes_the_signal(tmp_path):
    p = margin_pipeline(tmp_path)  # NAV 1,000,000 and nothing held: 2,500 is nothing
    assert run_entries(tmp_path, p, [BIG]).table() == [("1767261600000-0", "filled", "")]


def test_margin_reads_ibkrs_available_funds_and_drops_what_they_cannot_cover(tmp_path):
    with ibkr_running(cash=1_000.0, orders_log=tmp_path / "orders.jsonl", prices=IBKR_PRICES) as gw:
        ib = IbkrVenue("127.0.0.1", gw.port, 8, "DU1234567", connect_timeout=2.0, request_timeout=2.0)
        try:
            assert ib.available_funds_now() == 1_000.0  # pushed by IB on connect, read without asking
            p = margin_pipeline(tmp_path, f"venues:\n  ibkr: {{kind: ibkr, port: {gw.port}, client_id: 8}}\n")
            paper = PaperVenue(tmp_path / "state" / "paper-venue.sqlite")
            got = run_entries(tmp_path, p, [BIG], venues={"okx": paper, "ibkr": ib}).table()
        finally:
            ib.close()
    assert got == [("1767261600000-0", "dropped", "margin")]  # 2,500 > 0.8 × 1,000
    assert not (tmp_path / "orders.jsonl").exists() or (tmp_path / "orders.jsonl").read_text() == ""


class Pushed:
    """A venue that holds a pushed figure; counts how often it is read."""

    name = "ibkr"

    def __init__(self, usd: float | None):
        self.usd, self.reads = usd, 0

    def available_funds_now(self) -> float | None:
        self.reads += 1
        return self.usd


def test_the_book_takes_the_venues_figure_at_most_every_few_seconds(tmp_path):
    venue, paper = Pushed(1_000.0), PaperVenue(tmp_path / "paper.sqlite")
    clock = [100.0]
    funds = VenueFunds({"ibkr": venue, "okx": paper}.__getitem__, every_s=2.0, clock=lambda: clock[0])
    book = Portfolio(1_000_000.0, KellyParams())
    funds.update(book)
    assert book.view(0.0).available_funds("ibkr", 0.5) == 1_000.0
    assert book.view(0.0).available_funds("okx", 0.5) == 1_000_000.0  # the paper venue: the book's estimate
    clock[0] += 1.0
    funds.update(book)
    assert venue.reads == 1
    clock[0] += 1.0
    venue.usd = None  # nothing pushed (yet): the book estimates again
    funds.update(book)
    assert venue.reads == 2 and book.view(0.0).available_funds("ibkr", 0.5) == 1_000_000.0


def test_orders_in_flight_are_taken_off_the_venues_figure_until_they_are_settled():
    book = Portfolio(1_000_000.0, KellyParams())
    book.set_available_funds("ibkr", 10_000.0)
    expected = Fill("s1", "ax1", "", "ibkr", "AAPL", "buy", 20, 100.0, 0.0, 1)
    terms = TradeTerms("s1", "macro", "ibkr", "AAPL", "buy", 20, 100.0, 1, 0.0, "trending_up", 0.05, (), 10**9,
                       False, 0.6)
    book.reserve(expected, terms)  # IB has not filled it yet: its figure does not know of it
    assert book.view(0.0).available_funds("ibkr", 0.5) == 10_000.0 - 0.5 * 2_000.0
    book.settle(expected, expected, terms)  # filled: the next figure IB pushes counts it
    assert book.view(0.0).available_funds("ibkr", 0.5) == 10_000.0


# --- an instrument the venue does not list (issue 24, mistakes 2) --------------------------------

SIZED = "  - filter: confidence\n"  # no universe: the venue's own list is the only word on the symbol


def _sizing_event(outcome) -> tuple[str, str, str]:
    (ev,) = [e for e in outcome.events if e.stage == "POSITION_SIZING"]
    return ev.outcome, ev.reason, ev.details.get("why", "")


def test_a_symbol_the_venue_does_not_list_is_dropped_as_not_listed_naming_it(okx_sim, tmp_path):
    okx_sim.venue.instruments()  # its list is in: the venue has said what it trades
    p = parse(f"state_dir: {tmp_path / 'state'}\n{okx_venues(okx_sim.url)}stages:\n{SIZED}{KELLY_AND_EXECUTE}",
              tmp_path / "p.yaml", {})
    col = run_entries(tmp_path, p, [entry("1767261600000-0", signal_id="unlisted", symbol="DOGE-USDT")],
                      venues={"okx": okx_sim.venue, "ibkr": PaperVenue(tmp_path / "paper.sqlite")})
    assert col.table() == [("1767261600000-0", "dropped", "not_listed")]
    assert _sizing_event(col.outcomes[0]) == ("dropped", "not_listed", "okx DOGE-USDT: its venue does not list it")
    assert okx_sim.server.placements() == {}  # nothing was sent


def test_a_symbol_whose_rules_are_still_being_asked_is_not_called_unlisted(okx_sim, tmp_path):
    p = parse(f"state_dir: {tmp_path / 'state'}\n{okx_venues(okx_sim.url)}stages:\n{SIZED}{KELLY_AND_EXECUTE}",
              tmp_path / "p.yaml", {})
    # a venue just made has loaded nothing yet: the first signal's instrument is asked, not known
    col = run_entries(tmp_path, p, [entry("1767261600000-0", signal_id="early", symbol="ETH-USDT")],
                      venues={"okx": okx_sim.venue, "ibkr": PaperVenue(tmp_path / "paper.sqlite")})
    assert col.table() == [("1767261600000-0", "dropped", "instrument_pending")]
    assert _sizing_event(col.outcomes[0]) == (
        "dropped", "instrument_pending", "okx ETH-USDT: its venue has not said yet in what lots it trades")
