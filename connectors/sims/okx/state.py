"""The simulated venue's book: instruments, balances, orders, fills and the last price of
each instrument, with the rules OKX applies when it takes or refuses a spot order.

Amounts are Decimals, so that lot rounding and balances are exact as on the venue. The
book can be saved to a JSON file and read back, so a restarted simulator still knows
every order it took (the point of asking a venue after a crash). Every order it accepts
is appended to an order log, one JSON line each: what really reached the venue."""

from __future__ import annotations

import json
import re
import threading
import time
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from collections.abc import Callable
from pathlib import Path

# listed whatever prices it is given; it trades an instrument only once it has a price for it
DEFAULT_INSTRUMENTS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
NO_PRICE = "the simulator has no price for {inst}: start it with --prices or --redis"
DEFAULT_BALANCES = {"USDT": 1_000_000.0}
LOT, TICK, MIN_SIZE = Decimal("0.00000001"), Decimal("0.01"), Decimal("0.00001")
TAKER_FEE = Decimal("0.001")
CLORD = re.compile(r"[A-Za-z0-9]{1,32}")
OPEN_STATES = ("live", "partially_filled")
DONE_STATES = ("filled", "canceled", "mmp_canceled")
UNFILLED_KEPT_MS = 2 * 3600 * 1000  # OKX keeps a cancelled order that never filled in its history this long

OK = ("0", "Order placed")


class Refusal(Exception):
    """An order or request the venue refuses: OKX's code and message."""

    def __init__(self, code: str, msg: str):
        super().__init__(f"{code} {msg}")
        self.code, self.msg = code, msg


