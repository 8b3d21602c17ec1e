"""Properties over hostile input: schema-valid extremes (0, subnormals, 1e308, the edges
of what JSON can carry, far-past and far-future clocks, huge and tiny durations) and
malformed market entries, through validation, sizing, the book and the audit rows.

Deterministic: derandomized, no example database, a bounded number of examples.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.audit import TERMINAL
from operators.decide import judge
from operators.exits import terms_for
from operators.kelly import KellyParams
from operators.limits import Limits
from operators.orders import Order, client_order_id, expected_fill
from operators.portfolio import Portfolio
from operators.signal import Invalid, check_clock, parse_signal
from tests.helpers import sig
from tests.test_exits import T0, _iso, replay, signal, tick
from tests.test_hardening import _finite_everywhere

SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INT64 = 2**63 - 1

EDGES = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e-12, 1e-8, 0.5, 1.0, 1e9, 1e12, 1e16,
         1e308, 1.7976931348623157e308, -1.0, -1e308, math.inf, -math.inf, math.nan]
numbers = st.sampled_from(EDGES) | st.floats() | st.integers(min_value=-(10**30), max_value=10**30)
clocks = st.sampled_from(["0001-01-01T00:00:00+00:00", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999+00:00",
                          _iso(T0 + 3_600_000), _iso(T0 + 4_999), _iso(T0 - 1)])
NUMERIC_FIELDS = ["reference_price", "max_position_usd", "holding_period_hours", "suggested_kelly", "confidence",
                  "ttl_seconds", "exit_rules.max_holding_hours", "exit_rules.hard_stop_pct",
                  "backtest_stats.win_rate", "backtest_stats.avg_win", "backtest_stats.trades"]


def _set(doc: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        doc = doc[p]
    doc[leaf] = value


@st.composite
def hostile_signal(draw, signal_id: str = "h"):
    doc = sig(signal_id, timestamp=_iso(T0 - 1_000))
    for path in draw(st.lists(st.sampled_from(NUMERIC_FIELDS), min_size=1, max_size=4, unique=True)):
        _set(doc, path, draw(numbers))
    if draw(st.booleans()):
        doc["timestamp"] = draw(clocks)
    return doc


def _payload(doc: dict) -> str:
    return json.dumps(doc)  # NaN and Infinity as their literals: JSON-ish, refused by the schema


hostile_price = (st.sampled_from(["1e308", "1e-300", "inf", "-inf", "nan", "0", "-5", "1e400", "abc", "", "5e-324"])
                 | st.floats(min_value=1e9, exclude_min=True).map(repr)
                 | st.floats(max_value=1e-8, exclude_max=True).map(repr))


@settings(max_examples=300, **SETTINGS)
@given(doc=hostile_signal(), marks=st.lists(st.tuples(st.sampled_from(["BTC-USDT", "ETH-USDT"]), numbers),
                                            max_size=6))
def test_whatever_the_numbers_an_order_is_finite_and_within_its_cap(doc, marks):
    """Every signal is invalid, dropped, expired, or an order with a finite positive
    quantity whose notional is its size, at most max_position_usd; the book reserving it
    keeps a finite NAV; its deadline fits the ledger's 64-bit integers."""
    book = Portfolio(1_000_000, KellyParams(), Limits())
    for i, (symbol, price) in enumerate(marks):
        price = float(price)
        if book.refuses_price(symbol, price) is None:
            book.on_price(symbol, price, T0 + i)
        assert math.isfinite(book.nav)
    try:
        s = parse_signal(_payload(doc))
        check_clock(s, T0, Limits().clock_skew_ms)
    except Invalid as err:
        assert err.reason
        return
    v = judge(s, clock_ms=T0, already_decided=False, book=book, filters=[], early=None, kelly=KellyParams(),
              lot_size={"okx": 1e-8, "ibkr": 1.0}[s.venue])
    assert v.outcome in ("expired", "dropped", "order")
    if v.outcome != "order":
        return
    sz = v.sizing
    assert sz is not None and 0 < sz.quantity and math.isfinite(sz.quantity)
    assert sz.size_usd <= s.max_position_usd * (1 + 1e-12)
    assert sz.quantity * sz.price <= sz.size_usd * (1 + 1e-9)
    order = Order(client_order_id(s.signal_id), s.signal_id, "open", s.venue, s.symbol, s.side, sz.quantity,
                  sz.price, T0)
    fill = expected_fill(order, 2, 5)
    assert all(math.isfinite(x) for x in (fill.price, fill.quantity, fill.fee_usd))
    terms = terms_for(s, fill)
    assert 0 < terms.deadline_ms <= INT64
    book.reserve(fill, terms)
    assert math.isfinite(book.nav)


