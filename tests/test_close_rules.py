"""The pure rules of a close (``operators/closes.py``): its id by attempt, its limit, and the
trade a close cut at its limit leaves."""

from __future__ import annotations

import pytest

from operators.closes import close_id, close_order, cut, rest_of
from operators.exits import HARD_STOP, MAX_HOLDING, TradeTerms
from operators.orders import client_order_id
from operators.protection import limit_price
from operators.trading_state import KILL


def _terms(side: str = "buy", qty: float = 2.0) -> TradeTerms:
    return TradeTerms("sig-1", "macro", "okx", "BTC-USDT", side, qty, 100.0, 1, 0.2, "choppy", 0.05, (), 10, False,
                      0.6)


def test_attempt_0_keeps_the_id_a_close_always_had_and_each_later_attempt_has_its_own():
    assert close_id("sig-1") == client_order_id("sig-1", "close")
    assert close_id("sig-1", 1) == client_order_id("sig-1", "close:1")
    assert len({close_id("sig-1", n) for n in range(5)}) == 5


@pytest.mark.parametrize("side, exit_side", [("buy", "sell"), ("sell", "buy")])
def test_a_close_is_a_limit_around_its_reference_and_a_kills_is_a_market_order(side, exit_side):
    o = close_order(_terms(side), 2, HARD_STOP, 94.0, 7, 50.0, 0.1)
    assert (o.client_order_id, o.kind, o.side, o.quantity, o.price, o.attempt) == \
        (close_id("sig-1", 2), "close", exit_side, 2.0, 94.0, 2)
    assert o.limit == limit_price(exit_side, 94.0, 50.0, 0.1) and o.limit > 0
    assert close_order(_terms(side), 0, KILL, 94.0, 7, 50.0, 0.1).limit == 0.0
    assert close_order(_terms(side), 0, MAX_HOLDING, 94.0, 7, 50.0, 0.1).limit > 0


def test_what_counts_as_cut_at_its_limit():
    assert cut("cancelled", "")
    assert cut("rejected", "price_protection: not marketable at limit 93.6; venue price 90")
    assert not cut("rejected", "51008 Insufficient balance")
    assert not cut("filled", "") and not cut("intent", "")


def test_a_close_filled_in_part_leaves_the_rest_with_its_share_of_the_entry_fee():
    rest = rest_of(_terms(qty=2.0), 0.5)
    assert rest.quantity == 1.5 and rest.entry_fee_usd == pytest.approx(0.15)
    assert (rest.signal_id, rest.entry_price, rest.deadline_ms) == ("sig-1", 100.0, 10)


def test_a_cut_close_goes_again_at_once_at_the_venues_price_only_when_the_books_is_stale():
    from operators.closes import STALE_MS, retry_reference

    fresh, stale = (1_000, 81.6), (1_000 - STALE_MS - 1, 81.6)
    assert retry_reference(fresh, 1_000, 80.0, 81.6, True) is None  # the next tick brings the next price
    assert retry_reference(stale, 1_000, 80.0, 81.6, True) == 80.0
    assert retry_reference(None, 1_000, 80.0, 81.6, True) == 80.0  # no price for it this run at all
    assert retry_reference(None, 1_000, 80.0, 81.6, False) is None  # a venue price the book cannot believe
    assert retry_reference(None, 1_000, None, 81.6, True) is None  # the venue named none
    assert retry_reference(None, 1_000, 80.0, 80.0, True) is None  # cut at that very price already
