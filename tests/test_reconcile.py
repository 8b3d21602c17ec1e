"""Start-up reconciliation (issue 18, item 5): the book against what each venue holds.

Driven with the real paper venue and with small venues passed in; the pure comparison's
promises are checked as properties.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.reconcile import format_report, reconcile
from connectors.venues import Instrument, VenueDown
from connectors.venues.paper import PaperVenue
from operators.orders import Order, client_order_id
from operators.reconcile import (IGNORED_BUT_BOOKED, POSITION_MISMATCH, UNKNOWN_OPEN_ORDER, VENUE_UNREACHABLE,
                                 Aside, Difference, adoptable, compare_holdings, compare_positions, explained,
                                 format_aside, tolerance)

SETTINGS = dict(derandomize=True, database=None, deadline=None)


def order(signal_id: str, market: str, symbol: str, side: str, qty: float, price: float = 100.0) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", market, symbol, side, qty, price, 0)


def paper(tmp_path) -> PaperVenue:
    return PaperVenue(tmp_path / "paper-venue.sqlite")


class Held:
    """A venue that holds what it is given and counts how often it is asked."""

    def __init__(self, name: str, positions=None, open_orders=(), lot: float = 1e-8, down: str = "",
                 min_size: float | None = None):
        self.name, self.held, self.open, self.lot, self.down = name, dict(positions or {}), list(open_orders), lot, down
        self.min_size = lot if min_size is None else min_size
        self.asked = 0

    def positions(self):
        self.asked += 1
        if self.down:
            raise VenueDown(self.down)
        return self.held

    def open_orders(self):
        return self.open

    def instrument(self, venue, symbol):
        return Instrument(venue, symbol, self.lot, self.lot, self.min_size)


# --- with the paper venue ----------------------------------------------------------------------

def test_a_book_that_matches_the_paper_venue_reports_nothing(tmp_path):
    venue = paper(tmp_path)
    venue.place_many([order("a", "ibkr", "AAPL", "buy", 10), order("b", "okx", "BTC-USDT", "buy", 0.1),
                      order("c", "okx", "BTC-USDT", "buy", 0.2), order("d", "okx", "BTC-USDT", "sell", 0.3)])
    book = {("ibkr", "AAPL"): 10.0}  # 0.1 + 0.2 - 0.3 is float noise, not a position
    report = reconcile({"okx": venue, "ibkr": venue}, book, {client_order_id(s) for s in "abcd"})
    assert report.ok
    assert format_report(report) == []


def test_a_position_the_book_cannot_explain_is_reported_with_both_quantities(tmp_path):
    venue = paper(tmp_path)
    venue.place_many([order("a", "ibkr", "AAPL", "buy", 10)])
    report = reconcile({"okx": venue, "ibkr": venue}, {("ibkr", "AAPL"): 4.0, ("okx", "ETH-USDT"): 1.5},
                       {client_order_id("a")})
    assert report.differences == (
        Difference(POSITION_MISMATCH, "paper", "ibkr", "AAPL", 4.0, 10.0),
        Difference(POSITION_MISMATCH, "paper", "okx", "ETH-USDT", 1.5, 0.0),
    )
    lines = format_report(report)
    assert lines[0] == ("position_mismatch: venue paper, ibkr AAPL: the book holds 4, the venue holds 10 "
                        "(6 more at the venue)")
    assert lines[1] == ("position_mismatch: venue paper, okx ETH-USDT: the book holds 1.5, the venue holds 0 "
                        "(1.5 less at the venue)")
    assert lines[-1].startswith("trading did not start: 2 difference(s) between the book and the venues")


def test_an_order_in_the_crash_window_explains_what_it_may_have_filled(tmp_path):
    venue = paper(tmp_path)
    sent = order("a", "ibkr", "AAPL", "buy", 10)
    venue.place_many([sent])  # the venue filled it; the ledger holds only its intent
    assert reconcile({"ibkr": venue, "okx": venue}, {}, set(), [sent]).ok
    # not sent at all: nothing at the venue, still explained
    assert reconcile({"ibkr": venue, "okx": venue}, {("ibkr", "AAPL"): 10.0}, set(),
                     [order("b", "ibkr", "AAPL", "sell", 10)]).ok


def test_an_order_in_the_crash_window_does_not_explain_more_than_its_size(tmp_path):
    venue = paper(tmp_path)
    venue.place_many([order("a", "ibkr", "AAPL", "buy", 10), order("b", "ibkr", "AAPL", "buy", 5)])
    report = reconcile({"ibkr": venue, "okx": venue}, {}, {client_order_id("a")}, [order("b", "ibkr", "AAPL", "buy", 5)])
    assert report.differences == (Difference(POSITION_MISMATCH, "paper", "ibkr", "AAPL", 0.0, 15.0, in_flight=1),)
    assert "and the 1 order(s) in the crash window cannot account for it" in format_report(report)[0]


def test_a_difference_of_one_lot_is_a_difference(tmp_path):
    venue = paper(tmp_path)
    venue.place_many([order("a", "okx", "BTC-USDT", "buy", 0.3)])
    report = reconcile({"okx": venue, "ibkr": venue}, {("okx", "BTC-USDT"): 0.30000001}, set())
    assert [d.reason for d in report.differences] == [POSITION_MISMATCH]


# --- with venues passed in ---------------------------------------------------------------------

def test_each_connection_is_asked_once_and_only_for_the_markets_it_serves():
    shared = Held("paper", {("okx", "BTC-USDT"): 1.0, ("ibkr", "AAPL"): 3.0})
    okx = Held("okx", {("okx", "BTC-USDT"): 2.0})
    report = reconcile({"okx": okx, "ibkr": shared}, {("okx", "BTC-USDT"): 2.0, ("ibkr", "AAPL"): 3.0}, set())
    assert report.ok  # the paper venue's old OKX position is not the book's business any more
    assert (shared.asked, okx.asked) == (1, 1)
    both = Held("paper", {("ibkr", "AAPL"): 3.0})
    reconcile({"okx": both, "ibkr": both}, {("ibkr", "AAPL"): 3.0}, set())
    assert both.asked == 1


def test_open_orders_apex_does_not_know_are_reported_and_foreign_ones_ignored():
    known, stray = order("known", "okx", "ETH-USDT", "buy", 1), order("stray", "okx", "ETH-USDT", "sell", 2)
    foreign = Order("manual-123", "", "open", "okx", "ETH-USDT", "buy", 1, 100.0, 0)
    venue = Held("okx", open_orders=[known, stray, foreign])
    report = reconcile({"okx": venue, "ibkr": Held("ibkr")}, {}, {known.client_order_id})
    assert report.differences == (Difference(UNKNOWN_OPEN_ORDER, "okx", "okx", "ETH-USDT", venue_qty=-2,
                                             client_order_id=stray.client_order_id),)
    assert report.foreign_orders == ("manual-123",)
    lines = format_report(report)
    assert lines[0] == (f"unknown_open_order: venue okx: open order {stray.client_order_id} (sell 2 ETH-USDT on okx) "
                        "carries an Apex client order id this ledger does not know; cancel it at the venue, "
                        "or run from the ledger that placed it")
    assert lines[1].startswith("1 open order(s) at the venues are not Apex's")


def test_an_open_order_in_the_crash_window_is_known():
    sent = order("sent", "okx", "ETH-USDT", "buy", 1)
    assert reconcile({"okx": Held("okx", open_orders=[sent]), "ibkr": Held("ibkr")}, {}, set(), [sent]).ok


def test_a_venue_that_cannot_be_asked_is_its_own_reason_and_the_others_are_still_asked():
    ibkr = Held("ibkr", {("ibkr", "AAPL"): 1.0})
    report = reconcile({"okx": Held("okx", down="connection refused"), "ibkr": ibkr}, {}, set())
    assert report.differences == (Difference(VENUE_UNREACHABLE, "okx", "okx", detail="connection refused"),
                                  Difference(POSITION_MISMATCH, "ibkr", "ibkr", "AAPL", 0.0, 1.0))
    assert format_report(report)[0] == ("venue_unreachable: venue okx (okx) could not be asked for its positions "
                                        "and open orders: connection refused")


def test_a_venue_that_cannot_be_asked_is_not_called_a_difference():
    """What stops trading is said for what it is: a venue away is not a book that differs."""
    report = reconcile({"okx": Held("okx", down="connection refused")}, {}, set())
    assert format_report(report)[-1] == ("trading did not start: 1 venue(s) could not be asked, so the book could "
                                         "not be checked against them; start again once they answer")


# --- what is not a position (issue 24) ------------------------------------------------------------


def test_dust_beyond_the_book_is_set_aside_and_less_at_the_venue_is_never_dust():
    key = ("okx", "BTC-USDT")
    mins = {key: 1e-5}
    # dust alone, and dust on top of the book's own position: no order could sell it on its own
    assert compare_holdings("okx", {}, {key: 4e-6}, lots={key: 1e-8}, min_sizes=mins) == (
        [], [Aside("okx", "okx", "BTC-USDT", 4e-6, "dust below the minimum size 1e-05")])
    differences, dust = compare_holdings("okx", {key: 0.3}, {key: 0.300004}, lots={key: 1e-8}, min_sizes=mins)
    assert differences == [] and [round(a.quantity, 12) for a in dust] == [4e-6]
    # less at the venue: an exit would sell what is not there
    assert [d.reason for d in compare_positions("okx", {key: 0.3}, {key: 0.299996}, None, {key: 1e-8}, mins)] == [
        POSITION_MISMATCH]
    # a minimum size's worth or more is a holding
    assert [d.venue_qty for d in compare_positions("okx", {}, {key: 1e-5}, None, {key: 1e-8}, mins)] == [1e-5]


def test_ignored_instruments_are_said_and_a_book_holding_one_is_refused():
    venue = Held("okx", {("okx", "SOL-USDT"): 2.0, ("okx", "ETH-USDT"): 1.0})
    ignored = {"okx": {"SOL-USDT", "ETH-USDT"}}
    report = reconcile({"okx": venue}, {}, set(), ignored=ignored)
    assert report.ok
    assert format_aside(report) == [
        "ignored: venue okx, okx ETH-USDT: 1 held, listed in venues.okx.ignore; not a position of any book",
        "ignored: venue okx, okx SOL-USDT: 2 held, listed in venues.okx.ignore; not a position of any book"]
    booked = reconcile({"okx": venue}, {("okx", "ETH-USDT"): 1.0}, set(), ignored=ignored)
    assert booked.differences == (Difference(IGNORED_BUT_BOOKED, "okx", "okx", "ETH-USDT", 1.0, 1.0),)
    assert format_report(booked)[0] == (
        "ignored_but_booked: venue okx, okx ETH-USDT: venues.okx.ignore lists it, but the book holds 1 of it, "
        "which its exits would trade; close the position first, or take it off the list")


def test_only_a_holding_the_book_lacks_or_has_less_of_is_adoptable():
    def diff(book: float, venue: float, in_flight: int = 0) -> Difference:
        return Difference(POSITION_MISMATCH, "okx", "okx", "SOL-USDT", book, venue, in_flight)

    assert adoptable(diff(0, 5)) == 5 and adoptable(diff(2, 5)) == 3 and adoptable(diff(0, -4)) == -4
    assert adoptable(diff(5, 2)) == 0  # the book's trades are gone: only the operator knows where
    assert adoptable(diff(-1, 2)) == 0  # the other side
    assert adoptable(diff(0, 5, in_flight=1)) == 0  # the next start settles the crash window first
    assert adoptable(Difference(VENUE_UNREACHABLE, "okx")) == 0


# --- the comparison's promises -----------------------------------------------------------------

LOTS = st.sampled_from([1e-8, 1e-4, 0.01, 1.0, 100.0])
STEPS = st.integers(-10**9, 10**9)
KEYS = st.tuples(st.sampled_from(["okx", "ibkr"]), st.sampled_from(["BTC-USDT", "AAPL", "SPY"]))


@settings(max_examples=300, **SETTINGS)
@given(st.dictionaries(KEYS, STEPS), st.dictionaries(KEYS, st.lists(STEPS, max_size=4)), LOTS)
def test_equal_positions_never_differ(positions, pending, lot):
    book = {k: n * lot for k, n in positions.items()}
    in_flight = {k: [n * lot for n in ns] for k, ns in pending.items()}
    assert compare_positions("v", book, dict(book), in_flight, {k: lot for k in book}) == []
    # the same quantities arrived at through different sums
    held = {k: sum([q / 4] * 4) for k, q in book.items()}
    assert compare_positions("v", book, held, in_flight, {k: lot for k in book}) == []


@settings(max_examples=500, **SETTINGS)
@given(STEPS, st.lists(st.integers(-10**6, 10**6), max_size=5), st.integers(1, 10**6), st.booleans(), LOTS)
def test_a_difference_beyond_what_the_orders_in_flight_explain_is_always_reported(book_n, pending_n, beyond, up, lot):
    pending = [n * lot for n in pending_n]
    high, low = sum(q for q in pending if q > 0), sum(q for q in pending if q < 0)
    held = book_n * lot + (high + beyond * lot if up else low - beyond * lot)
    key = ("okx", "BTC-USDT")
    found = compare_positions("v", {key: book_n * lot}, {key: held}, {key: pending}, {key: lot})
    assert [(d.reason, d.book_qty, d.venue_qty) for d in found] == [(POSITION_MISMATCH, book_n * lot, held)]


@settings(max_examples=500, **SETTINGS)
@given(STEPS, st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=5), st.data(), LOTS)
def test_any_fill_of_the_orders_in_flight_is_explained(book_n, pending_n, data, lot):
    filled = [data.draw(st.integers(min(0, n), max(0, n))) for n in pending_n]  # none, part or all of each
    key = ("ibkr", "AAPL")
    book = book_n * lot
    held = book + sum(n * lot for n in filled)
    assert compare_positions("v", {key: book}, {key: held}, {key: [n * lot for n in pending_n]}, {key: lot}) == []


def test_tolerance_is_half_a_lot_and_a_hair_without_one():
    assert tolerance(1.0) == 0.5
    assert 0 < tolerance(None, 3.0) < 1e-6
    assert explained(0.4, [], tolerance(1.0)) and not explained(0.6, [], tolerance(1.0))


def test_apex_run_will_not_trade_on_a_book_the_venue_contradicts(tmp_path):
    """Promise: reconciliation before the first decision. A run fills orders at the paper
    venue; with its ledger gone, the venue's positions have nothing in the book to explain
    them: the next `apex run` refuses to start, naming what differs, and decides nothing."""
    import subprocess
    from pathlib import Path

    from helpers import APEX

    repo = Path(__file__).resolve().parents[1]
    state = tmp_path / "state"
    run = [APEX, "run", str(repo / "pipeline.yaml"), "--state-dir", str(state), "--no-progress"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    for f in state.glob("ledger.sqlite*"):
        f.unlink()
    again = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith("trading did not start: ")
    assert any(line.startswith(f"{POSITION_MISMATCH}: venue paper, okx BTC-USDT: the book holds 0") for line in lines)
    assert "Traceback" not in again.stderr and not (state / "ledger.sqlite").exists()
