"""Encoders of the server's messages, field for field as ``ib_async``'s decoder reads
them at server version 178. Fields the client does not need are sent empty (it keeps
its defaults for those); counts of repeated groups are sent as ``0``, never empty,
because the decoder reads them with ``int()``."""

from __future__ import annotations

import time

from connectors.sims.ibkr.state import SimExecution, SimOrder, con_id
from connectors.sims.ibkr.wire import encode, tws_time

EXCHANGE = "SMART"
PRIMARY = "NASDAQ"
CURRENCY = "USD"
MIN_TICK = 0.01


def _blank(n: int) -> list[str]:
    return [""] * n


def _contract(symbol: str, exchange: str = EXCHANGE) -> list[object]:
    """The eleven contract fields most messages carry."""
    return [con_id(symbol), symbol, "STK", "", "", "", "", exchange, CURRENCY, symbol, "NMS"]


def next_valid_id(order_id: int) -> bytes:
    return encode(9, 1, order_id)


def managed_accounts(accounts: str) -> bytes:
    return encode(15, 1, accounts)


def current_time(skew_s: float = 0.0) -> bytes:
    """``skew_s``: how far the simulated gateway's clock is set from this machine's."""
    return encode(49, 1, int(time.time() + skew_s))


def error(req_id: int, code: int, message: str) -> bytes:
    return encode(4, 2, req_id, code, message, "")


def contract_details(req_id: int, symbol: str) -> bytes:
    return encode(
        10, req_id, symbol, "STK", "", "", "", EXCHANGE, CURRENCY, symbol, "NMS", "NMS", con_id(symbol), MIN_TICK,
        "", "LMT,MKT", f"{EXCHANGE},{PRIMARY}", 1, 0, symbol, PRIMARY, "", "", "", "",
        "US/Eastern", "", "", "", "", 0,  # no secIds
        1, "", "", "26,26", "", "COMMON", 1, 1, 1)  # aggGroup … minSize, sizeIncrement, suggested


def contract_details_end(req_id: int) -> bytes:
    return encode(52, 1, req_id)


def open_order(o: SimOrder) -> bytes:
    fields: list[object] = [5, o.order_id, *_contract(o.symbol), o.action, o.quantity, o.order_type, "", "", "DAY",
                            "", o.account, "", 0, o.order_ref, o.client_id, o.perm_id, 0, 0, "", "", "", "", "", ""]
    fields += _blank(29)  # modelCode … deltaNeutralAuxPrice: an empty deltaNeutralOrderType skips its group
    fields += _blank(7)  # continuousUpdate … comboLegsDescrip
    fields += [0, 0, 0]  # combo legs, order combo legs, smart combo routing params
    fields += _blank(3)  # scale fields: an empty increment skips the rest
    fields += [""]  # hedgeType
    fields += ["", "", "", "", 0]  # optOutSmartRouting … notHeld, no delta-neutral contract
    fields += [""]  # algoStrategy
    fields += ["", 0, o.status, *_blank(9), "", "", "", "", "", "", ""]  # solicited, whatIf, status, margins …
    fields += [0]  # conditions
    fields += _blank(16)  # adjusted order fields … usePriceMgmtAlgo
    fields += _blank(3)  # duration, postToAts, autoCancelParent
    fields += _blank(5)  # minTradeQty … midOffsetAtHalf
    return encode(*fields)


def open_order_end() -> bytes:
    return encode(53, 1)


def completed_order(o: SimOrder) -> bytes:
    fields: list[object] = [101, *_contract(o.symbol), o.action, o.quantity, o.order_type, "", "", "DAY", "",
                            o.account, "", 0, o.order_ref, o.perm_id, 0, 0, "", "", "", "", ""]
    fields += _blank(23)  # modelCode … deltaNeutralAuxPrice
    fields += _blank(5)  # continuousUpdate … comboLegsDescrip
    fields += [0, 0, 0]
    fields += _blank(3)
    fields += [""]  # hedgeType
    fields += ["", "", "", 0]  # clearingAccount, clearingIntent, notHeld, no delta-neutral contract
    fields += [""]  # algoStrategy
    fields += ["", o.status, "", ""]  # solicited, status, randomizeSize, randomizePrice
    fields += [0]  # conditions
    fields += [*_blank(6), o.filled, *_blank(6), o.completed_time, o.status]  # … filledQuantity … completedStatus
    fields += _blank(5)
    return encode(*fields)


def completed_orders_end() -> bytes:
    return encode(102)


def order_status(o: SimOrder, last_price: float) -> bytes:
    return encode(3, o.order_id, o.status, o.filled, o.remaining, o.avg_price, o.perm_id, 0, last_price,
                  o.client_id, "", 0)


def exec_details(req_id: int, ex: SimExecution) -> bytes:
    return encode(11, req_id, ex.order_id, *_contract(ex.symbol, PRIMARY), ex.exec_id, ex.time, ex.account,
                  PRIMARY, ex.side, ex.shares, ex.price, ex.perm_id, ex.client_id, 0, ex.cum_qty, ex.avg_price,
                  ex.order_ref, "", "", "", 1, "")


def exec_details_end(req_id: int) -> bytes:
    return encode(55, 1, req_id)


def commission_report(ex: SimExecution) -> bytes:
    return encode(59, 1, ex.exec_id, ex.commission, CURRENCY, "", "", "")


def position(account: str, symbol: str, qty: float, avg_cost: float) -> bytes:
    return encode(61, 3, account, *_contract(symbol), qty, avg_cost)


def position_end() -> bytes:
    return encode(62, 1)


def account_value(key: str, value: object, currency: str, account: str) -> bytes:
    return encode(6, 2, key, value, currency, account)


def account_time() -> bytes:
    return encode(8, 1, tws_time()[9:14])


def account_download_end(account: str) -> bytes:
    return encode(54, 1, account)


def account_update_multi(req_id: int, account: str, key: str, value: object, currency: str) -> bytes:
    return encode(73, 1, req_id, account, "", key, value, currency)


def account_update_multi_end(req_id: int) -> bytes:
    return encode(74, 1, req_id)


def account_summary(req_id: int, account: str, tag: str, value: object, currency: str) -> bytes:
    return encode(63, 1, req_id, account, tag, value, currency)


def account_summary_end(req_id: int) -> bytes:
    return encode(64, 1, req_id)
