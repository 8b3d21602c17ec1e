"""USDT perpetual swaps in the simulated venue, as OKX runs them for an account in net
position mode: ``BTC-USDT-SWAP`` instruments sized in contracts (``ctVal`` coins each, in
steps of ``lotSz``), orders in isolated margin, one signed position per instrument (a sell
opens or adds to a short, a buy reduces it), the margin each position holds taken from the
USDT balance (51008 when it is short of it), leverage set per instrument, and funding
applied to open positions and written as bills of type 8.

One swap is listed for each spot instrument the book prices, at the spot's last price.
The book (``state.Book``) keeps its orders, fills and watchers for spot and swap alike;
what only swaps have (positions, leverage, bills, funding rates) is kept here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.sims.okx.state import CLORD, NO_PRICE, Refusal, _dec, _s, now_ms

if TYPE_CHECKING:
    from connectors.sims.okx.state import Book

SUFFIX = "-SWAP"
SETTLE = "USDT"
TAKER_FEE = Decimal("0.0005")  # OKX's base tier for USDT swaps, charged in USDT on the notional
MMR = Decimal("0.004")  # maintenance margin rate, for the liquidation price shown
MAX_LEVER = 100
DEFAULT_LEVER = Decimal(3)  # what an instrument has before set-leverage, so a test sees it was set
DEFAULT_RATE = Decimal("0.0001")
FUNDING_EVERY_MS = 8 * 3600 * 1000


@dataclass(frozen=True)
class Spec:
    ct_val: Decimal  # base coins per contract
    lot: Decimal  # contracts come in whole multiples of it
    min_sz: Decimal
    tick: Decimal


# OKX's own figures for these; any other coin gets one coin a contract
SPECS = {"BTC": Spec(Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal("0.1")),
         "ETH": Spec(Decimal("0.1"), Decimal("0.01"), Decimal("0.01"), Decimal("0.01")),
         "SOL": Spec(Decimal("1"), Decimal("0.01"), Decimal("0.01"), Decimal("0.01"))}
OTHER = Spec(Decimal("1"), Decimal("0.01"), Decimal("0.01"), Decimal("0.0001"))


def is_swap(inst: object) -> bool:
    return isinstance(inst, str) and inst.endswith(SUFFIX)


def spot_of(inst: str) -> str:
    return inst[: -len(SUFFIX)]


def spec_of(inst: str) -> Spec:
    return SPECS.get(inst.split("-")[0], OTHER)


@dataclass
class Position:
    pos: Decimal = Decimal(0)  # contracts, signed: below zero a short
    avg: Decimal = Decimal(0)
    margin: Decimal = Decimal(0)  # USDT held for it (isolated)
    fee: Decimal = Decimal(0)  # trading fees paid, negative
    funding: Decimal = Decimal(0)  # funding received (paid: negative)
    realized: Decimal = Decimal(0)
    c_time: str = ""
    u_time: str = ""
    trade_id: str = ""
    pos_id: str = ""


class Swaps:
    def __init__(self, book: Book):
        """Kept beside the book's state file, if it has one (``<file>.swaps``), so that a
        restarted simulator still holds its positions."""
        self.book = book
        self.positions: dict[str, Position] = {}
        self.lever: dict[str, Decimal] = {}
        self.rates: dict[str, Decimal] = {}
        self.bills: list[dict] = []
        self.state_file = Path(f"{book.state_file}.swaps") if book.state_file else None
        if self.state_file and self.state_file.exists():
            try:
                self._load(json.loads(self.state_file.read_text()))
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
                raise ValueError("not a swaps state file of the OKX simulator") from None

    def save(self) -> None:
        if self.state_file is None:
            return
        with self.book.lock:
            doc = {"positions": {i: {k: str(v) for k, v in asdict(p).items()} for i, p in self.positions.items()},
                   "lever": {i: str(v) for i, v in self.lever.items()},
                   "rates": {i: str(v) for i, v in self.rates.items()}, "bills": self.bills}
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_file)  # a crash mid-write leaves the previous state

    def _load(self, doc: dict) -> None:
        decimals = ("pos", "avg", "margin", "fee", "funding", "realized")
        self.positions = {i: Position(**{k: Decimal(v) if k in decimals else v for k, v in p.items()})
                          for i, p in doc["positions"].items()}
        self.lever = {i: Decimal(v) for i, v in doc["lever"].items()}
        self.rates = {i: Decimal(v) for i, v in doc["rates"].items()}
        self.bills = list(doc["bills"])

    # ----- what a request may ask -----

    def listed(self) -> list[str]:
        return sorted(f"{inst}{SUFFIX}" for inst in self.book.listed if inst.endswith(f"-{SETTLE}"))

    def _known(self, inst: str) -> None:
        if not is_swap(inst) or spot_of(inst) not in self.book.listed:
            raise Refusal("51001", "Instrument ID doesn't exist.")
        if spot_of(inst) not in self.book.prices:  # never an invented price: refused, and says why
            raise Refusal("51000", NO_PRICE.format(inst=inst))

    def instruments(self) -> list[dict]:
        with self.book.lock:
            out = []
            for inst in self.listed():
                sp, uly = spec_of(inst), spot_of(inst)
                out.append({"instType": "SWAP", "instId": inst, "instIdCode": _code(inst), "uly": uly,
                            "instFamily": uly, "baseCcy": "", "quoteCcy": "", "settleCcy": SETTLE,
                            "ctVal": _s(sp.ct_val), "ctMult": "1", "ctValCcy": uly.split("-")[0],
                            "ctType": "linear", "lotSz": _s(sp.lot), "minSz": _s(sp.min_sz),
                            "tickSz": _s(sp.tick), "lever": str(MAX_LEVER), "state": "live",
                            "maxLmtSz": "100000000", "maxMktSz": "100000", "listTime": "1611916828000",
                            "expTime": "", "alias": "", "category": "1", "optType": "", "stk": "",
                            "ruleType": "normal"})
            return out

    def ticker(self, inst: str) -> dict:
        with self.book.lock:
            self._known(inst)
            px = _s(self.book.prices[spot_of(inst)])
        return {"instType": "SWAP", "instId": inst, "last": px, "lastSz": "1", "askPx": px, "askSz": "1",
                "bidPx": px, "bidSz": "1", "open24h": px, "high24h": px, "low24h": px, "vol24h": "0",
                "volCcy24h": "0", "sodUtc0": px, "sodUtc8": px, "ts": now_ms()}

    def config(self) -> list[dict]:
        return [{"uid": "44705892343619584", "mainUid": "44705892343619584", "acctLv": "2", "posMode": "net_mode",
                 "autoLoan": False, "greeksType": "PA", "level": "Lv1", "levelTmp": "", "ctIsoMode": "automatic",
                 "mgnIsoMode": "automatic", "spotOffsetType": "", "roleType": "0", "traderInsts": [],
                 "spotRoleType": "0", "spotTraderInsts": [], "opAuth": "0", "kycLv": "2", "label": "apex-sim",
                 "ip": "", "perm": "read_only,trade", "liquidationGear": "-1", "enableSpotBorrow": False,
                 "spotBorrowAutoRepay": False, "type": "0"}]

    def set_leverage(self, req: dict) -> dict:
        inst = str(req.get("instId") or "")
        with self.book.lock:
            self._known(inst)
            if req.get("mgnMode") not in ("isolated", "cross"):
                raise Refusal("51000", "Parameter mgnMode error")
            if req.get("posSide") not in (None, "", "net"):
                raise Refusal("51000", "Parameter posSide error")  # net mode: no long or short side
            lever = _dec(req.get("lever"), "lever")
            if not 1 <= lever <= MAX_LEVER:
                raise Refusal("59102", "Leverage exceeds the maximum leverage. Adjust the leverage.")
            self.lever[inst] = lever
        return {"lever": _s(lever), "mgnMode": req["mgnMode"], "instId": inst, "posSide": "net"}

    def lever_of(self, inst: str) -> Decimal:
        return self.lever.get(inst, DEFAULT_LEVER)

    def position_records(self, inst: str = "", inst_type: str = "") -> list[dict]:
        if inst_type not in ("", "SWAP"):
            return []
        with self.book.lock:
            return [self._record(i, p) for i, p in sorted(self.positions.items())
                    if p.pos and (not inst or i in inst.split(","))]

    def _record(self, inst: str, p: Position) -> dict:
        sp, last = spec_of(inst), self.book.prices[spot_of(inst)]
        coins = p.pos * sp.ct_val
        upl = coins * (last - p.avg)
        lever = self.lever_of(inst)
        sign = 1 if p.pos > 0 else -1
        liq = p.avg * (1 - sign / lever + sign * MMR) if lever > 1 or sign < 0 else Decimal(0)
        notional = abs(coins) * last
        return {"instType": "SWAP", "instId": inst, "mgnMode": "isolated", "posSide": "net", "pos": _s(p.pos),
                "availPos": _s(abs(p.pos)), "posCcy": "", "ccy": SETTLE, "avgPx": _s(p.avg), "markPx": _s(last),
                "last": _s(last), "idxPx": _s(last), "upl": _s(upl), "uplLastPx": _s(upl),
                "uplRatio": _s(upl / p.margin) if p.margin else "0", "uplRatioLastPx": _s(upl / p.margin)
                if p.margin else "0", "lever": _s(lever), "liqPx": _s(liq) if liq > 0 else "",
                "margin": _s(p.margin), "imr": "", "mmr": _s(notional * MMR),
                "mgnRatio": _s((p.margin + upl) / (notional * MMR)) if notional else "",
                "notionalUsd": _s(notional), "fee": _s(p.fee), "fundingFee": _s(p.funding),
                "realizedPnl": _s(p.realized + p.fee + p.funding), "pnl": _s(p.realized), "interest": "",
                "liab": "", "liabCcy": "", "adl": "1", "optVal": "", "deltaBS": "", "deltaPA": "", "gammaBS": "",
                "gammaPA": "", "thetaBS": "", "thetaPA": "", "vegaBS": "", "vegaPA": "", "bePx": _s(p.avg),
                "baseBal": "", "baseBorrowed": "", "baseInterest": "", "quoteBal": "", "quoteBorrowed": "",
                "quoteInterest": "", "spotInUseAmt": "", "spotInUseCcy": "", "usdPx": "", "liqPenalty": "0",
                "pendingCloseOrdLiabVal": "", "closeOrderAlgo": [], "bizRefId": "", "bizRefType": "",
                "posId": p.pos_id, "tradeId": p.trade_id, "cTime": p.c_time, "uTime": p.u_time}

    def bills_of(self, q: dict) -> list[dict]:
        with self.book.lock:
            return [dict(b) for b in reversed(self.bills)
                    if (not q.get("type") or b["type"] == q["type"]) and (not q.get("instType")
                    or b["instType"] == q["instType"]) and (not q.get("ccy") or b["ccy"] == q["ccy"])
                    and (not q.get("begin") or int(b["ts"]) >= int(q["begin"]))
                    and (not q.get("after") or int(b["billId"]) < int(q["after"]))]

    def funding_rate(self, inst: str) -> dict:
        with self.book.lock:
            self._known(inst)
            rate = self.rates.get(inst, DEFAULT_RATE)
        now = int(now_ms())
        nxt = (now // FUNDING_EVERY_MS + 1) * FUNDING_EVERY_MS
        return {"instType": "SWAP", "instId": inst, "fundingRate": _s(rate), "nextFundingRate": "",
                "fundingTime": str(nxt), "nextFundingTime": str(nxt + FUNDING_EVERY_MS), "method": "current_period",
                "maxFundingRate": "0.0375", "minFundingRate": "-0.0375", "settFundingRate": _s(rate),
                "settState": "settled", "premium": "0", "sign": "", "impactValue": "", "interestRate": "0",
                "ts": str(now)}

    # ----- what changes it -----

    def place(self, req: dict) -> dict:
        """Takes one swap order or raises ``Refusal``; returns OKX's record of it."""
        book = self.book
        with book.lock:
            cl = str(req.get("clOrdId") or "")
            if cl and not CLORD.fullmatch(cl):
                raise Refusal("51000", "Parameter clOrdId error")
            inst = str(req.get("instId") or "")
            self._known(inst)
            side, kind = req.get("side"), req.get("ordType")
            if side not in ("buy", "sell"):
                raise Refusal("51000", "Parameter side error")
            if kind not in ("market", "limit", "ioc"):
                raise Refusal("51000", "Parameter ordType error")
            if req.get("tdMode") not in ("isolated", "cross"):
                raise Refusal("51000", "Parameter tdMode error")
            if req.get("tdMode") != "isolated":
                raise Refusal("51010", "You can't complete this request under your current account mode.")
            if req.get("posSide") not in (None, "", "net"):
                raise Refusal("51000", "Parameter posSide error")
            sz = _dec(req.get("sz"), "sz")
            sp = spec_of(inst)
            if sz % sp.lot:
                raise Refusal("51121", f"Order quantity must be a multiple of the lot size ({_s(sp.lot)}).")
            if sz < sp.min_sz:
                raise Refusal("51020", "Order amount should be greater than the min available amount")
            if cl and book._open(cl):  # OKX keeps a clOrdId unique among open orders only
                raise Refusal("51016", "Duplicated clOrdId")
            last = book.prices[spot_of(inst)]
            limit = _dec(req.get("px"), "px") if kind in ("limit", "ioc") else None
            px = limit if limit is not None else last
            signed = sz if side == "buy" else -sz
            need = self._margin_for(inst, signed, px) + sz * sp.ct_val * px * TAKER_FEE
            if book.balances.get(SETTLE, Decimal(0)) < need:
                raise Refusal("51008", f"Order failed. Insufficient {SETTLE} margin in account")
            marketable = limit is None or (limit >= last if side == "buy" else limit <= last)
            filled = _lots(sz * book.fill_ratio, sp.lot) if marketable else Decimal(0)
            book.next_id += 1
            now = now_ms()
            o = {"instType": "SWAP", "instId": inst, "ordId": str(book.next_id), "clOrdId": cl, "tag": "",
                 "px": _s(limit) if limit is not None else "", "sz": _s(sz), "ordType": kind, "side": side,
                 "posSide": "net", "tdMode": "isolated", "tgtCcy": "", "state": "live", "accFillSz": "0",
                 "fillPx": "", "fillSz": "0", "avgPx": "", "fee": "0", "feeCcy": SETTLE,
                 "lever": _s(self.lever_of(inst)), "reduceOnly": str(req.get("reduceOnly") or "false").lower(), "cTime": now, "uTime": now,
                 "fillTime": "", "cancelSource": "", "category": "normal", "tradeId": "", "pnl": "0",
                 "instIdCode": _code(inst)}
            book.orders[o["ordId"]] = o
            if cl:
                book.by_clord[cl] = o["ordId"]
            self._push(o, None)  # OKX pushes "live" first for every order it takes
            if filled:
                self._fill(o, filled, last)
            if kind == "ioc" and o["state"] in ("live", "partially_filled"):  # the rest is cancelled at once
                o.update(state="canceled", cancelSource="14", uTime=now_ms())
                self._push(o, None)
            book._log(o)
            return _public(o)

    def _margin_for(self, inst: str, signed: Decimal, px: Decimal) -> Decimal:
        """The margin an order adds: only what opens or adds to a position needs margin."""
        held = self.positions.get(inst, Position()).pos
        opening = abs(signed) if held == 0 or (held > 0) == (signed > 0) else max(Decimal(0), abs(signed) - abs(held))
        return opening * spec_of(inst).ct_val * px / self.lever_of(inst)

    def _fill(self, o: dict, qty: Decimal, px: Decimal) -> None:
        inst, sp, book = o["instId"], spec_of(o["instId"]), self.book
        p = self.positions.setdefault(inst, Position())
        now = now_ms()
        signed = qty if o["side"] == "buy" else -qty
        pnl = Decimal(0)
        if p.pos and (p.pos > 0) != (signed > 0):  # reduces, maybe through zero
            closing = min(abs(signed), abs(p.pos))
            pnl = closing * sp.ct_val * (px - p.avg) * (1 if p.pos > 0 else -1)
            freed = p.margin * closing / abs(p.pos)
            p.margin -= freed
            p.realized += pnl
            book.balances[SETTLE] = book.balances.get(SETTLE, Decimal(0)) + freed + pnl
            p.pos += closing if signed > 0 else -closing
            signed = signed - closing if signed > 0 else signed + closing
        if signed:  # opens or adds
            if not p.pos:
                p.avg, p.c_time, p.pos_id = px, now, str(book.next_id)
            else:
                p.avg = (abs(p.pos) * p.avg + abs(signed) * px) / (abs(p.pos) + abs(signed))
            add = abs(signed) * sp.ct_val * px / self.lever_of(inst)
            p.margin += add
            book.balances[SETTLE] = book.balances.get(SETTLE, Decimal(0)) - add
            p.pos += signed
        fee = qty * sp.ct_val * px * TAKER_FEE
        book.balances[SETTLE] -= fee
        p.fee -= fee
        done = Decimal(o["accFillSz"]) + qty
        prev = Decimal(o["avgPx"] or 0) * Decimal(o["accFillSz"])
        trade = str(len(book.fills) + 1)
        p.trade_id, p.u_time = trade, now
        if not p.pos:
            del self.positions[inst]  # closed: OKX lists open positions only
        o.update(accFillSz=_s(done), fillPx=_s(px), fillSz=_s(qty), avgPx=_s((prev + qty * px) / done),
                 fee=_s(Decimal(o["fee"]) - fee), fillTime=now, uTime=now, tradeId=trade,
                 pnl=_s(Decimal(o["pnl"]) + pnl), state="filled" if done >= Decimal(o["sz"]) else "partially_filled")
        book.fills.append({"instType": "SWAP", "instId": inst, "tradeId": trade, "ordId": o["ordId"],
                           "clOrdId": o["clOrdId"], "billId": str(len(book.fills) + 1), "tag": "", "fillPx": _s(px),
                           "fillSz": _s(qty), "side": o["side"], "posSide": "net", "execType": "T",
                           "feeCcy": SETTLE, "fee": _s(-fee), "fillPnl": _s(pnl), "ts": now, "fillTime": now})
        self._push(o, book.fills[-1])

    def _push(self, o: dict, fill: dict | None) -> None:
        """OKX's ``orders`` push for a swap order's change, to the book's watchers."""
        push = {**_public(o), "fillSz": fill["fillSz"] if fill else "0", "fillPx": fill["fillPx"] if fill else "",
                "tradeId": fill["tradeId"] if fill else o.get("tradeId", ""), "fillFee": fill["fee"] if fill else "0",
                "fillFeeCcy": SETTLE if fill else "", "execType": "T" if fill else "",
                "fillPnl": fill["fillPnl"] if fill else "0", "fillTime": fill["fillTime"] if fill else o["fillTime"],
                "amendResult": "", "code": "0", "msg": "", "reqId": "", "ccy": "", "rebate": "0", "rebateCcy": SETTLE}
        for watcher in self.book.watchers:
            watcher(push)

    def fund(self, rate: float | None = None, inst: str = "") -> list[dict]:
        """Funding at ``rate`` (None: each instrument's current rate) for every open position
        (of ``inst`` only, if named: the swap or its underlying, BTC-USDT): a long pays a
        positive rate, a short receives it. Taken from or added to the position's margin, as
        OKX does in isolated margin; one bill of type 8 each. Returns the bills."""
        if inst and not is_swap(inst):
            inst += SUFFIX
        made = []
        with self.book.lock:
            if inst:
                self._known(inst)
            for i, p in sorted(self.positions.items()):
                if inst and i != inst:
                    continue
                r = self.rates.get(i, DEFAULT_RATE) if rate is None else Decimal(str(rate))
                self.rates[i] = r
                mark = self.book.prices[spot_of(i)]
                amount = -p.pos * spec_of(i).ct_val * mark * r
                p.margin += amount
                p.funding += amount
                now = now_ms()
                bill = {"billId": str(10_000_000 + len(self.bills) + 1), "instType": "SWAP", "instId": i,
                        "ccy": SETTLE, "mgnMode": "isolated", "type": "8", "subType": "173" if amount < 0 else "174",
                        "balChg": _s(amount), "bal": _s(self.book.balances.get(SETTLE, Decimal(0))),
                        "posBal": _s(p.margin), "posBalChg": _s(amount), "sz": _s(abs(p.pos)), "px": _s(mark),
                        "pnl": _s(amount), "fee": "0", "execType": "", "from": "", "to": "", "notes": "",
                        "interest": "0", "ordId": "", "tradeId": "", "clOrdId": "", "tag": "", "fillTime": now,
                        "fillPx": _s(mark), "fillIdxPx": _s(mark), "fillMarkPx": _s(mark), "fillFwdPx": "",
                        "fillPxVol": "", "fillPxUsd": "", "fillMarkVol": "", "earnAmt": "", "earnApr": "", "ts": now}
                self.bills.append(bill)
                made.append(dict(bill))
            if inst and inst not in self.positions and rate is not None:
                self.rates[inst] = Decimal(str(rate))
        return made


def _lots(qty: Decimal, lot: Decimal) -> Decimal:
    return (qty / lot).to_integral_value(ROUND_DOWN) * lot


def _code(inst: str) -> int:
    """A stable integer for the instrument, as OKX's ``instIdCode``."""
    return 10_000 + sum((i + 1) * ord(c) for i, c in enumerate(inst))




def _public(o: dict) -> dict:
    return {k: v for k, v in o.items() if not k.startswith("_")}
