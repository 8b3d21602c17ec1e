"""The YAML order of filters decides the drop reason, through the real dataflow;
and a user's own filter module plugs in beside the built-ins."""

from __future__ import annotations

import sys

import pytest

from helpers import entry, make_pipeline, paper_orders, run_entries

CONF = "  - filter: confidence\n    min: 0.65\n"
UNIVERSE = "  - filter: symbol_universe\n    universe:\n      okx: [BTC-USDT, DOGE-USDT]\n      ibkr: [AAPL]\n"
REGIME = "  - filter: regime_compatibility\n"
TIGHT_CONCENTRATION = "  - filter: concentration\n    max_nav_fraction: 0.001\n"  # 1000 of 1,000,000 NAV

# low confidence AND out of the universe
BOTH = entry("1767261601000-0", signal_id="sig-both", confidence=0.5, symbol="PEPE-USDT")
# low confidence AND 5000 proposed > 0.1% of NAV
LOW_AND_BIG = entry("1767261602000-0", signal_id="sig-low-big", confidence=0.5)
# only too big
BIG = entry("1767261603000-0", signal_id="sig-big", symbol="DOGE-USDT", reference_price=0.25)
# only low confidence, small enough for the tight concentration
LOW_SMALL = entry("1767261604000-0", signal_id="sig-low-small", confidence=0.5, max_position_usd=500.0)
# passes everything
OK_SMALL = entry("1767261605000-0", signal_id="sig-ok-small", max_position_usd=500.0)


@pytest.mark.parametrize(
    "filters, reason",
    [(CONF + UNIVERSE, "confidence"), (UNIVERSE + CONF, "symbol_universe"),
     (REGIME + UNIVERSE + CONF, "symbol_universe")],
)
def test_reordering_stateless_filters_changes_the_reason(tmp_path, filters, reason):
    p = make_pipeline(tmp_path, filters)
    got = run_entries(tmp_path, p, [BOTH]).table()
    assert got == [("1767261601000-0", "dropped", reason)]


@pytest.mark.parametrize(
    "filters, expected",
    [
        (
            TIGHT_CONCENTRATION + CONF,
            [("1767261602000-0", "dropped", "concentration"), ("1767261603000-0", "dropped", "concentration"),
             ("1767261604000-0", "dropped", "confidence"), ("1767261605000-0", "filled", "")],
        ),
        (
            CONF + TIGHT_CONCENTRATION,
            [("1767261602000-0", "dropped", "confidence"), ("1767261603000-0", "dropped", "concentration"),
             ("1767261604000-0", "dropped", "confidence"), ("1767261605000-0", "filled", "")],
        ),
    ],
)
def test_portfolio_filter_before_a_stateless_one_keeps_yaml_order(tmp_path, filters, expected):
    p = make_pipeline(tmp_path, filters)
    col = run_entries(tmp_path, p, [LOW_AND_BIG, BIG, LOW_SMALL, OK_SMALL])
    assert col.table() == expected
    # the FILTER_CHECK event lists the filters checked, in YAML order, up to the failing one
    first = col.outcomes[0].events[1]
    assert first.stage == "FILTER_CHECK"
    names = [f.name for f in p.filters]
    assert [c[0] for c in first.details["checked"]] == names[: names.index(expected[0][2]) + 1]
    assert first.details["checked"][-1][1] is False


def test_the_same_filter_twice_with_a_name(tmp_path):
    filters = CONF + "  - filter: confidence\n    name: high_confidence\n    min: 0.9\n"
    p = make_pipeline(tmp_path, filters)
    rows = run_entries(tmp_path, p, [
        entry("1767261601000-0", signal_id="a", confidence=0.6),
        entry("1767261602000-0", signal_id="b", confidence=0.8),
        entry("1767261603000-0", signal_id="c", confidence=0.95),
    ]).table()
    assert rows == [("1767261601000-0", "dropped", "confidence"),
                    ("1767261602000-0", "dropped", "high_confidence"),
                    ("1767261603000-0", "filled", "")]


def test_removing_a_filter_lets_its_signals_through(tmp_path):
    p = make_pipeline(tmp_path, CONF)  # no symbol_universe
    rows = run_entries(tmp_path, p, [entry("1767261601000-0", signal_id="pepe", symbol="PEPE-USDT",
                                           reference_price=0.001)]).table()
    assert rows == [("1767261601000-0", "filled", "")]


# --- a user's own filter ----------------------------------------------------------------------

