"""The bounds of "What Apex refuses" (README) at their edges: each value exactly at its bound
is accepted and the next one beyond it (one second, one millisecond, one more trade, the
next float by math.nextafter) is refused, with the reason naming the field. Tests of absurd
values (test_hardening.py, test_properties.py) pass just as well when a bound is off by
one, or when "at most" has become "below": these do not.

Deterministic: hypothesis derandomized, no example database, a bounded number of examples.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dataflows.config import ConfigError, parse
from operators.exits import MAX_HOLDING
from operators.kelly import KellyParams
from operators.limits import Limits, PriceGuard
from operators.market import parse_tick
from operators.portfolio import Portfolio
from operators.signal import TIMESTAMP_IN_FUTURE, Invalid, check_clock, parse_signal
from tests.helpers import sig
from tests.test_exits import T0, replay, signal, tick

SETTINGS = dict(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
HOUR_MS = 3_600_000


def up(x: float) -> float:
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    return math.nextafter(x, -math.inf)


def _set(doc: dict, path: str, value) -> dict:
    *parents, leaf = path.split(".")
    target = doc
    for p in parents:
        target = target[p]
    target[leaf] = value
    return doc


def refusal(path: str, value) -> str | None:
    """Why the schema refuses a signal whose ``path`` is ``value``; None: accepted."""
    try:
        parse_signal(json.dumps(_set(sig("edge"), path, value)))
    except Invalid as err:
        return err.reason
    return None


# --- the schema: operators/signal.py ----------------------------------------------------------

# (field, the last value accepted, the first refused beyond it, the reason)
EDGES = [
    ("ttl_seconds", 7 * 24 * 3600, 7 * 24 * 3600 + 1, "Input should be less than or equal to 604800"),
    ("ttl_seconds", 1, 0, "Input should be greater than 0"),
    ("max_position_usd", 1e9, up(1e9), "Input should be less than or equal to 1000000000"),
    ("max_position_usd", 5e-324, 0.0, "Input should be greater than 0"),
    ("holding_period_hours", 8784, up(8784.0), "Input should be less than or equal to 8784"),
    ("holding_period_hours", 5e-324, 0.0, "Input should be greater than 0"),
    ("exit_rules.max_holding_hours", 8784, up(8784.0), "Input should be less than or equal to 8784"),
    ("exit_rules.max_holding_hours", 5e-324, 0.0, "Input should be greater than 0"),
    ("backtest_stats.trades", 10**9, 10**9 + 1, "Input should be less than or equal to 1000000000"),
    ("backtest_stats.trades", 0, -1, "Input should be greater than or equal to 0"),
    ("exit_rules.hard_stop_pct", down(1.0), 1.0, "Input should be less than 1"),
    ("exit_rules.hard_stop_pct", 5e-324, 0.0, "Input should be greater than 0"),
    ("confidence", 1.0, up(1.0), "Input should be less than or equal to 1"),
    ("confidence", 0.0, -5e-324, "Input should be greater than or equal to 0"),
    ("suggested_kelly", 1.0, up(1.0), "Input should be less than or equal to 1"),
    ("suggested_kelly", 0.0, -5e-324, "Input should be greater than or equal to 0"),
    ("backtest_stats.win_rate", 1.0, up(1.0), "Input should be less than or equal to 1"),
    ("backtest_stats.win_rate", 0.0, -5e-324, "Input should be greater than or equal to 0"),
    ("reference_price", 5e-324, 0.0, "Input should be greater than 0"),
    ("reference_price", 5e-324, -0.0, "Input should be greater than 0"),
    ("signal_id", "x" * 128, "x" * 129, "String should have at most 128 characters"),
    ("signal_id", "x", "", "String should have at least 1 character"),
    ("symbol", "X" * 64, "X" * 65, "String should have at most 64 characters"),
    ("symbol", "X", "", "String should have at least 1 character"),
]


@pytest.mark.parametrize("path,last,beyond,why", EDGES, ids=[f"{e[0]}={e[2]!r}" for e in EDGES])
def test_a_schema_bound_takes_its_last_value_and_refuses_the_next(path, last, beyond, why):
    assert refusal(path, last) is None, refusal(path, last)
    assert refusal(path, beyond) == f"schema: {path}: {why}"


# the upper bounds on real numbers, as properties: a value is accepted exactly when it is at
# most its bound (or below it, for hard_stop_pct), near the bound and far from it
UPPER = [("max_position_usd", 1e9, True), ("holding_period_hours", 8784.0, True),
         ("exit_rules.max_holding_hours", 8784.0, True), ("exit_rules.hard_stop_pct", 1.0, False),
         ("confidence", 1.0, True), ("suggested_kelly", 1.0, True), ("backtest_stats.win_rate", 1.0, True)]


@pytest.mark.parametrize("path,bound,inclusive", UPPER, ids=[u[0] for u in UPPER])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_a_number_is_accepted_exactly_when_within_its_bound(path, bound, inclusive, data):
    near = st.floats(min_value=bound * (1 - 1e-9), max_value=bound * (1 + 1e-9))
    value = data.draw(near | st.floats(min_value=bound / 2, max_value=bound * 2)
                      | st.sampled_from([down(bound), bound, up(bound)]))
    within = value <= bound if inclusive else value < bound
    assert (refusal(path, value) is None) is within, (value, refusal(path, value))


@pytest.mark.parametrize("path", ["signal_id", "symbol"])
@settings(max_examples=200, **SETTINGS)
@given(c=st.characters(codec="utf-8"))
@example(c="\x1f")
@example(c=" ")
@example(c="~")
@example(c="\x7f")
@example(c="\x9f")
@example(c="\xa0")
def test_an_id_or_symbol_is_refused_exactly_when_it_holds_a_control_character(path, c):
    """No C0 (U+0000..U+001F), no DEL (U+007F), no C1 (U+0080..U+009F); every other
    character, the first printable ones next to them included, is accepted."""
    control = ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F
    why = refusal(path, f"A{c}B")
    if control:
        assert why is not None and why.startswith(f"schema: {path}: String should match pattern"), why
    else:
        assert why is None, why
    fields = {"symbol": f"A{c}B", "price": "100"}
    if control:
        with pytest.raises(Invalid, match="symbol: must be 1-64 printable characters"):
            parse_tick(fields, Limits())
    else:
        assert parse_tick(fields, Limits()).symbol == f"A{c}B"


@pytest.mark.parametrize("path", ["backtest_stats.avg_win", "backtest_stats.avg_loss"])
@pytest.mark.parametrize("sign", ["", "-"])
def test_the_largest_finite_json_number_is_a_number_and_the_next_literal_is_not(path, sign):
    """"Every number: a finite JSON number": in a field with no bound of its own, the largest
    double is taken as written; a literal past it (which a parser rounds to infinity) is
    refused as not finite, with the field named."""
    leaf = path.split(".")[-1]

    def parsed(literal: str):  # written into the JSON text as is: json.dumps would write inf as Infinity
        text = json.dumps(_set(sig("edge"), path, 0.5))
        return parse_signal(text.replace(f'"{leaf}": 0.5', f'"{leaf}": {sign}{literal}'))

    s = parsed("1.7976931348623157e308")
    assert getattr(s.backtest_stats, leaf) == float(f"{sign}1.7976931348623157e308")
    for literal in ("1.7976931348623159e308", "1e309"):  # rounded to infinity by the JSON parser
        with pytest.raises(Invalid) as err:
            parsed(literal)
        assert err.value.reason == f"schema: {path}: Input should be a finite number"


def test_a_signal_at_every_upper_bound_trades_and_leaves_on_time(tmp_path):
    """The bounds are "far inside what the arithmetic after them can hold": a signal at every
    upper bound at once (7 days' TTL, 1e9 USD, 8,784 hours, 1e9 backtest trades, the largest
    stop below 1) is filled, and its 8,784-hour deadline falls on its exact millisecond."""
    s = signal(1, T0, "BTC-USDT", "buy", 100.0, stop=down(1.0), regimes=(), hold=8784, cap=1e9)
    doc = json.loads(s["fields"]["payload"])
    doc.update(ttl_seconds=7 * 24 * 3600, holding_period_hours=8784)
    doc["backtest_stats"]["trades"] = 10**9
    s["fields"]["payload"] = json.dumps(doc)
    deadline = T0 + 8784 * HOUR_MS
    entries = [s, tick(deadline - 1, "BTC-USDT", 101.0), tick(deadline, "BTC-USDT", 102.0)]
    seen, trades, _, _, _ = replay(tmp_path, entries)
    assert [(o.signal_id, o.outcome) for o in seen if o.signal_id and o.stream_id] == [("t1", "filled")]
    assert {sid: (t["exit_reason"], t["exit_ms"], t["exit_price"]) for sid, t in trades.items()} == {
        "t1": (MAX_HOLDING, deadline, 101.0)}


# --- the clock: operators/signal.py check_clock, limits.clock_skew_ms ---------------------------

def _stamp(ms: int) -> str:
    """``ms`` since the epoch as the ISO-8601 a producer writes, to the millisecond."""
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - EPOCH) // timedelta(milliseconds=1)


@settings(max_examples=300, **SETTINGS)
@given(clock=st.integers(min_value=0, max_value=LAST_MS - 3_600_001),
       skew=st.integers(min_value=0, max_value=3_600_000))
@example(clock=T0, skew=5_000)  # the default allowance, today
@example(clock=69_607_108_081_831, skew=5_000)  # year 4175: a float of seconds there is off by 1 ms
@example(clock=LAST_MS - 3_600_001, skew=3_600_000)  # the last clock and the largest allowance
def test_a_signal_stamped_exactly_at_the_allowance_is_valid_and_a_millisecond_more_is_not(clock, skew):
    at = parse_signal(json.dumps(sig("edge", timestamp=_stamp(clock + skew))))
    assert check_clock(at, clock, skew) == clock + skew
    beyond = parse_signal(json.dumps(sig("edge", timestamp=_stamp(clock + skew + 1))))
    with pytest.raises(Invalid) as err:
        check_clock(beyond, clock, skew)
    assert err.value.reason == (f"{TIMESTAMP_IN_FUTURE}: stamped {skew + 1} ms ahead of the stream clock "
                                f"(limits.clock_skew_ms {skew})")


def test_through_the_dataflow_the_allowance_is_inclusive(tmp_path):
    """End to end on the default allowance (5,000 ms): stamped exactly 5,000 ms ahead of its
    entry is traded, 5,001 ms ahead is invalid, timestamp_in_future."""
    entries = []
    for n, ahead in ((1, 5_000), (2, 5_001)):
        s = signal(n, T0 + n, "BTC-USDT", "buy", 100.0)
        doc = json.loads(s["fields"]["payload"])
        doc["timestamp"] = _stamp(T0 + n + ahead)
        s["fields"]["payload"] = json.dumps(doc)
        entries.append(s)
    seen, _, _, _, _ = replay(tmp_path, entries)
    got = {o.signal_id: (o.outcome, o.reason) for o in seen if o.signal_id}
    assert got["t1"] == ("filled", "")
    assert got["t2"][0] == "invalid" and got["t2"][1].startswith(
        f"{TIMESTAMP_IN_FUTURE}: stamped 5001 ms ahead of the stream clock (limits.clock_skew_ms 5000)")


def test_through_the_dataflow_a_signal_exactly_its_ttl_old_is_traded_and_a_millisecond_older_expired(tmp_path):
    """"A signal stamped far in the past is valid and expired by its TTL": at the longest TTL
    (7 days), a signal exactly 7 days old when its entry is decided is traded, one a
    millisecond older is expired (ttl)."""
    week_ms = 7 * 24 * HOUR_MS
    entries = []
    for n, age in ((1, week_ms), (2, week_ms + 1)):
        s = signal(n, T0 + n, "BTC-USDT", "buy", 100.0)
        doc = json.loads(s["fields"]["payload"])
        doc.update(timestamp=_stamp(T0 + n - age), ttl_seconds=7 * 24 * 3600)
        s["fields"]["payload"] = json.dumps(doc)
        entries.append(s)
    seen, _, _, _, _ = replay(tmp_path, entries)
    assert {o.signal_id: (o.outcome, o.reason) for o in seen if o.signal_id} == {
        "t1": ("filled", ""), "t2": ("expired", "ttl")}


# --- prices: operators/limits.py ------------------------------------------------------------------

@pytest.mark.parametrize("limits", [Limits(), Limits(min_price=0.5, max_price=250.0)], ids=["defaults", "set"])
def test_a_price_at_the_range_ends_is_believed_and_the_next_float_beyond_is_refused(limits):
    for price in (limits.min_price, limits.max_price):
        assert limits.outside_range(price) is None
        assert parse_tick({"symbol": "BTC-USDT", "price": repr(price)}, limits).price == price
    for price, why in ((down(limits.min_price), "below limits.min_price"),
                       (up(limits.max_price), "above limits.max_price")):
        with pytest.raises(Invalid) as err:
            parse_tick({"symbol": "BTC-USDT", "price": repr(price)}, limits)
        assert err.value.reason.startswith("price_band: ") and why in err.value.reason


def test_through_the_dataflow_prices_at_the_edges_of_the_band_are_believed_and_past_them_refused(tmp_path):
    """End to end, ticks and reference prices alike, each against a mark of 100 (price_band 2):
    200 and 50 are believed, the next float past either is refused, a tick as an invalid
    market entry and a reference price by dropping its signal (price_band)."""
    def at(ms: int, p: float) -> dict:
        return tick(T0 + ms, "BTC-USDT", repr(p))

    def ref(n: int, p: float) -> dict:
        return signal(n, T0 + 100 + n, "BTC-USDT", "buy", p, cap=1_000.0)

    # a fill marks the book too, so the mark is brought back to 100 before each signal
    entries = [(at(1, 100.0), "tick"), (at(2, up(200.0)), "invalid_tick"), (at(3, down(50.0)), "invalid_tick"),
               (at(4, 200.0), "tick"), (at(5, 100.0), "tick"), (at(6, 50.0), "tick"), (at(7, 100.0), "tick"),
               (ref(10, 200.0), ("filled", "")), (at(111, 100.0), "tick"),
               (ref(12, up(200.0)), ("dropped", "price_band")),
               (ref(13, 50.0), ("filled", "")), (at(114, 100.0), "tick"),
               (ref(15, down(50.0)), ("dropped", "price_band"))]
    seen, _, sizing, _, _ = replay(tmp_path, [e for e, _ in entries])
    got = {o.stream_id: (o.signal_id, o.outcome, o.reason) for o in seen if o.stream_id}
    for e, want in entries:
        sid, outcome, reason = got[e["id"]]
        assert (outcome if not sid else (outcome, reason)) == want, f"{e['id']} ({e['fields'].get('price', sid)})"
    for n in (10, 13):  # sized at its reference price, within its cap
        s = sizing[f"t{n}"]
        assert s["price"] == (200.0 if n == 10 else 50.0) and s["size_usd"] <= 1_000.0
        assert 0 < s["quantity"] and math.isclose(s["quantity"] * s["price"], s["size_usd"], rel_tol=1e-9)


def test_with_no_mark_a_reference_price_is_held_to_the_range_alone_inclusive():
    """"With no mark yet, the range alone applies": the range's ends are believed as a
    signal's reference price, the next float past either is refused."""
    book = Portfolio(1_000_000.0, KellyParams())
    for price in (book.limits.min_price, book.limits.max_price):
        assert book.refuses_reference("BTC-USDT", price) is None
    assert "below limits.min_price" in book.refuses_reference("BTC-USDT", down(book.limits.min_price))
    assert "above limits.max_price" in book.refuses_reference("BTC-USDT", up(book.limits.max_price))