def _dec(value: object, what: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise Refusal("51000", f"Parameter {what} error") from None
    if not d.is_finite() or d <= 0:
        raise Refusal("51000", f"Parameter {what} error")
    return d


def _lots(qty: Decimal) -> Decimal:
    return (qty / LOT).to_integral_value(ROUND_DOWN) * LOT


def _s(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


def now_ms() -> str:
    return str(int(time.time() * 1000))


class Book:
    def __init__(self, prices: dict[str, float] | None = None, balances: dict[str, float] | None = None, *,
                 orders_log: str | Path | None = None, state_file: str | Path | None = None):
        self.lock = threading.RLock()  # the server's loop and a test's thread both reach in
        self.prices = {k: Decimal(str(v)) for k, v in (prices or {}).items()}
        self.listed = set(DEFAULT_INSTRUMENTS) | set(self.prices)
        self.balances = {k: Decimal(str(v)) for k, v in (balances or DEFAULT_BALANCES).items()}
        self.orders: dict[str, dict] = {}  # by ordId, OKX's own record of each
        self.by_clord: dict[str, str] = {}  # clOrdId -> the latest ordId under it
        self.fills: list[dict] = []
        self.next_id = int(time.time() * 1000) * 1000
        self.fill_ratio = Decimal(1)  # the share of a marketable order that fills at once
        self.watchers: list[Callable[[dict], None]] = []  # told each change, under the lock: they must not block
        self.orders_log = Path(orders_log) if orders_log else None
        self.state_file = Path(state_file) if state_file else None
        if self.state_file and self.state_file.exists():
            try:
                self._load(json.loads(self.state_file.read_text()))
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
                raise ValueError("not a state file of the OKX simulator") from None

    # ----- what a request may ask -----

    def instruments(self) -> list[dict]:
        with self.lock:
            return [{"instType": "SPOT", "instId": inst, "baseCcy": inst.split("-")[0],
                     "quoteCcy": inst.split("-")[1], "state": "live", "lotSz": _s(LOT), "tickSz": _s(TICK),
                     "minSz": _s(MIN_SIZE), "maxLmtSz": "1000000000", "maxMktSz": "1000000000",
                     "listTime": "1548133413000", "category": "1", "settleCcy": "", "ctVal": "",
                     "ctMult": "", "ctValCcy": "", "uly": "", "lever": "", "alias": "", "expTime": ""}
                    for inst in sorted(self.listed)]

    def currencies(self) -> list[dict]:
        """One chain per currency traded, enough for ccxt's currency table."""
        with self.lock:
            ccys = sorted({c for inst in self.listed for c in inst.split("-")} | set(self.balances))
        return [{"ccy": c, "name": c, "chain": f"{c}-{c}", "canDep": True, "canWd": True, "canInternal": True,
                 "minWd": "0.0001", "maxWd": "1000000", "fee": "0", "minFee": "0", "maxFee": "0",
                 "wdTickSz": "8", "mainNet": True} for c in ccys]

    def ticker(self, inst: str) -> dict:
        with self.lock:
            if inst not in self.listed:
                raise Refusal("51001", "Instrument ID does not exist")
            if inst not in self.prices:
                raise Refusal("51000", NO_PRICE.format(inst=inst))
            px = _s(self.prices[inst])
            return {"instType": "SPOT", "instId": inst, "last": px, "lastSz": "1", "askPx": px, "askSz": "1",
                    "bidPx": px, "bidSz": "1", "open24h": px, "high24h": px, "low24h": px, "vol24h": "0",
                    "volCcy24h": "0", "sodUtc0": px, "sodUtc8": px, "ts": now_ms()}

    def balance(self) -> list[dict]:
        with self.lock:
            details = [{"ccy": ccy, "eq": _s(v), "cashBal": _s(v), "availBal": _s(v), "availEq": _s(v),
                        "frozenBal": "0", "uTime": now_ms()} for ccy, v in sorted(self.balances.items())]
            return [{"uTime": now_ms(), "totalEq": "", "details": details}]

    def order(self, inst: str, ord_id: str = "", cl_ord_id: str = "") -> dict | None:
        with self.lock:
            oid = ord_id or self.by_clord.get(cl_ord_id, "")
            o = self.orders.get(oid)
            return _public(o) if o is not None and o["instId"] == inst else None

    def pending(self, inst: str = "", inst_type: str = "") -> list[dict]:
        """Working orders, newest first."""
        with self.lock:
            return [_public(o) for o in sorted(self.orders.values(), key=lambda o: int(o["ordId"]), reverse=True)
                    if o["state"] in OPEN_STATES and (not inst or o["instId"] == inst)
                    and (not inst_type or o["instType"] == inst_type)]

    def history(self, inst_type: str, inst: str = "", state: str = "", now: int | None = None) -> list[dict]:
        """Completed orders, newest first (by ordId, as OKX pages them). A cancelled order
        that never filled drops out after a while, as on OKX."""
        cutoff = (now if now is not None else int(now_ms())) - UNFILLED_KEPT_MS
        with self.lock:
            done = [o for o in self.orders.values() if o["state"] in DONE_STATES and o["instType"] == inst_type
                    and (not inst or o["instId"] == inst) and (not state or o["state"] == state)
                    and not (o["state"] != "filled" and o["accFillSz"] == "0" and int(o["uTime"]) < cutoff)]
            return [_public(o) for o in sorted(done, key=lambda o: int(o["ordId"]), reverse=True)]

    def fills_of(self, inst: str = "", ord_id: str = "") -> list[dict]:
        with self.lock:
            return [dict(f) for f in reversed(self.fills)
                    if (not inst or f["instId"] == inst) and (not ord_id or f["ordId"] == ord_id)]

    # ----- what changes it -----

    def place(self, req: dict) -> dict:
        """Takes one order or raises ``Refusal``; returns OKX's record of it."""
        with self.lock:
            cl = str(req.get("clOrdId") or "")
            if cl and not CLORD.fullmatch(cl):
                raise Refusal("51000", "Parameter clOrdId error")
            inst = str(req.get("instId") or "")
            if inst not in self.listed:
                raise Refusal("51001", "Instrument ID does not exist")
            if inst not in self.prices:  # never an invented price: the order is refused, and says why
                raise Refusal("51000", NO_PRICE.format(inst=inst))
            side, kind = req.get("side"), req.get("ordType")
            if side not in ("buy", "sell"):
                raise Refusal("51000", "Parameter side error")
            if kind not in ("market", "limit", "ioc"):
                raise Refusal("51000", "Parameter ordType error")
            sz = _dec(req.get("sz"), "sz")
            if cl and cl in self.by_clord:
                raise Refusal("51016", "Duplicated clOrdId")
            last = self.prices[inst]
            limit = _dec(req.get("px"), "px") if kind in ("limit", "ioc") else None
            # OKX sizes a spot market buy in the quote currency unless told base_ccy
            tgt = req.get("tgtCcy") or ("quote_ccy" if side == "buy" and kind == "market" else "base_ccy")
            base_sz = sz if tgt == "base_ccy" else _lots(sz / last)
            if base_sz < MIN_SIZE:
                raise Refusal("51020", "Order amount should be greater than the min available amount")
            base, quote = inst.split("-")
            cost_px = limit if limit is not None else last
            if side == "buy" and self.balances.get(quote, Decimal(0)) < base_sz * cost_px:
                raise Refusal("51008", f"Order failed. Insufficient {quote} balance in account")
            if side == "sell" and self.balances.get(base, Decimal(0)) < base_sz:
                raise Refusal("51008", f"Order failed. Insufficient {base} balance in account")
            marketable = limit is None or (limit >= last if side == "buy" else limit <= last)
            filled = _lots(base_sz * self.fill_ratio) if marketable else Decimal(0)
            self.next_id += 1
            now = now_ms()
            o = {"instType": "SPOT", "instId": inst, "ordId": str(self.next_id), "clOrdId": cl, "tag": "",
                 "px": _s(limit) if limit is not None else "", "sz": _s(sz), "ordType": kind, "side": side,
                 "tdMode": req.get("tdMode", "cash"), "tgtCcy": tgt, "state": "live", "accFillSz": "0",
                 "fillPx": "", "fillSz": "0", "avgPx": "", "fee": "0", "feeCcy": base if side == "buy" else quote,
                 "cTime": now, "uTime": now, "fillTime": "", "cancelSource": "", "category": "normal",
                 "tradeId": "", "_base_sz": _s(base_sz)}
            self.orders[o["ordId"]] = o
            if cl:
                self.by_clord[cl] = o["ordId"]
            self._changed(o, None)  # OKX pushes "live" first for every order it takes
            if filled:
                self._fill(o, filled, last, base, quote)
            if kind == "ioc" and o["state"] in OPEN_STATES:  # what did not fill at once is cancelled
                o["state"], o["uTime"] = "canceled", now_ms()
                self._changed(o, None)
            self._log(o)
            return _public(o)

    def cancel(self, inst: str, ord_id: str = "", cl_ord_id: str = "") -> dict:
        with self.lock:
            oid = ord_id or self.by_clord.get(cl_ord_id, "")
            o = self.orders.get(oid)
            if o is None or o["instId"] != inst:
                raise Refusal("51400", "Order cancellation failed as the order does not exist")
            if o["state"] not in OPEN_STATES:
                code = "51401" if o["state"] == "canceled" else "51402"
                raise Refusal(code, "Order cancellation failed as the order is already completed")
            o["state"], o["uTime"] = "canceled", now_ms()
            self._changed(o, None)
            return _public(o)

    def set_price(self, inst: str, price: float) -> None:
        with self.lock:
            self.prices[inst] = Decimal(str(price))
            self.listed.add(inst)

    def set_balance(self, ccy: str, amount: float) -> None:
        with self.lock:
            self.balances[ccy] = Decimal(str(amount))

    def set_fill_ratio(self, ratio: float) -> None:
        with self.lock:
            self.fill_ratio = Decimal(str(ratio))

    def accepted(self) -> int:
        with self.lock:
            return len(self.orders)

    def _fill(self, o: dict, qty: Decimal, px: Decimal, base: str, quote: str) -> None:
        """Trades ``qty`` at ``px``. The fee is taken from what the order receives, as OKX
        does for spot: the base currency of a buy, the quote currency of a sell."""
        zero = Decimal(0)
        if o["side"] == "buy":
            fee = qty * TAKER_FEE
            self.balances[quote] = self.balances.get(quote, zero) - qty * px
            self.balances[base] = self.balances.get(base, zero) + qty - fee
        else:
            fee = qty * px * TAKER_FEE
            self.balances[base] = self.balances.get(base, zero) - qty
            self.balances[quote] = self.balances.get(quote, zero) + qty * px - fee
        done = Decimal(o["accFillSz"]) + qty
        now = now_ms()
        o.update(accFillSz=_s(done), fillPx=_s(px), fillSz=_s(qty), avgPx=_s(px), fee=_s(-fee), fillTime=now,
                 uTime=now, state="filled" if done >= Decimal(o["_base_sz"]) else "partially_filled")
        trade = str(len(self.fills) + 1)
        o["tradeId"] = trade  # OKX's order record names its latest trade
        self.fills.append({"instType": "SPOT", "instId": o["instId"], "tradeId": trade,
                           "ordId": o["ordId"], "clOrdId": o["clOrdId"], "billId": str(len(self.fills) + 1),
                           "tag": "", "fillPx": _s(px), "fillSz": _s(qty), "side": o["side"], "posSide": "net",
                           "execType": "T", "feeCcy": o["feeCcy"], "fee": _s(-fee), "ts": now, "fillTime": now})
        self._changed(o, self.fills[-1])

    def _changed(self, o: dict, fill: dict | None) -> None:
        """Tells the watchers OKX's push for this change: the order's record, with the fill
        just made (its size, price and fee; ``tradeId`` is always the latest trade's)."""
        push = {**_public(o), "fillSz": fill["fillSz"] if fill else "0", "fillPx": fill["fillPx"] if fill else "",
                "tradeId": fill["tradeId"] if fill else o.get("tradeId", ""), "fillFee": fill["fee"] if fill else "0",
                "fillFeeCcy": fill["feeCcy"] if fill else "", "execType": "T" if fill else "",
                "fillTime": fill["fillTime"] if fill else o["fillTime"], "amendResult": "", "code": "0",
                "msg": "", "reqId": "", "ccy": "", "lever": "", "pnl": "0", "posSide": "", "rebate": "0",
                "rebateCcy": o["instId"].split("-")[1 if o["side"] == "buy" else 0]}
        for watcher in self.watchers:
            watcher(push)

    def _log(self, o: dict) -> None:
        if self.orders_log is None:
            return
        line = {"clOrdId": o["clOrdId"], "ordId": o["ordId"], "instId": o["instId"], "side": o["side"],
                "sz": o["sz"], "tgtCcy": o["tgtCcy"], "accFillSz": o["accFillSz"], "fillPx": o["avgPx"],
                "received_us": time.time_ns() // 1000}  # wall clock, for emit → accepted at the venue
        with self.orders_log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    # ----- across restarts -----

    def save(self) -> None:
        if self.state_file is None:
            return
        with self.lock:
            doc = {"prices": {k: _s(v) for k, v in self.prices.items()},
                   "balances": {k: _s(v) for k, v in self.balances.items()},
                   "orders": list(self.orders.values()), "fills": self.fills, "next_id": self.next_id}
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_file)  # a crash mid-write leaves the previous state, never half of one

    def _load(self, doc: dict) -> None:
        self.prices.update({k: Decimal(v) for k, v in doc.get("prices", {}).items()})
        self.listed |= set(self.prices)
        self.balances = {k: Decimal(v) for k, v in doc.get("balances", {}).items()}
        for o in doc.get("orders", []):
            self.orders[o["ordId"]] = o
            if o["clOrdId"]:
                self.by_clord[o["clOrdId"]] = o["ordId"]
        self.fills = doc.get("fills", [])
        self.next_id = max(self.next_id, int(doc.get("next_id", 0)))


def _public(o: dict) -> dict:
    return {k: v for k, v in o.items() if not k.startswith("_")}