MODULE = '''
def no_doge(signal, portfolio, **params):
    banned = params.get("banned", ["DOGE-USDT"])
    return signal.symbol not in banned


def nav_at_least(signal, portfolio, *, minimum):
    # portfolio filters receive the PortfolioView with the proposed size
    return portfolio.nav >= minimum and portfolio.proposed_usd > 0
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """tmp_path/myfilters.py, importable only for this test."""
    (tmp_path / "myfilters.py").write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))  # parse() puts the YAML folder on sys.path
    monkeypatch.delitem(sys.modules, "myfilters", raising=False)
    yield tmp_path
    sys.modules.pop("myfilters", None)


DOGE = entry("1767261601000-0", signal_id="doge", symbol="DOGE-USDT", reference_price=0.25)
SHIB = entry("1767261602000-0", signal_id="shib", symbol="SHIB-USDT", reference_price=0.00001)
BTC = entry("1767261603000-0", signal_id="btc")


def test_custom_filter_reason_is_the_function_name(user_module):
    p = make_pipeline(user_module, CONF + "  - filter: myfilters:no_doge\n")
    assert [f.name for f in p.filters] == ["confidence", "no_doge"]
    rows = run_entries(user_module, p, [DOGE, SHIB, BTC]).table()
    assert rows == [("1767261601000-0", "dropped", "no_doge"),
                    ("1767261602000-0", "filled", ""),
                    ("1767261603000-0", "filled", "")]


def test_custom_filter_with_params_and_name(user_module):
    filters = CONF + "  - filter: myfilters:no_doge\n    name: meme_ban\n    banned: [DOGE-USDT, SHIB-USDT]\n"
    p = make_pipeline(user_module, filters)
    assert p.filters[1].params == {"banned": ["DOGE-USDT", "SHIB-USDT"]}
    rows = run_entries(user_module, p, [DOGE, SHIB, BTC]).table()
    assert rows == [("1767261601000-0", "dropped", "meme_ban"),
                    ("1767261602000-0", "dropped", "meme_ban"),
                    ("1767261603000-0", "filled", "")]
    assert paper_orders(p) == (1, 0)


def test_custom_filter_before_a_builtin_keeps_yaml_order(user_module):
    low_doge = entry("1767261601000-0", signal_id="low-doge", symbol="DOGE-USDT", reference_price=0.25,
                     confidence=0.5)
    p = make_pipeline(user_module, "  - filter: myfilters:no_doge\n" + CONF)
    assert run_entries(user_module, p, [low_doge]).table() == [("1767261601000-0", "dropped", "no_doge")]
    other = user_module / "other"
    other.mkdir()
    p2 = make_pipeline(other, CONF + "  - filter: myfilters:no_doge\n")
    assert run_entries(other, p2, [low_doge]).table() == [("1767261601000-0", "dropped", "confidence")]


def test_custom_filter_sees_the_portfolio(user_module):
    ok = make_pipeline(user_module, "  - filter: myfilters:nav_at_least\n    minimum: 1000000\n")
    assert run_entries(user_module, ok, [BTC]).table() == [("1767261603000-0", "filled", "")]


def test_custom_filter_sees_the_portfolio_and_can_drop(user_module):
    too_high = make_pipeline(user_module, "  - filter: myfilters:nav_at_least\n    minimum: 1000001\n")
    assert run_entries(user_module, too_high, [BTC]).table() == [("1767261603000-0", "dropped", "nav_at_least")]


def test_custom_filter_missing_function_is_a_config_error(user_module):
    from dataflows.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_pipeline(user_module, "  - filter: myfilters:no_such_fn\n")
    assert info.value.errors[0].startswith("stages[0].filter: cannot load 'myfilters:no_such_fn'")


def test_each_stateless_filter_is_its_own_named_step_in_yaml_order(tmp_path):
    from dataflows.apex import wire

    p = make_pipeline(tmp_path, TIGHT_CONCENTRATION + UNIVERSE + CONF + "  - filter: margin\n")
    (tmp_path / "none.jsonl").write_text("")
    flow, _ = wire(p, source=f"recording:{tmp_path / 'none.jsonl'}")
    steps = [s.step_id for s in flow.substeps]
    assert [s for s in steps if s.startswith("apex.filter_")] == ["apex.filter_symbol_universe",
                                                                 "apex.filter_confidence"]
    assert steps.index("apex.filter_confidence") < steps.index("apex.portfolio")