@settings(max_examples=300, **SETTINGS)
@given(mark=st.floats(min_value=1e-7, max_value=1e8))
@example(mark=100.0)
@example(mark=1.0)
def test_a_price_exactly_a_halving_or_a_doubling_of_the_mark_is_believed_and_past_it_refused(mark):
    """limits.price_band 2 (the default): a halving or a doubling of the mark is within the
    band, the next float past either is not, and the guard refuses it (a lone print)."""
    limits = Limits()
    for price in (mark * 2, mark / 2):
        assert limits.outside_band(price, mark) is None, (price, mark)
        assert PriceGuard(limits).check("X", price, mark) is None
    for price in (up(mark * 2), down(mark / 2)):
        why = limits.outside_band(price, mark)
        assert why is not None and why.startswith("price_band: ") and "limits.price_band" in why, (price, mark)
        assert PriceGuard(limits).check("X", price, mark) == why


@pytest.mark.parametrize("confirm", [1, 2, 3, 5])
def test_the_confirming_tick_is_exactly_the_band_confirm_ticks_th(confirm):
    """``band_confirm_ticks`` N: the first N-1 agreeing ticks outside the band are refused,
    the N-th is believed."""
    guard = PriceGuard(Limits(band_confirm_ticks=confirm))
    for i in range(confirm - 1):
        assert guard.check("X", 300.0 + i, 100.0) is not None, f"tick {i + 1} of {confirm} believed"
    assert guard.check("X", 300.0 + confirm, 100.0) is None


