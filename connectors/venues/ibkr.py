"""The IBKR venue: orders to TWS or IB Gateway through ``ib_async``.

ib_async is asynchronous and its callers are not, so the client lives on an event loop
of its own (``LoopThread``): every public method, called from any thread, runs one
coroutine there, bounded. What IB says of an order arrives as ib_async's events
(orderStatus, execDetails, commissionReport); each is written into the ``Book``, which
keeps it by orderRef (our client order id) across reconnects, and each change of a
submitted order's fate is handed on at once (``on_update``, else kept for ``updates``).
Every wait is for a condition those events make true (``Changes``), bounded, never a
loop that sleeps and looks again.

``submit`` returns once IB has answered each order, or at the request timeout: an order
that may have reached IB without an answer (the socket dropped after it left, no answer
in time, or IB's error 103, duplicate order id) is "unknown", asked about later, never
sent again; one that never left the client is "not sent". Fills are named by IB's
permId, which stays the same across sessions, clients and restarts, where the order id
is only unique within one client id.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

try:
    import ib_async as ib_api
except ImportError:  # pragma: no cover - the older name of the same library
    import ib_insync as ib_api  # type: ignore[no-redef]

from connectors.venues import (ACCEPTED, CANCELLED, FILLED, PARTIALLY_FILLED, PENDING, REJECTED, Ack,
                               Instrument, OrderUpdate, Rejected, VenueDown)
from connectors.venues.ibkr_answers import REFUSED, TAKEN, answer, queued_order_ids
from connectors.venues.ibkr_book import MAYBE_PLACED, Book
from connectors.venues.ibkr_link import Link
from connectors.venues.ibkr_loop import Changes, LoopThread
from operators.fill import Fill
from operators.orders import Order

log = logging.getLogger(__name__)
# ib_async narrates everything it sees (each Trade's repr, "Canceled order" for an order that
# had filled, error dumps, each failed connection attempt) at WARNING and ERROR. This venue says
# what each of those means for an order in one line of its own, so the client's are silenced
for _name in ("ib_async", "ib_async.wrapper", "ib_async.client", "ib_async.ib", "ib_async.Decoder"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)
T = TypeVar("T")
FINAL = (FILLED, CANCELLED, REJECTED)
PACE = 40.0  # orders a second leave ib_async (45 messages a second, less room for other requests)


class IbkrVenue:
    name = "ibkr"
    asynchronous = True  # submit returns once IB has the orders; their fates come through updates
    lists_instruments = False  # IB lists no universe: it answers per symbol (``instrument``)

    def __init__(self, host: str = "127.0.0.1", port: int = 4002, client_id: int = 1, account: str = "", *,
                 connect_timeout: float = 4.0, request_timeout: float = 4.0, fill_timeout: float = 2.0,
                 backoff: tuple[float, float] = (0.05, 2.0), market: str = "ibkr"):
        """``fill_timeout``: how long ``place_many`` waits for a market order to fill before
        cancelling what is left; ``backoff``: the first and the longest pause between
        connection attempts while the gateway is away."""
        self.host, self.port, self.client_id, self.account, self.market = host, port, client_id, account, market
        self.connect_timeout, self.request_timeout, self.fill_timeout = connect_timeout, request_timeout, fill_timeout
        self.backoff = backoff
        # a connect and its start-up sync (ib_async's, then ours), everything waited
        self._up_bound = 2 * connect_timeout + request_timeout
        self.on_update: Callable[[OrderUpdate], None] | None = None
        self._book = Book(market)
        self._instruments: dict[str, Instrument] = {}
        self._contracts: dict[str, Any] = {}
        self._watched: dict[str, tuple | None] = {}  # submitted orders -> the fate last told
        self._quiet: set[str] = set()  # orders ``place_many`` waits for itself: their updates go nowhere
        self._updates: deque[OrderUpdate] = deque()  # thread-safe: ``updates`` never waits on the loop
        # the order ids ib_async still held back when the socket last dropped, and the count of
        # drops before that one: ids are reused after a reconnect, so they only speak of that drop
        self._unsent: tuple[int, set[int]] = (-1, set())
        self._asking: asyncio.Task | None = None  # a resync asked for by an unknown outcome
        self._ask_more = False
        self._funds: float | None = None  # AvailableFunds as IB last pushed it (account updates)
        self._loop = LoopThread(f"ibkr-venue-{client_id}")
        self._ib, self._changes, self._link = self._call(self._create(), connect_timeout)
        try:  # the gateway may come up later: the link keeps trying, and calls wait for it
            self._call(self._wait_up(), self._up_bound + 1)
        except VenueDown:
            pass

    def connected(self) -> bool:
        """Whether the link to IB is up and caught up, as last heard; never waits."""
        return self._link.up()

    def __repr__(self) -> str:
        return f"IbkrVenue({self.host}:{self.port})"

    # the loop

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop.on_it():  # e.g. from on_update: the loop would wait on itself
            coro.close()
            raise RuntimeError("IbkrVenue's methods cannot be called from its own thread (on_update)")
        try:
            return self._loop.run(coro, timeout)
        except (VenueDown, Rejected):
            raise
        except (ConnectionError, OSError, asyncio.CancelledError) as e:  # TimeoutError is an OSError
            raise VenueDown(f"IB gateway at {self.host}:{self.port}: {type(e).__name__}") from None

    async def _create(self) -> tuple[Any, Changes, Link]:
        ib = ib_api.IB()
        changes = Changes()
        ib.execDetailsEvent += self._on_fill
        ib.commissionReportEvent += self._on_commission
        ib.orderStatusEvent += self._on_status
        ib.errorEvent += lambda *_: changes.notify()
        ib.accountValueEvent += self._on_account_value
        ib.client.apiError += self._on_socket_error
        link = Link(ib, self.host, self.port, self.client_id, self.account, self.connect_timeout, self.backoff,
                    self._resync, changes)
        return ib, changes, link

    async def _wait_up(self, timeout: float | None = None) -> None:
        await self._link.ready(asyncio.get_running_loop().time() + (timeout or self._up_bound))

    # what IB says, as it says it

    def _on_fill(self, trade: Any, fill: Any) -> None:
        self._book.add_trade(trade)
        self._book.add_fill(fill)
        self._heard()

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        self._book.add_fill(fill)
        self._heard()

    def _on_status(self, trade: Any) -> None:
        self._book.add_trade(trade)
        if trade.order.orderRef in self._watched and trade.log and trade.log[-1].errorCode == MAYBE_PLACED:
            self._ask_again()  # error 103 just came: what IB holds under it is asked at once, told when known
        self._heard()

    def _on_socket_error(self, msg: str) -> None:
        """The socket is dropping: what ib_async still held back never left (it forgets it next)."""
        if self._link.synced:  # a drop, not a failed attempt to connect (which held nothing of ours)
            self._unsent = (self._link.drops, queued_order_ids(self._ib.client))

    def _on_account_value(self, value: Any) -> None:
        """ib_async subscribes to the account's updates on connect, and IB pushes them as they
        change: kept here, one float, so a margin check reads it without asking the network."""
        if value.tag == "AvailableFunds" and value.currency == "USD" and (
                not self.account or value.account == self.account):
            try:
                self._funds = float(value.value)
            except ValueError:
                pass  # IB sends an empty value while it has none; the last one stands

    def _heard(self) -> None:
        self._note_updates()
        self._changes.notify()

    def _note_updates(self) -> None:
        """Tell each watched order's fate when it changed. A fate with a fill is told once
        the commissions of its executions are in, so the fee told is whole."""
        for ref, last in list(self._watched.items()):
            fate = self._book.fate(ref)
            if fate is None or not fate.settled:
                continue
            key = (fate.status, fate.fill.quantity if fate.fill else 0.0)
            if key != last:
                self._watched[ref] = key
                self._tell(OrderUpdate(ref, fate.status, fate.fill, fate.reason, fate.fill_id))
            if fate.status in FINAL:
                del self._watched[ref]  # nothing more will happen to it

    def _tell(self, update: OrderUpdate) -> None:
        if update.status == REJECTED:
            log.warning("order %s refused: %s", update.client_order_id, update.reason)
        if update.client_order_id in self._quiet:
            return
        callback = self.on_update
        if callback is None:
            self._updates.append(update)
            return
        try:
            callback(update)
        except Exception:  # noqa: BLE001 - the engine's fault must not stop IB's events
            log.exception("on_update failed for %s", update.client_order_id)

    async def _resync(self) -> None:
        """Ask IB what it holds (every client's orders and executions), so that fills made
        while disconnected, or by an earlier process, are in the book."""
        ib = self._ib
        try:
            await asyncio.wait_for(asyncio.gather(
                ib.reqExecutionsAsync(), ib.reqCompletedOrdersAsync(False), ib.reqAllOpenOrdersAsync()),
                self.request_timeout)
        except (ConnectionError, TimeoutError) as e:
            raise VenueDown(f"IB gateway did not answer the resync: {type(e).__name__}") from None
        for f in ib.fills():  # the client's own records: a fill asked for again carries its commission here
            self._book.add_fill(f)
        for trade in ib.trades():
            self._book.add_trade(trade)
        self._heard()

    def _ask_again(self) -> None:
        """A resync soon; one asked for while another runs follows it (the one running may
        have been answered before IB had the order)."""
        self._ask_more = True
        if self._asking is None or self._asking.done():
            self._asking = asyncio.get_running_loop().create_task(self._resync_quietly())

    async def _resync_quietly(self) -> None:
        while self._ask_more:
            self._ask_more = False
            try:
                await self._resync()
            except VenueDown:
                return  # the link asks again when it is back

    # submitting

    def submit(self, orders: list[Order]) -> list[Ack]:
        """Safe from any thread. Returns once IB has answered each order, within the request
        timeout (and the time ib_async's pacing takes to let a large batch out)."""
        return self._call(self._submit(orders), self._submit_bound(len(orders)) + 1)

    def _submit_bound(self, n: int) -> float:
        return self.request_timeout + n / PACE

    async def _submit(self, orders: list[Order], quiet: bool = False) -> list[Ack]:
        """``quiet``: the caller waits for the fates itself (``place_many``): no updates."""
        deadline = asyncio.get_running_loop().time() + self._submit_bound(len(orders))
        acks: list[Ack | None] = [None] * len(orders)
        for i, order in enumerate(orders):
            refusal = self._refusal(order)
            if refusal:
                acks[i] = self._refuse(order, refusal, quiet)
        todo = [i for i, a in enumerate(acks) if a is None]
        if todo:
            try:
                await self._link.ready(deadline)
            except VenueDown as down:
                if len(todo) == len(orders):
                    raise
                for i in todo:
                    acks[i] = Ack(orders[i].client_order_id, False, str(down), sent=False)
                todo = []
        absent = await self._qualify_all({orders[i].symbol for i in todo}, deadline)
        drops = self._link.drops  # the first drop after this is the one that can catch these orders
        trades: dict[int, Any] = {}
        first: dict[str, int] = {}  # an order twice in a batch is placed once, and answered as its first
        for i in todo:
            order, ref = orders[i], orders[i].client_order_id
            if first.setdefault(ref, i) != i:
                continue
            if order.symbol in absent:
                acks[i] = self._refuse(order, f"IB has no stock {order.symbol}", quiet)
                continue
            contract = self._contracts.get(order.symbol)
            if contract is None:
                acks[i] = Ack(ref, False, f"IB did not define {order.symbol} in time", sent=False)
                continue
            self._book.sent.setdefault(ref, order)
            self._watch(ref, quiet)
            if self._book.fate(ref) is not None:
                acks[i] = Ack(ref, True)  # IB already holds an order under this id: its fate is told, not a second
                continue
            try:
                trades[i] = self._ib.placeOrder(contract, _ib_order(order, self.account))
            except ConnectionError:  # the socket is gone: it did not leave
                self._unwatch(ref)
                acks[i] = Ack(ref, False, "the connection to IB was lost before it left", sent=False)
        await self._changes.until(lambda: self._link.drops != drops or all(map(answer, trades.values())), deadline)
        dropped = self._link.drops != drops
        held_back = self._unsent[1] if dropped and self._unsent[0] == drops else set()
        for i, trade in trades.items():
            acks[i] = self._ack(orders[i], trade, dropped, held_back)
        for i in todo:
            acks[i] = acks[i] or acks[first[orders[i].client_order_id]]
        self._say_unanswered(acks)  # type: ignore[arg-type]
        self._note_updates()  # the fates of orders IB already held
        if all(not a.sent for a in acks):  # type: ignore[union-attr]
            raise VenueDown(f"IB gateway at {self.host}:{self.port}: nothing of the batch could leave")
        return acks  # type: ignore[return-value]

    def _ack(self, order: Order, trade: Any, dropped: bool, held_back: set[int]) -> Ack:
        """``dropped``: the socket dropped while the batch waited for its answers;
        ``held_back``: the order ids ib_async had not let out when it did."""
        ref, heard = order.client_order_id, answer(trade)
        if heard is not None and heard[0] == TAKEN:
            return Ack(ref, True)
        if heard is not None and heard[0] == REFUSED:
            return Ack(ref, False, heard[1])  # its REJECTED update came with the error
        if heard is not None:  # MAYBE: error 103
            why = heard[1]
        elif trade.order.orderId in held_back:
            self._unwatch(ref)
            return Ack(ref, False, "the connection to IB was lost before it left", sent=False)
        elif dropped:
            why = "the connection to IB was lost after it left"
        else:
            why = f"IB did not answer within {self.request_timeout:g}s"
        return Ack(ref, False, why, unknown=True)

    @staticmethod
    def _say_unanswered(acks: list[Ack]) -> None:
        """One line for a batch, however many of its orders a drop left without an answer."""
        unknown = [a for a in acks if a.unknown]
        unsent = sum(1 for a in acks if not a.sent)
        if unknown:
            log.warning("%d order(s) without an answer from IB (%s: %s); their outcome is asked, they are never sent"
                        " again%s", len(unknown), ", ".join(a.client_order_id for a in unknown[:3]) +
                        (", ..." if len(unknown) > 3 else ""), unknown[0].reason,
                        f"; {unsent} more did not leave" if unsent else "")
        elif unsent:
            log.warning("%d order(s) did not leave for IB: %s", unsent, next(a.reason for a in acks if not a.sent))

    def _watch(self, ref: str, quiet: bool) -> None:
        self._watched[ref] = None  # told again from the start: a resubmitted order's fate is told once more
        if quiet:
            self._quiet.add(ref)

    def _unwatch(self, ref: str) -> None:
        self._watched.pop(ref, None)
        self._quiet.discard(ref)

    def _refuse(self, order: Order, reason: str, quiet: bool) -> Ack:
        if quiet:
            self._quiet.add(order.client_order_id)
        self._tell(OrderUpdate(order.client_order_id, REJECTED, None, reason))
        return Ack(order.client_order_id, False, reason)

    @staticmethod
    def _refusal(order: Order) -> str:
        if order.side not in ("buy", "sell"):
            return f"unknown side {order.side}"
        if order.quantity <= 0 or not float(order.quantity).is_integer():
            return f"IB takes whole shares, not {order.quantity}"
        return ""

    async def _qualify_all(self, symbols: set[str], deadline: float) -> set[str]:
        """Contracts for the symbols not yet known, asked together; the symbols IB does not
        define. One that got no answer in time has no contract and is in neither."""
        new = sorted(s for s in symbols if s not in self._contracts)
        left = deadline - asyncio.get_running_loop().time()
        if not new or left <= 0:
            return set()
        found = await asyncio.gather(*(asyncio.wait_for(self._ask_contract(s), left) for s in new),
                                     return_exceptions=True)
        return {s for s, f in zip(new, found, strict=True) if f is None}

    async def _ask_contract(self, symbol: str) -> Instrument | None:
        details = await self._ib.reqContractDetailsAsync(ib_api.Stock(symbol, "SMART", "USD"))
        if not details:
            return None
        cd = details[0]
        self._contracts[symbol] = cd.contract
        inst = self._instruments[symbol] = Instrument(
            self.market, symbol, float(cd.sizeIncrement or 1), float(cd.minTick), float(cd.minSize or 1))
        return inst

    def cancel(self, order: Order) -> bool:
        """Asks IB to cancel what is left of the order; what it comes to arrives as an update.
        False: another client placed it, and IB takes a cancel only from that client."""
        return self._call(self._cancel(order.client_order_id), self.request_timeout)

    async def _cancel(self, ref: str) -> bool:
        if not self._link.up():
            raise VenueDown(f"IB gateway at {self.host}:{self.port}: not connected, {ref} not cancelled")
        trade = next((t for t in self._ib.openTrades() if t.order.orderRef == ref), None)
        if trade is None:
            return True  # nothing working under it: its fate is told (or asked) as it is
        if trade.order.clientId != self.client_id:
            log.warning("order %s cannot be cancelled here: IB takes a cancel only from the client that placed it"
                        " (%s)", ref, trade.order.clientId)
            return False
        self._watched.setdefault(ref, None)
        self._ib.cancelOrder(trade.order)
        return True

    def updates(self) -> list[OrderUpdate]:
        """The updates learnt since the last call while ``on_update`` was not set; never waits."""
        out = []
        while self._updates:
            out.append(self._updates.popleft())
        return out

    # waiting for fates (tests and tools; the engine submits)

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        bound = self._up_bound + self._submit_bound(len(orders)) + self.fill_timeout + 3 * self.request_timeout
        return self._call(self._place_many(orders), bound + 1)

    async def _place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        refs = [o.client_order_id for o in orders]
        try:
            await self._wait_up()
            acks = await self._submit(orders, quiet=True)
            pending = [a.client_order_id for a in acks if a.accepted or a.unknown]
            await self._settle(pending, self.fill_timeout)
            await self._cancel_working(pending)
            unresolved = [ref for ref in pending if not self._final(ref)]
            if unresolved:  # dropped or "maybe placed": ask IB, never send again
                await self._wait_up()
                await self._resync()
                await self._cancel_working(unresolved)
            results: list[Fill | Rejected] = []
            for ack in acks:
                if not ack.accepted and not ack.unknown:
                    if not ack.sent:
                        raise VenueDown(f"{ack.client_order_id} did not leave: {ack.reason}")
                    results.append(Rejected(ack.reason))
                    continue
                fate = self._book.fate(ack.client_order_id)
                if fate is None or fate.status not in FINAL:
                    raise VenueDown(f"the outcome of {ack.client_order_id} is unknown: ask again")
                results.append(fate.fill if fate.fill is not None else Rejected(fate.reason))
            return results
        finally:
            for ref in refs:
                if ref in self._quiet:  # an order given up on here is told to no one later either
                    self._unwatch(ref)

    def _final(self, ref: str) -> bool:
        fate = self._book.fate(ref)
        return fate is not None and fate.status in FINAL and fate.settled

    async def _settle(self, refs: list[str], timeout: float) -> None:
        """Until every order's fate is final, the socket drops, or ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        await self._changes.until(lambda: not self._ib.isConnected() or all(map(self._final, refs)), deadline)

    async def _cancel_working(self, refs: list[str]) -> None:
        """What is still working past the bound is cancelled, and the cancel waited for."""
        if not self._ib.isConnected():
            return
        open_by_ref = {t.order.orderRef: t for t in self._ib.openTrades()}
        working = []
        for ref in refs:
            fate = self._book.fate(ref)
            trade = open_by_ref.get(ref)
            if fate is not None and fate.status in (ACCEPTED, PARTIALLY_FILLED) and trade is not None:
                self._ib.cancelOrder(trade.order)
                working.append(ref)
        if working:
            await self._settle(working, self.request_timeout)

    # asking

    def lookup(self, order: Order) -> Fill | None:
        return self._call(self._lookup(order.client_order_id), self._up_bound + 2 * self.request_timeout + 1)

    async def _lookup(self, ref: str) -> Fill | None:
        await self._wait_up()
        await self._resync()
        fate = self._book.fate(ref)
        if fate is None:
            return None
        if fate.status not in FINAL:  # still working: the same bound as place_many's, passed
            await self._cancel_working([ref])
            fate = self._book.fate(ref)
            if fate is None or fate.status not in FINAL:
                raise VenueDown(f"{ref} has no final outcome at IB yet")
        if fate.fill is not None:
            return fate.fill
        raise Rejected(fate.reason)

    def open_orders(self) -> list[Order]:
        return self._call(self._open_orders(), self._up_bound + self.request_timeout + 1)

    async def _open_orders(self) -> list[Order]:
        await self._wait_up()
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
        return self._call(self._positions(), self._up_bound + self.request_timeout + 1)

    def server_time(self) -> float:
        """IB's clock (``reqCurrentTime``), in unix seconds. It answers in whole seconds: the
        middle of its second is the best guess, within half a second."""
        return self._call(self._server_time(), self._up_bound + self.request_timeout + 1)

    async def _server_time(self) -> float:
        await self._wait_up()
        when = await asyncio.wait_for(self._ib.reqCurrentTimeAsync(), self.request_timeout)
        return when.timestamp() + 0.5

    async def _positions(self) -> dict[tuple[str, str], float]:
        await self._wait_up()
        held = await asyncio.wait_for(self._ib.reqPositionsAsync(), self.request_timeout)
        return {(self.market, p.contract.symbol): float(p.position) for p in held
                if p.position and (not self.account or p.account == self.account)}

    def balances(self) -> dict[str, float]:
        values = self._call(self._summary(), self._up_bound + self.request_timeout + 1)
        return {cur: v for (tag, cur), v in values.items() if tag == "TotalCashValue"}

    def available_funds(self) -> float:
        """What IB would let a new order use (AvailableFunds), for a margin check."""
        values = self._call(self._summary(), self._up_bound + self.request_timeout + 1)
        return values.get(("AvailableFunds", "USD"), 0.0)

    def available_funds_now(self) -> float | None:
        """AvailableFunds as IB last pushed it, never waiting on the network; None before
        the first push."""
        return self._funds

    async def _summary(self) -> dict[tuple[str, str], float]:
        """One account summary asked and its subscription cancelled at once: IB allows
        only two open at a time, and a standing one is refreshed only every few minutes."""
        await self._wait_up()
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
        return self._call(self._qualify(symbol), self._up_bound + self.request_timeout + 1)

    async def _qualify(self, symbol: str) -> Instrument | None:
        await self._wait_up()
        return await asyncio.wait_for(self._ask_contract(symbol), self.request_timeout)

    def instrument_now(self, venue: str, symbol: str) -> Instrument | None | object:
        """``instrument`` without the network: PENDING for a symbol not qualified yet."""
        if venue != self.market:
            return None
        return self._instruments.get(symbol, PENDING)

    def close(self) -> None:
        """The link and the loop end at once (well under a second)."""
        if not self._loop.loop.is_running():
            return  # closed already
        try:
            self._call(self._shutdown(), 0.5)
        except VenueDown:
            pass
        self._loop.close(0.5)

    async def _shutdown(self) -> None:
        if self._asking is not None:
            self._asking.cancel()
        await self._link.close()


def _ib_order(order: Order, account: str) -> Any:
    """A protected order is a marketable limit, IOC: IB fills what it can at its limit and
    cancels the rest; one without a limit, a market order for the day."""
    action = "BUY" if order.side == "buy" else "SELL"
    if order.limit > 0:
        return ib_api.LimitOrder(action, float(order.quantity), order.limit, orderRef=order.client_order_id,
                                 account=account, tif="IOC")
    return ib_api.MarketOrder(action, float(order.quantity), orderRef=order.client_order_id, account=account,
                              tif="DAY")
