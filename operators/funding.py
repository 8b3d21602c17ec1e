"""Funding on perpetual swaps as a cost of the books that held the position. Pure.

A venue books funding to the account as a whole, on its net position per instrument. The
books' positions there add up to that net position (the venue invariant), so each book's
share is the payment times its position over their sum: a book long where the net is long
pays its part of a positive rate, a book short against it receives its part, and the shares
add up to the payment.

In a book a funding payment is a fill of nothing (no quantity) whose fee is the cost: the
book's cash moves by it, its positions do not, and a start rebuilds it from the ledger like
any fill. Its order and client order ids are ``funding-`` and the venue's bill id, so a bill
told twice is booked once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from operators import audit_rows as R
from operators.audit import EXECUTION_CONFIRMED, Chain
from operators.fill import Fill

FUNDING = "funding"  # the executions kind and audit outcome of a funding payment
_PREFIX = "funding-"


@dataclass(frozen=True, slots=True)
class FundingEvent:
    """One book's share of one funding bill, as its step receives it (with venue events)."""

    book: str
    market: str  # the market signals name (okx)
    symbol: str  # the signal's name (BTC-USDT)
    bill_id: str
    amount_usd: float  # received; paid below zero
    mark: float  # the instrument's mark price at the funding
    ts_ms: int
    book_qty: float = 0.0  # the book's position it was charged on
    venue_qty: float = 0.0  # the books' positions in all, the net the venue charged


def attribute(amount: float, holdings: Mapping[str, float]) -> dict[str, float]:
    """Each book's share of ``amount`` by its signed position among ``holdings`` (by book);
    nothing when the books hold nothing net there (the payment is on no book's position)."""
    net = sum(holdings.values())
    if abs(net) < 1e-12:
        return {}
    return {book: amount * qty / net for book, qty in holdings.items() if qty}


def is_funding(signal_id: str) -> bool:
    return signal_id.startswith(_PREFIX)


def as_fill(ev: FundingEvent) -> Fill:
    """The payment as the book's fill of nothing: its cost is the fee (a payment received is
    a negative fee), priced at the mark so that the book's mark stays a market price."""
    fid = _PREFIX + ev.bill_id
    return Fill(fid, fid, ev.bill_id, ev.market, ev.symbol, "buy", 0.0, ev.mark, -ev.amount_usd, ev.ts_ms)


def audit_rows(ev: FundingEvent, fill: Fill) -> dict[str, list]:
    """The audit event (outcome ``funding``) and executions row of a booked payment."""
    chain = Chain("", fill.signal_id, fill.ts_ms, "", fill.venue, fill.symbol)
    chain.add(EXECUTION_CONFIRMED, FUNDING, f"funding bill {ev.bill_id}", size_usd=abs(ev.amount_usd),
              amount_usd=ev.amount_usd, mark=ev.mark, book_qty=ev.book_qty, venue_qty=ev.venue_qty,
              book=ev.book)
    return {"audit_events": [e.as_row(fill.ts_ms) for e in chain.events],
            "executions": [R.execution_row(fill, FUNDING)]}