@settings(max_examples=150, **SETTINGS)
@given(fields=st.fixed_dictionaries({"symbol": st.sampled_from(["BTC-USDT", "TSLA", "x\x1b[2J", "", "B" * 70]),
                                     "price": hostile_price}))
def test_a_hostile_tick_never_marks_the_book(fields):
    from dataflows.steps import validator
    from connectors.entry import Entry

    book = Portfolio(1_000_000, KellyParams(), Limits())
    book.on_price("BTC-USDT", 100.0, T0)
    got = validator(frozenset({"prices"}), Limits())(Entry("prices", f"{T0}-0", fields, T0, 0))
    if got.tick is not None:
        assert got.tick.price is not None
        assert book.refuses_price(got.tick.symbol, got.tick.price)
    else:
        assert got.invalid is not None and got.invalid.reason
    assert book.marks == {"BTC-USDT": 100.0}


HOSTILE_COUNT = 8
END = T0 + 10 * (HOSTILE_COUNT + 1)  # the ordinary signal's clock, after every hostile entry
_baseline: dict[str, dict] = {}


def _sized(sizing: dict) -> dict:
    return {k: sizing[k] for k in ("nav", "vol", "drawdown", "tracker_multiplier", "size_usd", "quantity", "price")}


def _signal(sid: str, symbol: str, ms: int, **fields) -> dict:
    e = signal(0, ms, symbol, "buy", 100.0)
    doc = json.loads(e["fields"]["payload"]) | {"signal_id": sid} | fields
    e["fields"]["payload"] = _payload(doc)
    return e


HELD = _signal("p0", "BTC-USDT", T0)  # a position the hostile entries must not disturb


def _ordinary(sid: str, ms: int) -> dict:
    return _signal(sid, "ETH-USDT", ms)


def _baseline_sizing(sid: str, ms: int) -> dict:
    """How the ordinary signal is sized when nothing hostile came before it: the held
    position, then the signal, at the same clock."""
    if sid not in _baseline:
        with tempfile.TemporaryDirectory() as d:
            _, _, sizing, _, _ = replay(Path(d), [HELD, _ordinary(sid, ms)])
        _baseline[sid] = _sized(sizing[sid])
    return _baseline[sid]


@st.composite
def hostile_entries(draw):
    out = []
    for i in range(HOSTILE_COUNT):
        ms = T0 + 10 * (i + 1)
        kind = draw(st.sampled_from(["tick", "tick", "numbers", "reference"]))
        if kind == "tick":
            out.append(tick(ms, draw(st.sampled_from(["BTC-USDT", "ETH-USDT", "TSLA"])), draw(hostile_price)))
        elif kind == "numbers":  # out of bounds, or far in the past or the future
            doc = draw(hostile_signal(f"h{i}"))
            doc["timestamp"] = draw(clocks)
            out.append({"stream": "argus:signals:stream", "id": f"{ms}-0", "fields": {"payload": _payload(doc)}})
        else:  # valid in every field but a reference price no book can believe
            out.append(_signal(f"h{i}", draw(st.sampled_from(["BTC-USDT", "SOL-USDT"])), ms,
                               reference_price=draw(st.sampled_from([1e-300, 5e-324, 1e-9, 1e12, 1e300, 1e308]))))
    return out


@settings(max_examples=8, **SETTINGS)
@given(entries=hostile_entries())
def test_after_hostile_entries_an_ordinary_signal_is_sized_as_if_they_never_came(entries):
    """The run completes; every entry ends decided or invalid, never in error; every number
    in the ledger and the audit store is finite; the held position stays open; and an
    ordinary signal after the hostile ones is sized exactly as without them, in the same
    run and after a restart."""
    with tempfile.TemporaryDirectory() as d:
        seen, trades, sizing, _, state = replay(Path(d), [HELD, *entries, _ordinary("o1", END)])
        assert all(o.outcome in TERMINAL and o.terminal for o in seen), [(o.outcome, o.reason) for o in seen]
        assert {o.outcome for o in seen if o.signal_id.startswith("h")} <= {"invalid", "expired", "dropped"}
        assert "p0" not in trades
        assert _sized(sizing["o1"]) == _baseline_sizing("o1", END)
        # a restart on the same state: the book rebuilt from the ledger sizes the same way
        seen, trades, sizing, _, _ = replay(Path(d), [_ordinary("o2", END + 10)])
        assert _sized(sizing["o2"]) == _baseline_sizing("o2", END + 10)
        assert "p0" not in trades
        _finite_everywhere(state)
