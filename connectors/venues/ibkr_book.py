"""What the IBKR venue has learnt from IB, kept by ``orderRef`` (our client order id)
across reconnects: ib_async forgets its trades and fills when a socket drops, and an
order's fate must survive that. Fed from the client's live events and from the
executions, open and completed orders asked for after every (re)connect; the fate of an
order is read from here alone, so every caller (``place_many``, ``lookup``,
``updates``) answers the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.venues import ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED
from operators.fill import Fill
from operators.orders import Order
from operators.protection import venue_price_in

DONE = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})
# statuses a client sets itself before the gateway has answered: not a fate
UNCONFIRMED = frozenset({"PendingSubmit", "ApiPending", "ValidationError", ""})
MAYBE_PLACED = 103  # "duplicate order id": an order under that id may exist
OUR_CANCEL = 202
# a cancel that came too late (the order had filled) or found nothing: ib_async marks the
# order cancelled on them, but they say nothing of the order itself
CANCEL_FAILED = frozenset({161, 10147, 10148})


@dataclass
class Execution:
    order_ref: str
    perm_id: int
    symbol: str
    side: str
    shares: float
    price: float
    ts_ms: int
    commission: float | None = None  # None until its commissionReport arrives


@dataclass
class Known:
    """One order as IB describes it."""

    perm_id: int = 0
    symbol: str = ""
    side: str = ""
    quantity: float = 0.0
    status: str = ""
    error: int = 0
    reason: str = ""
    exec_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fate:
    status: str
    fill: Fill | None
    reason: str = ""
    settled: bool = True  # every execution's commission is in
    fill_id: str = ""  # IB's execId of the latest execution in ``fill``


class Book:
    def __init__(self, market: str):
        self.market = market
        self.sent: dict[str, Order] = {}  # what this process placed, by client order id
        self.orders: dict[str, Known] = {}
        self.execs: dict[str, Execution] = {}

    def add_fill(self, f: Any) -> None:
        """An ib_async ``Fill``: its execution, and its commission once reported."""
        ex, ref = f.execution, f.execution.orderRef
        if not ref:
            return
        mine = self.execs.get(ex.execId)
        if mine is None:
            mine = self.execs[ex.execId] = Execution(
                ref, ex.permId, f.contract.symbol, "buy" if ex.side == "BOT" else "sell", float(ex.shares),
                float(ex.price), int(ex.time.timestamp() * 1000))
            known = self.orders.setdefault(ref, Known())
            known.exec_ids.append(ex.execId)
            known.perm_id = known.perm_id or ex.permId
            known.symbol = known.symbol or mine.symbol
        report = f.commissionReport
        if report.execId == ex.execId and mine.commission is None:
            mine.commission = float(report.commission)

    def add_trade(self, t: Any) -> None:
        """An ib_async ``Trade``, live or from the open or completed orders. A status the
        client set itself (before any answer, or on error 103) says nothing of the order
        at IB, so it is not taken as its fate."""
        ref = t.order.orderRef
        if not ref:
            return
        errors = [e for e in t.log if e.errorCode and e.errorCode not in CANCEL_FAILED]
        error = errors[-1] if errors else None
        status = t.orderStatus.status
        if t.log and t.log[-1].errorCode in CANCEL_FAILED:
            status = ""  # ib_async's own marking, not IB's word
        perm_id = t.order.permId or t.orderStatus.permId
        if error is not None and error.errorCode == MAYBE_PLACED:
            return
        if status in UNCONFIRMED or (not perm_id and error is None):
            return
        known = self.orders.setdefault(ref, Known())
        known.perm_id = known.perm_id or perm_id
        known.symbol = known.symbol or t.contract.symbol
        known.side = known.side or ("buy" if t.order.action == "BUY" else "sell")
        known.quantity = known.quantity or float(t.order.totalQuantity)
        if known.status not in DONE:  # a finished order never goes back to working
            known.status = status
        if error is not None and not known.error:
            # the client's log line is "Error 201, reqId 7: <IB's text>": IB's text is the reason
            known.error, known.reason = error.errorCode, error.message.split(": ", 1)[-1]

    def fate(self, ref: str) -> Fate | None:
        known = self.orders.get(ref)
        if known is None:
            return None
        execs = [self.execs[i] for i in known.exec_ids]
        fill = self._fill(ref, known, execs)
        settled = all(e.commission is not None for e in execs)
        filled = sum(e.shares for e in execs)
        quantity = known.quantity or (self.sent[ref].quantity if ref in self.sent else 0.0)
        latest = known.exec_ids[-1] if known.exec_ids else ""
        if quantity and filled >= quantity:
            return Fate(FILLED, fill, settled=settled, fill_id=latest)
        if known.status == "Filled":  # its executions are still on their way
            return Fate(PARTIALLY_FILLED if fill else ACCEPTED, fill, settled=False, fill_id=latest)
        if known.status in DONE:
            if fill is not None:
                return Fate(CANCELLED, fill, known.reason, settled, latest)
            if known.error and known.error != OUR_CANCEL:
                return Fate(REJECTED, None, f"IB error {known.error}: {known.reason}")
            # an IOC that was not marketable: IB's text says so, with the price (the simulator's does)
            said = known.reason if venue_price_in(known.reason) else "cancelled with nothing filled"
            return Fate(CANCELLED, None, said)
        return Fate(PARTIALLY_FILLED if fill else ACCEPTED, fill, settled=settled, fill_id=latest)

    def _fill(self, ref: str, known: Known, execs: list[Execution]) -> Fill | None:
        shares = sum(e.shares for e in execs)
        if not shares:
            return None
        sent = self.sent.get(ref)
        price = sum(e.shares * e.price for e in execs) / shares
        fee = sum(e.commission or 0.0 for e in execs)
        first = execs[0]
        # IB keeps no signal id: an order placed by an earlier process is answered without it
        return Fill(sent.signal_id if sent else "", ref, str(known.perm_id or first.perm_id),
                    sent.venue if sent else self.market, first.symbol, sent.side if sent else first.side,
                    shares, price, fee, max(e.ts_ms for e in execs))

    def working(self) -> list[str]:
        return [ref for ref, k in self.orders.items() if k.status and k.status not in DONE]
