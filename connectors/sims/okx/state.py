"""The simulated venue's spot book: instruments, balances, orders, fills and the last price of
each instrument, with the rules OKX applies when it takes or refuses a spot order and the
funds an open order holds. What an order fills, and at what prices, is ``matching``'s.

Amounts are Decimals, so that lot rounding and balances are exact as on the venue. The
book can be saved to a JSON file and read back, so a restarted simulator still knows
every order it took (the point of asking a venue after a crash). Every order it accepts
is appended to an order log, one JSON line each: what really reached the venue."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from connectors.sims.okx import matching, records
from connectors.sims.okx.candles import Tape
from connectors.sims.okx.matching import Depth, Level

# listed whatever prices it is given; it trades an instrument only once it has a price for it
DEFAULT_INSTRUMENTS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
NO_PRICE = "the simulator has no price for {inst}: start it with --prices or --redis"
DEFAULT_BALANCES = {"USDT": 1_000_000.0}
LOT, MIN_SIZE = Decimal("0.00000001"), Decimal("0.00001")
TAKER_FEE, MAKER_FEE = Decimal("0.001"), Decimal("0.0008")
CLORD = re.compile(r"[A-Za-z0-9]{1,32}")
ORDER_TYPES = ("market", "limit", "post_only", "ioc", "fok")
OPEN_STATES = ("live", "partially_filled")
DONE_STATES = ("filled", "canceled", "mmp_canceled")
UNFILLED_KEPT_MS = 2 * 3600 * 1000  # OKX keeps a cancelled order that never filled in its history this long
# OKX's cancelSource: why the venue, not the user, cancelled what was left of an order
BY_USER, IOC_REST, FOK_UNFILLED, POST_ONLY_TAKES, NO_DEPTH = "1", "14", "15", "31", "9"


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


def _s(d: Decimal) -> str:
    return format(d.normalize(), "f") if d else "0"


def now_ms() -> str:
    return str(int(time.time() * 1000))


class Book:
    def __init__(self, prices: dict[str, float] | None = None, balances: dict[str, float] | None = None, *,
                 orders_log: str | Path | None = None, state_file: str | Path | None = None):
        self.lock = threading.RLock()  # the server's loop and a test's thread both reach in
        self.prices = {k: Decimal(str(v)) for k, v in (prices or DEFAULT_PRICES).items()}
        self.ticks: dict[str, Decimal] = {}  # fixed from the first price an instrument is given
        self.prices = {k: Decimal(str(v)) for k, v in (prices or {}).items()}
        self.listed = set(DEFAULT_INSTRUMENTS) | set(self.prices)
        self.balances = {k: Decimal(str(v)) for k, v in (balances or DEFAULT_BALANCES).items()}
        self.orders: dict[str, dict] = {}  # by ordId, OKX's own record of each
        self.by_clord: dict[str, str] = {}  # clOrdId -> the latest ordId under it
        self.fills: list[dict] = []
        self.tape = Tape()  # what traded, for the candles (its volume)
        self.next_id = int(time.time() * 1000) * 1000
        self.fill_ratio = Decimal(1)  # the share of a marketable order that fills at once
        self.depth = Depth()
        self.watchers: list[Callable[[dict], None]] = []  # told each change, under the lock: they must not block
        self.orders_log = Path(orders_log) if orders_log else None
        self.state_file = Path(state_file) if state_file else None
        if self.state_file and self.state_file.exists():
            try:
                self._load(json.loads(self.state_file.read_text()))
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
                raise ValueError("not a state file of the OKX simulator") from None

    # ----- the market around each last price -----

    def tick(self, inst: str) -> Decimal:
        if inst not in self.prices:  # listed, not yet priced: OKX's finest spot tick until a price fixes it
            return self.ticks.get(inst, Decimal("0.01"))
        return self.ticks.setdefault(inst, matching.tick_for(self.prices[inst]))

    def _side(self, inst: str, side: str) -> list[Level]:
        return matching.book_side(self.prices[inst], side, self.depth, self.tick(inst), LOT)

    def _best(self, inst: str) -> tuple[Level, Level]:
        return matching.best(self.prices[inst], self.depth, self.tick(inst), LOT)

    # ----- what a request may ask -----

    def instruments(self) -> list[dict]:
        with self.lock:
            return [records.instrument(inst, _s(LOT), _s(self.tick(inst)), _s(MIN_SIZE))
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
                raise Refusal("51001", "Instrument ID doesn't exist.")
            if inst not in self.prices:
                raise Refusal("51000", NO_PRICE.format(inst=inst))
            px = _s(self.prices[inst])
            bid, ask = self._best(inst)
            return {"instType": "SPOT", "instId": inst, "last": px, "lastSz": "1", "askPx": _s(ask.px),
                    "askSz": _s(ask.sz), "bidPx": _s(bid.px), "bidSz": _s(bid.sz), "open24h": px, "high24h": px,
                    "low24h": px, "volCcy24h": "0", "vol24h": "0", "ts": now_ms(), "sodUtc0": px, "sodUtc8": px}

    def candles(self, inst: str, limit: int = 100) -> list[list[str]]:
        """1-minute candlesticks of an instrument, newest first (``candles.Tape``)."""
        with self.lock:
            if inst not in self.listed:
                raise Refusal("51001", "Instrument ID doesn't exist.")
            return self.tape.candles(inst, int(now_ms()), limit)

    def trades(self, inst: str, limit: int = 100) -> list[dict]:
        """The latest public trades of an instrument, newest first."""
        with self.lock:
            if inst not in self.listed:
                raise Refusal("51001", "Instrument ID doesn't exist.")
            return [records.public_trade(f) for f in reversed(self.fills) if f["instId"] == inst][:limit]

    def frozen(self) -> dict[str, Decimal]:
        """What open orders hold, by currency: not available to another order."""
        out: dict[str, Decimal] = {}
        for o in self.orders.values():
            if o["state"] in OPEN_STATES and o.get("_frozen"):
                out[o["_frozen_ccy"]] = out.get(o["_frozen_ccy"], Decimal(0)) + Decimal(o["_frozen"])
        return out

    def available(self, ccy: str) -> Decimal:
        return self.balances.get(ccy, Decimal(0)) - self.frozen().get(ccy, Decimal(0))

    def balance(self) -> list[dict]:
        with self.lock:
            now, frozen = now_ms(), self.frozen()
            details = [records.balance_detail(ccy, _s(v), _s(frozen.get(ccy, Decimal(0))),
                                              _s(v - frozen.get(ccy, Decimal(0))), now)
                       for ccy, v in sorted(self.balances.items())]
            return [records.account(details, now)]

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
                raise Refusal("51001", "Instrument ID doesn't exist.")
            if inst not in self.prices:  # never an invented price: the order is refused, and says why
                raise Refusal("51000", NO_PRICE.format(inst=inst))
            if req.get("tdMode") != "cash":  # a spot order in a cash account; OKX requires it said
                raise Refusal("51000", "Parameter tdMode error")
            side, kind = req.get("side"), req.get("ordType")
            if side not in ("buy", "sell"):
                raise Refusal("51000", "Parameter side error")
            if kind not in ORDER_TYPES:
                raise Refusal("51000", "Parameter ordType error")
            sz = _dec(req.get("sz"), "sz")
            if cl and self._open(cl):  # OKX keeps a clOrdId unique among open orders only
                raise Refusal("51016", "Duplicated clOrdId")
            limit = _dec(req.get("px"), "px") if kind != "market" else None
            # OKX sizes a spot market buy in the quote currency unless told base_ccy
            tgt = req.get("tgtCcy") or ("quote_ccy" if side == "buy" and kind == "market" else "base_ccy")
            if tgt not in ("base_ccy", "quote_ccy") or (tgt == "quote_ccy" and kind != "market"):
                raise Refusal("51000", "Parameter tgtCcy error")
            bid, ask = self._best(inst)
            by_quote = tgt == "quote_ccy"
            reserve_px = limit if limit is not None else (ask.px if side == "buy" else bid.px)
            if (sz / reserve_px if by_quote else sz) < MIN_SIZE:
                raise Refusal("51020", "Order amount should be greater than the min available amount")
            base, quote = inst.split("-")
            o = self._new(req, inst, cl, kind, side, sz, limit, tgt)
            o.update(_left=_s(sz), _reserve_px=_s(reserve_px), _frozen_ccy=quote if side == "buy" else base)
            if self.available(o["_frozen_ccy"]) < self._reserve(o, self._cost(o, inst)):
                raise Refusal("51008", f"Order failed. Insufficient {o['_frozen_ccy']} balance in account")
            o["_frozen"] = _s(self._reserve(o))
            self.orders[o["ordId"]] = o
            if cl:
                self.by_clord[cl] = o["ordId"]
            self._changed(o, None)  # OKX pushes "live" first for every order it takes
            self._take(o, bid, ask)
            self._log(o)
            return _public(o)

    def _open(self, cl: str) -> bool:
        o = self.orders.get(self.by_clord.get(cl, ""))
        return o is not None and o["state"] in OPEN_STATES

    def _new(self, req: dict, inst: str, cl: str, kind: str, side: str, sz: Decimal, limit: Decimal | None,
             tgt: str) -> dict:
        self.next_id += 1
        now = now_ms()
        base, quote = inst.split("-")
        return {**records.ORDER_BLANKS, "accFillSz": "0", "avgPx": "", "cTime": now, "cancelSource": "",
                "clOrdId": cl, "fee": "0", "feeCcy": base if side == "buy" else quote, "fillPx": "", "fillSz": "0",
                "fillTime": "", "instId": inst, "instType": "SPOT", "ordId": str(self.next_id), "ordType": kind,
                "px": _s(limit) if limit is not None else "", "rebateCcy": quote if side == "buy" else base,
                "side": side, "state": "live", "sz": _s(sz), "tag": str(req.get("tag") or ""), "tdMode": "cash",
                "tgtCcy": tgt, "tradeId": "", "uTime": now}

    def _cost(self, o: dict, inst: str) -> Decimal | None:
        """What a market buy sized in the base currency would pay walking the asks now (None
        for every other order: its reserve is its price times its size)."""
        if o["ordType"] != "market" or o["side"] != "buy" or o["tgtCcy"] != "base_ccy":
            return None
        left = Decimal(o["_left"])
        fills = matching.walk(self._side(inst, "buy"), "buy", base=left, lot=LOT)
        got = sum((f.sz for f in fills), Decimal(0))
        return sum((f.px * f.sz for f in fills), Decimal(0)) + (left - got) * Decimal(o["_reserve_px"])

    def _reserve(self, o: dict, cost: Decimal | None = None) -> Decimal:
        """What the unfilled rest of an order holds, in ``_frozen_ccy``: a buy its cost, a
        sell its size, each in the unit the order is sized in."""
        left, px = Decimal(o["_left"]), Decimal(o["_reserve_px"])
        by_quote = o["tgtCcy"] == "quote_ccy"
        if o["side"] == "buy":
            return left if by_quote else cost if cost is not None else left * px
        return left / px if by_quote else left

    def _take(self, o: dict, bid: Level, ask: Level) -> None:
        """What a new order does at once, as OKX's order types say: a market order walks the
        book; a limit order takes what its price allows and rests; post_only rests or is
        cancelled if it would take; ioc takes what it can and cancels the rest; fok fills
        whole or not at all. ``fill_ratio`` below 1 holds back part of what would fill."""
        inst, side, kind = o["instId"], o["side"], o["ordType"]
        limit = Decimal(o["px"]) if o["px"] else None
        if kind == "post_only":
            if matching.crossed(side, limit, bid.px, ask.px):
                self._cancel(o, POST_ONLY_TAKES)
            return
        left = Decimal(o["_left"])
        by_quote = o["tgtCcy"] == "quote_ccy"
        share = left * self.fill_ratio if by_quote else matching.to_lots(left * self.fill_ratio, LOT)
        fills = matching.walk(self._side(inst, side), side, base=None if by_quote else share,
                              quote=share if by_quote else None, limit=limit, lot=LOT)
        if kind == "fok" and (self.fill_ratio < 1 or sum((f.sz for f in fills), Decimal(0)) < left):
            self._cancel(o, FOK_UNFILLED)
            return
        for f in fills:
            self._fill(o, f.sz, f.px, TAKER_FEE, "T")
        if o["state"] not in OPEN_STATES:
            return
        if kind == "ioc":
            self._cancel(o, IOC_REST)
        elif kind == "market" and self.fill_ratio == 1:
            self._cancel(o, NO_DEPTH)  # more than the book holds: OKX cancels what is left

    def cancel(self, inst: str, ord_id: str = "", cl_ord_id: str = "") -> dict:
        with self.lock:
            oid = ord_id or self.by_clord.get(cl_ord_id, "")
            o = self.orders.get(oid)
            if o is None or o["instId"] != inst:
                raise Refusal("51400", "Order cancellation failed as the order has been filled, canceled or does "
                                       "not exist")
            if o["state"] not in OPEN_STATES:
                code = "51401" if o["state"] == "canceled" else "51402"
                raise Refusal(code, "Order cancellation failed as the order is already completed")
            self._cancel(o, BY_USER)
            return _public(o)

    def _cancel(self, o: dict, source: str) -> None:
        o.update(state="canceled", cancelSource=source, uTime=now_ms(), _frozen="0")
        self._changed(o, None)

    def set_price(self, inst: str, price: float, volume: float = 0.0) -> None:
        """A new last price; every resting limit order it crosses fills at its own price.
        ``volume``: what the market traded since the last price (the candles' volume)."""
        with self.lock:
            self.prices[inst] = Decimal(str(price))
            self.listed.add(inst)
            if volume > 0:
                self.tape.add(inst, int(now_ms()), self.prices[inst], Decimal(str(volume)))
            bid, ask = self._best(inst)
            for o in sorted(self.orders.values(), key=lambda o: int(o["ordId"])):
                if (o["instId"] == inst and o["state"] in OPEN_STATES and o["ordType"] in ("limit", "post_only")
                        and matching.crossed(o["side"], Decimal(o["px"]), bid.px, ask.px)):
                    self._fill(o, Decimal(o["_left"]), Decimal(o["px"]), MAKER_FEE, "M")

    def set_balance(self, ccy: str, amount: float) -> None:
        with self.lock:
            self.balances[ccy] = Decimal(str(amount))

    def set_fill_ratio(self, ratio: float) -> None:
        with self.lock:
            self.fill_ratio = Decimal(str(ratio))

    def set_depth(self, depth: Depth) -> None:
        with self.lock:
            self.depth = depth

    def accepted(self) -> int:
        with self.lock:
            return len(self.orders)

    def _fill(self, o: dict, qty: Decimal, px: Decimal, rate: Decimal, exec_type: str) -> None:
        """Trades ``qty`` at ``px``. The fee is taken from what the order receives, as OKX
        does for spot: the base currency of a buy, the quote currency of a sell."""
        zero = Decimal(0)
        base, quote = o["instId"].split("-")
        if o["side"] == "buy":
            fee = qty * rate
            self.balances[quote] = self.balances.get(quote, zero) - qty * px
            self.balances[base] = self.balances.get(base, zero) + qty - fee
        else:
            fee = qty * px * rate
            self.balances[base] = self.balances.get(base, zero) - qty
            self.balances[quote] = self.balances.get(quote, zero) + qty * px - fee
        done = Decimal(o["accFillSz"]) + qty
        paid = Decimal(o["avgPx"] or 0) * Decimal(o["accFillSz"]) + qty * px
        left = Decimal(o["_left"]) - (qty * px if o["tgtCcy"] == "quote_ccy" else qty)
        finished = left <= 0 or (o["tgtCcy"] == "quote_ccy" and left < LOT * px)
        now = now_ms()
        trade = str(len(self.fills) + 1)
        o.update(accFillSz=_s(done), fillPx=_s(px), fillSz=_s(qty), avgPx=_s(paid / done),
                 fee=_s(Decimal(o["fee"]) - fee), fillTime=now, uTime=now, tradeId=trade,
                 state="filled" if finished else "partially_filled", _left=_s(max(left, zero)))
        o["_frozen"] = "0" if finished else _s(self._reserve(o))
        self.fills.append({**records.FILL_BLANKS, "instType": "SPOT", "instId": o["instId"], "tradeId": trade,
                           "ordId": o["ordId"], "clOrdId": o["clOrdId"], "billId": trade, "tag": o["tag"],
                           "fillPx": _s(px), "fillSz": _s(qty), "side": o["side"], "execType": exec_type,
                           "feeCcy": o["feeCcy"], "fee": _s(-fee), "feeRate": _s(-rate), "ts": now,
                           "fillTime": now})
        self.tape.add(o["instId"], int(now), px, qty)
        self._changed(o, self.fills[-1])

    def _changed(self, o: dict, fill: dict | None) -> None:
        """Tells the watchers OKX's push for this change."""
        doc = records.push(_public(o), fill)
        for watcher in self.watchers:
            watcher(doc)

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
                   "ticks": {k: _s(v) for k, v in self.ticks.items()},
                   "balances": {k: _s(v) for k, v in self.balances.items()},
                   "orders": list(self.orders.values()), "fills": self.fills, "next_id": self.next_id}
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_file)  # a crash mid-write leaves the previous state, never half of one

    def _load(self, doc: dict) -> None:
        self.prices.update({k: Decimal(v) for k, v in doc.get("prices", {}).items()})
        self.ticks.update({k: Decimal(v) for k, v in doc.get("ticks", {}).items()})
        self.listed |= set(self.prices)
        self.balances = {k: Decimal(v) for k, v in doc.get("balances", {}).items()}
        for o in doc.get("orders", []):
            o = {**records.ORDER_BLANKS, **o}  # a file an older simulator wrote lacks some of OKX's fields
            left = Decimal(o["sz"]) - (Decimal(o["accFillSz"]) if o["tgtCcy"] != "quote_ccy" else 0)
            o.setdefault("_left", _s(max(left, Decimal(0))))
            o.setdefault("_reserve_px", o["px"] or o["avgPx"] or "1")
            o.setdefault("_frozen_ccy", o["instId"].split("-")[1 if o["side"] == "buy" else 0])
            o.setdefault("_frozen", "0")
            self.orders[o["ordId"]] = o
            if o["clOrdId"]:
                self.by_clord[o["clOrdId"]] = o["ordId"]
        self.fills = doc.get("fills", [])
        self.next_id = max(self.next_id, int(doc.get("next_id", 0)))


def _public(o: dict) -> dict:
    return {k: v for k, v in o.items() if not k.startswith("_")}