# --- the limits section: dataflows/config.py --------------------------------------------------------

STAGES = "stages:\n  - size: kelly\n  - execute: {venue: paper}\n"
# (setting, the last value accepted, the first refused beyond it, the error)
LIMIT_EDGES = [
    ("clock_skew_ms", 3_600_000, 3_600_001, "input should be less than or equal to 3600000"),
    ("clock_skew_ms", 0, -1, "input should be greater than or equal to 0"),
    ("price_band", 1000, up(1000.0), "input should be less than or equal to 1000"),
    ("price_band", up(1.0), 1.0, "input should be greater than 1"),
    ("band_confirm_ticks", 1000, 1001, "input should be less than or equal to 1000"),
    ("band_confirm_ticks", 0, -1, "input should be greater than or equal to 0"),
    ("min_price", 5e-324, 0.0, "input should be greater than 0"),
]


@pytest.mark.parametrize("key,last,beyond,why", LIMIT_EDGES, ids=[f"{e[0]}={e[2]!r}" for e in LIMIT_EDGES])
def test_a_limit_takes_its_last_value_and_refuses_the_next(tmp_path, key, last, beyond, why):
    p = parse(f"limits: {{{key}: {last!r}}}\n" + STAGES, tmp_path / "pipeline.yaml", {})
    assert getattr(p.limits, key) == last
    with pytest.raises(ConfigError) as err:
        parse(f"limits: {{{key}: {beyond!r}}}\n" + STAGES, tmp_path / "pipeline.yaml", {})
    assert f"limits.{key}: {why}" in err.value.errors, err.value.errors


def test_min_price_must_be_below_max_price_by_any_amount(tmp_path):
    p = parse(f"limits: {{min_price: {down(5.0)!r}, max_price: 5.0}}\n" + STAGES, tmp_path / "p.yaml", {})
    assert p.limits.min_price < p.limits.max_price == 5.0
    with pytest.raises(ConfigError) as err:
        parse("limits: {min_price: 5.0, max_price: 5.0}\n" + STAGES, tmp_path / "p.yaml", {})
    assert any(e.startswith("limits") and "min_price must be below max_price" in e for e in err.value.errors)
