"""The IBKR venue: orders to TWS or IB Gateway through ``ib_async``.

ib_async is asynchronous and the Bytewax worker is not, so the client lives on an event
loop of its own (``LoopThread``) and each venue method runs one coroutine there, bounded.
The fate of every order is read from the ``Book``, which keeps what IB said by orderRef
(our client order id) across reconnects.

An order whose outcome is unknown (the socket dropped after it left, or IB answered
error 103, duplicate order id) is asked about, never sent again: after reconnecting, the
venue asks IB for its executions, open and completed orders and finds it by orderRef.
Fills are named by IB's permId, which stays the same across sessions, clients and
restarts, where the order id is only unique within one client id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

try:
    import ib_async as ib_api
except ImportError:  # pragma: no cover - the older name of the same library
    import ib_insync as ib_api  # type: ignore[no-redef]

from connectors.venues import (ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, REJECTED, Ack, Instrument,
                               OrderUpdate, Rejected, VenueDown)
from connectors.venues.ibkr_book import Book
from connectors.venues.ibkr_loop import LoopThread
from operators.fill import Fill
from operators.orders import Order

log = logging.getLogger(__name__)
# ib_async logs each failed connection attempt as an error of its own; this venue says what
# it means in one line (VenueDown, a reconnect warning), so the client's own lines would only
# repeat it on the operator's screen, twice an attempt
logging.getLogger("ib_async.client").setLevel(logging.CRITICAL)
T = TypeVar("T")
FINAL = (FILLED, CANCELLED, REJECTED)
POLL = 0.005  # how often a wait on the loop looks at the book again
UNANSWERED = ("PendingSubmit", "ApiPending")  # a Trade's status until IB's first word on it


class IbkrVenue:
    name = "ibkr"
    asynchronous = True  # submit returns once IB has the orders; their fates come through updates
    lists_instruments = False  # IB lists no universe: it answers per symbol (``instrument``)

    def __init__(self, host: str = "127.0.0.1", port: int = 4002, client_id: int = 1, account: str = "", *,
                 connect_timeout: float = 4.0, request_timeout: float = 4.0, fill_timeout: float = 2.0,
                 backoff: tuple[float, float] = (0.05, 2.0), market: str = "ibkr"):
        """``fill_timeout``: how long ``place_many`` waits for a market order to fill before
        cancelling what is left; ``backoff``: the first and the longest pause between
        reconnection attempts after the socket drops."""
        self.host, self.port, self.client_id, self.account, self.market = host, port, client_id, account, market
        self.connect_timeout, self.request_timeout, self.fill_timeout = connect_timeout, request_timeout, fill_timeout
        self.backoff = backoff
        self._bound = 2 * connect_timeout + 10 * request_timeout + fill_timeout  # a whole call, everything waited
        self._book = Book(market)
        self._instruments: dict[str, Instrument] = {}
        self._contracts: dict[str, Any] = {}
        self._watched: dict[str, tuple | None] = {}  # submitted orders -> the fate last reported
        self._updates: list[OrderUpdate] = []
        self._closing = False
        self._lock: asyncio.Lock | None = None
        self._reconnecting: asyncio.Task | None = None  # held: the loop keeps only a weak reference
        self._synced = False  # asked IB for everything since the last connect
        self._throttled = False  # ib_async is holding requests back (its 45 a second)
        self._funds: float | None = None  # AvailableFunds as IB last pushed it (account updates)
        self._loop = LoopThread(f"ibkr-venue-{client_id}")
        self._ib = self._call(self._create(), connect_timeout)
        try:  # the gateway may come up later: the first call that needs it connects
            self._call(self._ensure(), self._bound)
        except VenueDown:
            pass

    def __repr__(self) -> str:
        return f"IbkrVenue({self.host}:{self.port})"

    # the loop

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        try:
            return self._loop.run(coro, timeout or self._bound)
        except (VenueDown, Rejected):
            raise
        except (ConnectionError, OSError, asyncio.CancelledError) as e:  # TimeoutError is an OSError
            raise VenueDown(f"IB gateway at {self.host}:{self.port}: {type(e).__name__}") from None

    async def _create(self) -> Any:
        ib = ib_api.IB()
        ib.execDetailsEvent += self._on_fill
        ib.commissionReportEvent += self._on_commission
        ib.orderStatusEvent += self._on_status
        ib.disconnectedEvent += self._on_disconnect
        ib.accountValueEvent += self._on_account_value
        ib.client.throttleStart += lambda: setattr(self, "_throttled", True)
        ib.client.throttleEnd += lambda: setattr(self, "_throttled", False)
        self._lock = asyncio.Lock()
        return ib

    def _on_fill(self, trade: Any, fill: Any) -> None:
        self._book.add_trade(trade)
        self._book.add_fill(fill)
        self._note_updates()

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        self._book.add_fill(fill)
        self._note_updates()

    def _on_status(self, trade: Any) -> None:
        self._book.add_trade(trade)
        self._note_updates()

    def _on_account_value(self, value: Any) -> None:
        """ib_async subscribes to the account's updates on connect, and IB pushes them as they
        change: kept here, one float, so a margin check reads it without asking the network."""
        if value.tag == "AvailableFunds" and value.currency == "USD" and (
                not self.account or value.account == self.account):
            try:
                self._funds = float(value.value)
            except ValueError:
                pass  # IB sends an empty value while it has none; the last one stands

    def _on_disconnect(self) -> None:
        self._synced = self._throttled = False  # the client dropped what it held back
        if not self._closing and (self._reconnecting is None or self._reconnecting.done()):
            log.warning("IB gateway at %s:%s: connection lost, reconnecting", self.host, self.port)
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """After a drop, with growing pauses, until connected (and resynced) or closed."""
        delay = self.backoff[0]
        while not self._closing and not (self._ib.isConnected() and self._synced):
            try:
                await self._ensure()
                return
            except VenueDown:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    async def _ensure(self) -> None:
        """Connected and caught up with IB, or ``VenueDown``."""
        if self._ib.isConnected() and self._synced:
            return
        assert self._lock is not None
        async with self._lock:
            if self._ib.isConnected() and self._synced:
                return
            if not self._ib.isConnected():
                try:
                    await self._ib.connectAsync(self.host, self.port, self.client_id, timeout=self.connect_timeout,
                                                account=self.account)
                except Exception as e:  # refused, no answer, or dropped during the start-up sync
                    raise VenueDown(f"IB gateway at {self.host}:{self.port} unreachable: {type(e).__name__}"
                                    ) from None
            await self._resync()
            self._synced = True
            log.info("IB gateway at %s:%s: connected as client %s, orders and executions asked again",
                     self.host, self.port, self.client_id)

    async def _resync(self) -> None:
        """Ask IB what it holds (every client's orders and executions), so that fills made
        while disconnected, or by an earlier process, are in the book."""
        ib, t = self._ib, self.request_timeout
        try:
            await asyncio.wait_for(ib.reqExecutionsAsync(), t)
            await asyncio.wait_for(ib.reqCompletedOrdersAsync(False), t)
            await asyncio.wait_for(ib.reqAllOpenOrdersAsync(), t)
        except (ConnectionError, asyncio.TimeoutError) as e:
            raise VenueDown(f"IB gateway did not answer the resync: {type(e).__name__}") from None
        for f in ib.fills():  # the client's own records: a fill asked for again carries its commission here
            self._book.add_fill(f)
        for trade in ib.trades():
            self._book.add_trade(trade)
        self._note_updates()

    # placing

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        # a large batch leaves at ib_async's pace (45 requests a second), and is waited for
        return self._call(self._place_many(orders), self._bound + len(orders) / 40)

    async def _place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        results: list[Fill | Rejected | None] = [None] * len(orders)
        trades = await self._send(orders, results)
        while self._throttled and self._ib.isConnected():  # the bound runs from when the last order left
            await asyncio.sleep(POLL)
        await self._settle(trades, self.fill_timeout)
        await self._cancel_working(trades)
        unresolved = [ref for ref in trades if not self._final(ref)]
        if unresolved:  # dropped or "maybe placed": ask IB, never send again
            await self._ensure()
            await self._resync()
            await self._cancel_working({ref: None for ref in unresolved})
        for i, order in enumerate(orders):
            if results[i] is None:
                fate = self._book.fate(order.client_order_id)
                if fate is None or fate.status not in FINAL:
                    raise VenueDown(f"the outcome of {order.client_order_id} is unknown: ask again")
                results[i] = fate.fill if fate.fill is not None else Rejected(fate.reason)
        return results  # type: ignore[return-value]

    async def _send(self, orders: list[Order], results: list) -> dict[str, Any]:
        """Each order placed (its Trade by client order id), or its refusal in ``results``."""
        await self._ensure()
        trades: dict[str, Any] = {}
        for i, order in enumerate(orders):
            refusal = self._refusal(order)
            contract = None if refusal else await self._contract(order.symbol)
            if refusal or contract is None:
                results[i] = Rejected(refusal or f"IB has no stock {order.symbol}")
                continue
            self._book.sent.setdefault(order.client_order_id, order)
            if self._book.fate(order.client_order_id) is not None:
                continue  # IB already holds an order under this id: its fate is the answer, not a second one
            trades[order.client_order_id] = self._ib.placeOrder(contract, ib_api.MarketOrder(
                "BUY" if order.side == "buy" else "SELL", float(order.quantity), orderRef=order.client_order_id,
                account=self.account, tif="DAY"))
        return trades

    @staticmethod
    def _refusal(order: Order) -> str:
        if order.side not in ("buy", "sell"):
            return f"unknown side {order.side}"
        if order.quantity <= 0 or not float(order.quantity).is_integer():
            return f"IB takes whole shares, not {order.quantity}"
        return ""

    async def _answered(self, trades: dict[str, Any], timeout: float) -> None:
        """Until IB has answered every order placed (a status past PendingSubmit, or an error):
        "accepted" must mean IB has the order, not that the client queued it behind its pacing.
        The socket dropping, or ``timeout``, ends the wait: their fates are asked later."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self._ib.isConnected():
            if all(t is None or t.isDone() or t.orderStatus.status not in UNANSWERED for t in trades.values()):
                return
            await asyncio.sleep(POLL)

    def _final(self, ref: str) -> bool:
        fate = self._book.fate(ref)
        return fate is not None and fate.status in FINAL and fate.settled

    async def _settle(self, trades: dict[str, Any], timeout: float) -> None:
        """Until every order's fate is final, the socket drops, or ``timeout``. A trade the
        client closed itself without IB's word (error 103) has no more to wait for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self._ib.isConnected():
            if all(self._final(ref) or (t is not None and t.isDone() and self._book.fate(ref) is None)
                   for ref, t in trades.items()):
                return
            await asyncio.sleep(POLL)

    async def _cancel_working(self, trades: dict[str, Any]) -> None:
        """What is still working past the bound is cancelled, and the cancel waited for."""
        if not self._ib.isConnected():
            return
        open_by_ref = {t.order.orderRef: t for t in self._ib.openTrades()}
        working = {}
        for ref in trades:
            fate = self._book.fate(ref)
            trade = open_by_ref.get(ref)
            if fate is not None and fate.status in (ACCEPTED, PARTIALLY_FILLED) and trade is not None:
                self._ib.cancelOrder(trade.order)
                working[ref] = trade
        if working:
            await self._settle(working, self.request_timeout)

    async def _contract(self, symbol: str) -> Any | None:
        if symbol not in self._contracts:
            await self._qualify(symbol)
        return self._contracts.get(symbol)

    async def _qualify(self, symbol: str) -> Instrument | None:
        await self._ensure()
        stock = ib_api.Stock(symbol, "SMART", "USD")
        details = await asyncio.wait_for(self._ib.reqContractDetailsAsync(stock), self.request_timeout)
        if not details:
            return None
        cd = details[0]
        self._contracts[symbol] = cd.contract
        inst = self._instruments[symbol] = Instrument(
            self.market, symbol, float(cd.sizeIncrement or 1), float(cd.minTick), float(cd.minSize or 1))
        return inst

    # the asynchronous form

    def submit(self, orders: list[Order]) -> list[Ack]:
        # the orders leave at ib_async's pace, and are waited for until IB has answered each
        return self._call(self._submit(orders), self._bound + len(orders) / 40)

    async def _submit(self, orders: list[Order]) -> list[Ack]:
        results: list = [None] * len(orders)
        trades = await self._send(orders, results)
        await self._answered(trades, self._bound + len(orders) / 40)
        acks = []
        for order, r in zip(orders, results, strict=True):
            ref = order.client_order_id
            t = trades.get(ref)
            if isinstance(r, Rejected):
                acks.append(Ack(ref, False, str(r)))
                self._updates.append(OrderUpdate(ref, REJECTED, None, str(r)))
            elif t is not None and not t.isDone() and t.orderStatus.status in UNANSWERED \
                    and self._book.fate(ref) is None:
                # no word from IB (the socket dropped, or the wait ran out): it may never have
                # reached IB, so it is not "accepted" (an order IB once took and no longer finds is
                # asked about forever, never sent): unknown, asked, and sent if IB has no record
                acks.append(Ack(ref, False, "IB did not answer", unknown=True))
                self._watched.setdefault(ref, None)
            else:
                acks.append(Ack(ref, True))
                self._watched.setdefault(ref, None)
        self._note_updates()
        return acks

    def updates(self) -> list[OrderUpdate]:
        return self._call(self._drain())

    async def _drain(self) -> list[OrderUpdate]:
        self._note_updates()
        out, self._updates = self._updates, []
        return out

    def _note_updates(self) -> None:
        """Queue each submitted order's fate when it changed (a filled one once its
        commissions are in, so the fill reported is whole)."""
        for ref, last in list(self._watched.items()):
            fate = self._book.fate(ref)
            if fate is None or (fate.status in FINAL and not fate.settled):
                continue
            key = (fate.status, fate.fill.quantity if fate.fill else 0.0)
            if key != last:
                self._watched[ref] = key
                self._updates.append(OrderUpdate(ref, fate.status, fate.fill, fate.reason))
            if fate.status in FINAL:
                del self._watched[ref]  # nothing more will happen to it

    # asking

    def lookup(self, order: Order) -> Fill | None:
        return self._call(self._lookup(order.client_order_id))

    async def _lookup(self, ref: str) -> Fill | None:
        await self._ensure()
        await self._resync()
        fate = self._book.fate(ref)
        if fate is None:
            return None
        if fate.status not in FINAL:  # still working: the same bound as place_many's, passed
            await self._cancel_working({ref: None})
            fate = self._book.fate(ref)
            if fate is None or fate.status not in FINAL:
                raise VenueDown(f"{ref} has no final outcome at IB yet")
        if fate.fill is not None:
            return fate.fill
        raise Rejected(fate.reason)

    def open_orders(self) -> list[Order]:
        return self._call(self._open_orders())

    async def _open_orders(self) -> list[Order]:
        await self._ensure()
        await asyncio.wait_for(self._ib.reqAllOpenOrdersAsync(), self.request_timeout)
        out = []
        for t in self._ib.openTrades():
            ref = t.order.orderRef
            sent = self._book.sent.get(ref)
            out.append(Order(ref, sent.signal_id if sent else "", sent.kind if sent else "", self.market,
                             t.contract.symbol, "buy" if t.order.action == "BUY" else "sell",
                             float(t.orderStatus.remaining or t.order.totalQuantity),
                             sent.price if sent else 0.0, sent.ts_ms if sent else 0))
        return out

    def positions(self) -> dict[tuple[str, str], float]:
        return self._call(self._positions())

    async def _positions(self) -> dict[tuple[str, str], float]:
        await self._ensure()
        held = await asyncio.wait_for(self._ib.reqPositionsAsync(), self.request_timeout)
        return {(self.market, p.contract.symbol): float(p.position) for p in held
                if p.position and (not self.account or p.account == self.account)}

    def balances(self) -> dict[str, float]:
        values = self._call(self._summary())
        return {cur: v for (tag, cur), v in values.items() if tag == "TotalCashValue"}

    def available_funds(self) -> float:
        """What IB would let a new order use (AvailableFunds), for a margin check."""
        return self._call(self._summary()).get(("AvailableFunds", "USD"), 0.0)

    def available_funds_now(self) -> float | None:
        """AvailableFunds as IB last pushed it, never waiting on the network; None before
        the first push."""
        return self._funds

    async def _summary(self) -> dict[tuple[str, str], float]:
        """One account summary asked and its subscription cancelled at once: IB allows
        only two open at a time, and a standing one is refreshed only every few minutes."""
        await self._ensure()
        ib = self._ib
        req_id = ib.client.getReqId()
        future = ib.wrapper.startReq(req_id)
        ib.client.reqAccountSummary(req_id, "All", "TotalCashValue,AvailableFunds")
        try:
            await asyncio.wait_for(future, self.request_timeout)
        finally:
            if ib.isConnected():
                ib.client.cancelAccountSummary(req_id)
        return {(v.tag, v.currency): float(v.value) for v in ib.wrapper.acctSummary.values()
                if v.tag in ("TotalCashValue", "AvailableFunds") and (not self.account or v.account == self.account)}

    def instruments(self) -> list[Instrument]:
        """What has been qualified so far: IB lists no universe, it answers per symbol."""
        return list(self._instruments.values())

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        if venue != self.market:
            return None
        if symbol in self._instruments:
            return self._instruments[symbol]
        return self._call(self._qualify(symbol))

    def close(self) -> None:
        self._closing = True
        try:
            self._call(self._disconnect(), self.connect_timeout)
        except VenueDown:
            pass
        self._loop.close()

    async def _disconnect(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        self._ib.disconnect()
