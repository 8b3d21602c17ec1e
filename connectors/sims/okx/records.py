"""The records the simulator answers with, field for field as OKX sends them (held against
OKX's own answers in ``tests/data/okx-real/`` by ``tests/test_okx_fidelity.py``): an order,
a fill, an instrument, a balance, a public trade, and an order change as the ``orders``
channel pushes it. Fields the simulator has no use for carry OKX's empty value."""

from __future__ import annotations

import zlib

# an order's fields with nothing to say in a cash account, as OKX sends them
ORDER_BLANKS = {"algoClOrdId": "", "algoId": "", "attachAlgoClOrdId": "", "attachAlgoOrds": [],
                "cancelSourceReason": "", "category": "normal", "ccy": "", "isTpLimit": "false", "lever": "",
                "linkedAlgoOrd": {"algoId": ""}, "pnl": "0", "posSide": "net", "pxType": "", "pxUsd": "",
                "pxVol": "", "quickMgnType": "", "rebate": "0", "reduceOnly": "false", "slOrdPx": "",
                "slTriggerPx": "", "slTriggerPxType": "", "source": "", "stpId": "", "stpMode": "cancel_maker",
                "tpOrdPx": "", "tpTriggerPx": "", "tpTriggerPxType": ""}

FILL_BLANKS = {"fillPxVol": "", "fillFwdPx": "", "fillPnl": "0", "fillPxUsd": "", "fillMarkVol": "",
               "fillIdxPx": "", "fillMarkPx": "", "posSide": "net", "tag": ""}

INSTRUMENT_BLANKS = {"alias": "", "auctionEndTime": "", "category": "1", "ctMult": "", "ctType": "", "ctVal": "",
                     "ctValCcy": "", "expTime": "", "instFamily": "", "lever": "", "listTime": "1548133413000",
                     "maxIcebergSz": "9999999999.0000000000000000", "maxLmtAmt": "20000000",
                     "maxLmtSz": "9999999999", "maxMktAmt": "1000000", "maxMktSz": "1000000",
                     "maxStopSz": "1000000", "maxTriggerSz": "9999999999.0000000000000000",
                     "maxTwapSz": "9999999999.0000000000000000", "optType": "", "ruleType": "normal",
                     "settleCcy": "", "state": "live", "stk": "", "uly": ""}

ACCOUNT_BLANKS = {"adjEq": "", "borrowFroz": "", "imr": "", "isoEq": "0", "mgnRatio": "", "mmr": "",
                  "notionalUsd": "", "notionalUsdForBorrow": "", "notionalUsdForFutures": "",
                  "notionalUsdForOption": "", "notionalUsdForSwap": "", "ordFroz": "", "upl": ""}

DETAIL_BLANKS = {"accAvgPx": "", "borrowFroz": "", "clSpotInUseAmt": "", "colBorrAutoConversion": "0",
                 "collateralEnabled": False, "collateralRestrict": False, "crossLiab": "", "fixedBal": "0",
                 "imr": "", "interest": "", "isoEq": "0", "isoLiab": "", "isoUpl": "0", "liab": "",
                 "maxLoan": "", "maxSpotInUse": "", "maxSpotInUseAmt": "", "mgnRatio": "", "mmr": "",
                 "notionalLever": "", "openAvgPx": "", "rewardBal": "", "smtSyncEq": "0", "spotBal": "",
                 "spotCopyTradingEq": "0", "spotInUseAmt": "", "spotIsoBal": "0", "spotUpl": "",
                 "spotUplRatio": "", "stgyEq": "0", "totalPnl": "", "totalPnlRatio": "", "twap": "0", "upl": "0",
                 "uplLiab": ""}


def inst_id_code(inst: str) -> int:
    """The integer OKX names an instrument by in WebSocket orders: fixed for each instId,
    so that a client that cached it at start still names the same instrument later."""
    return 1_000_000_000 + zlib.crc32(inst.encode()) % 1_000_000_000


def instrument(inst: str, lot: str, tick: str, min_sz: str) -> dict:
    base, quote = inst.split("-")
    return {**INSTRUMENT_BLANKS, "baseCcy": base, "instId": inst, "instIdCode": inst_id_code(inst),
            "instType": "SPOT", "lotSz": lot, "minSz": min_sz, "quoteCcy": quote, "tickSz": tick}


def balance_detail(ccy: str, cash: str, frozen: str, available: str, now: str) -> dict:
    return {**DETAIL_BLANKS, "availBal": available, "availEq": available, "cashBal": cash, "ccy": ccy,
            "disEq": cash, "eq": cash, "eqUsd": cash if ccy in ("USDT", "USDC", "USD") else "", "frozenBal": frozen,
            "ordFrozen": frozen, "uTime": now}


def account(details: list[dict], now: str) -> dict:
    return {**ACCOUNT_BLANKS, "availEq": "", "details": details, "totalEq": "", "uTime": now}


def public_trade(fill: dict) -> dict:
    """A fill as ``market/trades`` shows it to everyone: the taker's side."""
    return {"instId": fill["instId"], "side": fill["side"], "sz": fill["fillSz"], "px": fill["fillPx"],
            "tradeId": fill["tradeId"], "ts": fill["ts"]}


def push(order: dict, fill: dict | None) -> dict:
    """The ``orders`` channel's record of a change: the order, with the fill just made (its
    size, price and fee; ``tradeId`` always the latest trade's) or none."""
    return {**order, "fillSz": fill["fillSz"] if fill else "0", "fillPx": fill["fillPx"] if fill else "",
            "tradeId": fill["tradeId"] if fill else order.get("tradeId", ""),
            "fillFee": fill["fee"] if fill else "0", "fillFeeCcy": fill["feeCcy"] if fill else "",
            "execType": fill["execType"] if fill else "", "fillTime": fill["fillTime"] if fill else order["fillTime"],
            "fillNotionalUsd": "", "fillPnl": "0", "amendResult": "", "amendSource": "", "code": "0", "msg": "",
            "reqId": "", "notionalUsd": ""}
