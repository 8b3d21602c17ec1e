"""A market entry is believed whole or not at all: a regime travelling in the same entry as
a price Apex refuses is not believed either, so it fires no regime exit (README, "What Apex
refuses": "A regime travelling in the same entry is not believed either").

A price is refused in two places, each with its own test: on its own at validation (not a
number, outside limits.min_price..max_price) and against the symbol's mark in the book
(outside limits.price_band), where dataflows/exits_step.py says so before any exit fires."""

from __future__ import annotations

import pytest

from connectors.ledger import Ledger
from operators.exits import REGIME_EXIT
from test_exits import PRICES, T0, replay, signal

MIN = 60_000


def market(ms: int, **fields: str) -> dict:
    return {"stream": PRICES, "id": f"{ms}-0", "fields": fields}


@pytest.mark.parametrize("price,refused_by", [
    ("1e308", "limits.max_price"),  # refused at validation, on its own
    ("abc", "not a number"),  # refused at validation, on its own
    ("1000", "limits.price_band"),  # believable on its own; 10x the mark of 100: refused by the book
])
def test_a_regime_in_the_same_entry_as_a_refused_price_fires_no_regime_exit(tmp_path, price, refused_by):
    # a long in BTC at 100 that leaves on 'choppy'; its stop (50%) stays out of the way
    opened = signal(1, T0, "BTC-USDT", "buy", 100.0, stop=0.5, regimes=("choppy",))
    both = market(T0 + MIN, symbol="BTC-USDT", price=price, regime="choppy")
    seen, trades, _, _, state = replay(tmp_path / "both", [opened, both])

    assert trades == {}, "the regime of a refused entry closed a trade"
    (own,) = [o for o in seen if o.stream_id == both["id"]]
    assert own.outcome == "invalid_tick" and refused_by in own.reason, (own.outcome, own.reason)
    ledger = Ledger(state / "ledger.sqlite")
    try:
        assert [t.signal_id for t in ledger.open_trades()] == ["t1"]
    finally:
        ledger.close()

    # the same regime on its own, with a believable price, does close it: the regime above
    # was one that fires, and it was the refused price that kept it from firing
    alone = market(T0 + MIN, symbol="BTC-USDT", price="101", regime="choppy")
    _, trades, _, _, _ = replay(tmp_path / "alone", [opened, alone])
    assert {sid: (t["exit_reason"], t["exit_price"]) for sid, t in trades.items()} == {"t1": (REGIME_EXIT, 101.0)}
