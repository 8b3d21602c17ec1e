"""OKX's order records, as ccxt parses them, read as the venue interface's data: the
fill, the fee in USD, the fate, and the per-order refusals ccxt quotes in an error.
Pure functions: nothing here talks to OKX."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from connectors.venues import ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED, OrderUpdate, Rejected
from operators.fill import Fill
from operators.orders import Order

MAYBE_PLACED = "51016"  # duplicated clOrdId: an order under this id may be there already
TERMINAL = ("closed", "canceled", "rejected", "expired")  # ccxt's statuses of an order that is done
FINAL = (FILLED, CANCELLED, REJECTED)  # the venue interface's fates that do not change again
USD_LIKE = ("USD", "USDT", "USDC")


def filled(o: dict) -> float:
    return float(o.get("filled") or 0)


def fill(order: Order, o: dict, price_of: Callable[[str], float]) -> Fill:
    """What has filled so far. ``price_of``: the last price of a coin in USD, for a fee
    paid in a third coin."""
    info = o.get("info") or {}
    price = float(o.get("average") or info.get("avgPx") or 0)
    return Fill(order.signal_id, order.client_order_id, str(o.get("id") or info.get("ordId")), order.venue,
                order.symbol, order.side, filled(o) - fee_in_base(info), price, fee_usd(info, price, price_of),
                order.ts_ms)


def fee_in_base(info: dict) -> float:
    """The coins OKX keeps as its fee when it charges a buy in the coin bought: the account
    holds the fill less them, so that is the position (a close can sell no more), and the
    fee's worth is still the cost (net quantity × price + fee = what was paid)."""
    if str(info.get("feeCcy") or "") != str(info.get("instId", "")).split("-")[0]:
        return 0.0
    return -float(info.get("fee") or 0)


def fee_usd(info: dict, price: float, price_of: Callable[[str], float]) -> float:
    """OKX's fee is negative when paid, in ``feeCcy``: the base currency of a buy (each
    worth the fill price), the quote currency of a sell, or a third coin (OKB)."""
    paid = -float(info.get("fee") or 0)
    ccy = str(info.get("feeCcy") or "")
    if not paid or ccy in USD_LIKE:
        return paid
    if ccy == str(info.get("instId", "")).split("-")[0]:
        return paid * price
    return paid * price_of(ccy)


def fate(order: Order, o: dict, price_of: Callable[[str], float]) -> Fill | Rejected:
    """A finished order: what filled of it, or a refusal if nothing did."""
    if filled(o) > 0:
        return fill(order, o, price_of)
    return Rejected(_nothing_filled(o))


def update(order: Order, o: dict, price_of: Callable[[str], float]) -> OrderUpdate:
    """OKX's record of an order as a change of its fate, with what has filled so far and
    OKX's id of its latest trade (``tradeId``: the order lists and the pushes both carry it)."""
    st = status(o)
    got = fill(order, o, price_of) if filled(o) > 0 else None
    reason = _nothing_filled(o) if st == CANCELLED and got is None else ""
    trade = str((o.get("info") or {}).get("tradeId") or "") if got is not None else ""
    return OrderUpdate(order.client_order_id, st, got, reason, trade)


def outcome(u: OrderUpdate) -> Fill | Rejected:
    """A final update as ``place_many`` answers it: the fill, else the refusal."""
    return u.fill if u.fill is not None else Rejected(u.reason)


def _nothing_filled(o: dict) -> str:
    return f"okx cancelled order {o.get('id')} with nothing filled"


def status(o: dict) -> str:
    if o.get("status") == "closed":
        return FILLED
    if o.get("status") in TERMINAL:
        return CANCELLED
    return PARTIALLY_FILLED if filled(o) > 0 else ACCEPTED


def refusal(o: dict) -> str | None:
    """For one answer to a placed order: "" taken, a reason if refused, None if it may be
    there already (and must be asked about)."""
    if o.get("status") != "rejected":
        return ""
    info = o.get("info") or {}
    code = str(info.get("sCode", ""))
    return None if code == MAYBE_PLACED else f"okx {code}: {info.get('sMsg', '')}"


def refusals_in(error: Exception) -> list[tuple[str, str, str]]:
    """(clOrdId, sCode, sMsg) of each order refused in the answer ccxt quotes in ``error``
    (it raises for a batch whose every order was refused)."""
    text = str(error)
    try:
        body: Any = json.loads(text[text.index("{"):])
    except ValueError:
        return []
    data = body.get("data") if isinstance(body, dict) else None
    return [(str(d.get("clOrdId", "")), str(d.get("sCode", "")), str(d.get("sMsg", "")))
            for d in data or [] if isinstance(d, dict) and d.get("sCode") not in (None, "", "0")]
