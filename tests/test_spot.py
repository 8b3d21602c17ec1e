"""Spot's rule for a sell (operators/spot.py), decided from the book alone, and the setting
that chooses what a sell does to a long (``venues.okx.sell_on_long``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from dataflows.config import ConfigError, parse
from helpers import KELLY_AND_EXECUTE, model
from operators.decide import EarlyDrop, judge
from operators.exits import terms_for
from operators.fill import Fill
from operators.filters import BUILTINS, Filter
from operators.kelly import KellyParams
from operators.portfolio import Portfolio
from operators.spot import SPOT_CANNOT_SHORT

KELLY = KellyParams()


def book_with(*trades: tuple[str, str, str, float]) -> Portfolio:
    """A book whose open trades are (signal id, symbol, side, quantity), filled at 100."""
    book = Portfolio(1_000_000.0, KELLY)
    for sid, symbol, side, qty in trades:
        fill = Fill(sid, "c" + sid, "o" + sid, "okx", symbol, side, qty, 100.0, 0.0, 1_767_261_600_000)
        book.apply_fill(fill)
        book.open(terms_for(model(sid, symbol=symbol, side=side), fill))
    return book


def decide(book: Portfolio, spot: str | None, **signal):
    s = model("s-new", **signal)
    return judge(s, clock_ms=1_767_261_600_000, already_decided=False, book=book, filters=[], early=None,
                 kelly=KELLY, lot_size=1e-8, spot=spot)


@given(held=st.lists(st.tuples(st.sampled_from(["BTC-USDT", "LTC-USDT"]), st.sampled_from(["buy", "sell"]),
                               st.floats(0.001, 100)), max_size=4),
       on_long=st.sampled_from(["keep", "close"]))
def test_on_spot_no_sell_signal_becomes_an_order_whatever_the_book_holds(held, on_long):
    book = book_with(*[(f"t{i}", sym, side, q) for i, (sym, side, q) in enumerate(held)])
    v = decide(book, on_long, side="sell", symbol="BTC-USDT")
    assert (v.outcome, v.reason) == ("dropped", SPOT_CANNOT_SHORT)
    longs = [f"t{i}" for i, (sym, side, _) in enumerate(held) if sym == "BTC-USDT" and side == "buy"]
    assert sorted(v.details["longs"]) == longs
    assert sorted(v.details["closes"]) == (longs if on_long == "close" else [])


def test_a_buy_on_spot_and_a_sell_where_shorts_are_allowed_are_orders():
    book = book_with()
    assert decide(book, "keep", side="buy").outcome == "order"
    assert decide(book, None, side="sell").outcome == "order"


def test_the_drop_says_why_and_what_the_book_holds():
    book = book_with(("t1", "BTC-USDT", "buy", 2.0), ("t2", "BTC-USDT", "buy", 1.0), ("t3", "LTC-USDT", "buy", 5.0))
    v = decide(book, "keep", side="sell", symbol="BTC-USDT")
    assert v.details["held"] == 3.0 and v.details["longs"] == ["t1", "t2"] and v.details["closes"] == []
    assert "left to their own exits" in v.details["why"]
    assert "nothing of LTC-USDT" not in v.details["why"]
    none = decide(book_with(), "close", side="sell", symbol="LTC-USDT")
    assert none.details["closes"] == [] and "nothing of LTC-USDT is this book's to sell" in none.details["why"]


def test_the_drop_says_held_only_what_filled_while_a_buy_is_still_at_the_venue():
    book = book_with(("t1", "BTC-USDT", "buy", 2.0))
    working = Fill("t2", "ct2", "", "okx", "BTC-USDT", "buy", 1.0, 100.0, 0.0, 1_767_261_600_000)
    book.reserve(working, terms_for(model("t2", symbol="BTC-USDT", side="buy"), working), remote=True)
    v = decide(book, "close", side="sell", symbol="BTC-USDT")
    assert v.details["held"] == 2.0 and v.details["longs"] == ["t1", "t2"]  # its exit waits for the buy's end


def test_a_filter_that_drops_the_sell_names_the_drop_first():
    """A sell a filter drops (in its own step, before the book) closes no long."""
    low = Filter("confidence", BUILTINS["confidence"].fn, {"min": 0.9}, False)
    v = judge(model("s", side="sell", confidence=0.7), clock_ms=1_767_261_600_000, already_decided=False,
              book=book_with(("t1", "BTC-USDT", "buy", 1.0)), filters=[low], early=EarlyDrop(0, "confidence"),
              kelly=KELLY,
              lot_size=1e-8, spot="close")
    assert (v.outcome, v.reason) == ("dropped", "confidence") and "closes" not in v.details


# --- the setting -----------------------------------------------------------------------------------

def pipeline(tmp_path: Path, okx: str):
    text = f"state_dir: {tmp_path / 'state'}\nvenues:\n  okx: {okx}\nstages:\n{KELLY_AND_EXECUTE}"
    return parse(text, tmp_path / "pipeline.yaml", {})


def errors(tmp_path: Path, okx: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        pipeline(tmp_path, okx)
    return e.value.errors


def test_spot_keeps_the_long_by_default_and_swap_and_paper_have_no_rule(tmp_path):
    assert pipeline(tmp_path, "{kind: okx}").venues.spot("okx") == "keep"
    assert pipeline(tmp_path, "{kind: okx, sell_on_long: close}").venues.spot("okx") == "close"
    assert pipeline(tmp_path, "{kind: okx, market: swap}").venues.spot("okx") is None
    assert pipeline(tmp_path, "{kind: paper}").venues.spot("okx") is None
    assert pipeline(tmp_path, "{kind: okx}").venues.spot("ibkr") is None


def test_a_wrong_choice_or_one_swap_would_ignore_is_refused_with_its_path(tmp_path):
    (bad,) = errors(tmp_path, "{kind: okx, sell_on_long: sell}")
    assert bad.startswith("venues.okx.sell_on_long: ") and "'keep' or 'close'" in bad
    (swap,) = errors(tmp_path, "{kind: okx, market: swap, sell_on_long: close}")
    assert swap.startswith("venues.okx: ") and "sell_on_long is a rule of market: spot" in swap
    (paper,) = errors(tmp_path, "{kind: paper, sell_on_long: keep}")
    assert "kind: paper takes no other settings (remove sell_on_long" in paper


@pytest.mark.parametrize("cap_coins, dropped", [(1.0, True), (1.001, True), (1.003, False)])
def test_a_spot_buy_whose_coins_less_the_fee_would_be_below_the_minimum_is_dropped(cap_coins, dropped):
    """OKX keeps the fee in the coin bought: a buy of the minimum holds less than the minimum,
    and its exit would be refused for ever."""
    min_size = 0.00001
    v = judge(model("s", side="buy", max_position_usd=100.0 * min_size * cap_coins), clock_ms=1_767_261_600_000,
              already_decided=False, book=book_with(), filters=[], early=None, kelly=KELLY, lot_size=1e-8,
              spot="keep", min_size=min_size)
    assert (v.outcome, v.reason) == (("dropped", "min_size") if dropped else ("order", None))
    paper = judge(model("s", side="buy", max_position_usd=100.0 * min_size), clock_ms=1_767_261_600_000,
                  already_decided=False, book=book_with(), filters=[], early=None, kelly=KELLY, lot_size=1e-8,
                  min_size=min_size)
    assert paper.outcome == "order"  # no spot rule: the venue's own minimum is not this rule's business

