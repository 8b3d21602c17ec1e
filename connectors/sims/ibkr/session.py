"""One client's conversation with the simulated gateway: the handshake, then each
request answered in order, each the configured latency after it arrived. Requests it does not
know are ignored, as TWS ignores what a client is not entitled to."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from connectors.sims.ibkr import messages as m
from connectors.sims.ibkr.state import NO_PRICE, SimOrder
from connectors.sims.ibkr.wire import handshake, handshake_reply, read_message

if TYPE_CHECKING:
    from connectors.sims.ibkr.server import Gateway

log = logging.getLogger(__name__)

SUMMARY_TAGS = ("TotalCashValue", "AvailableFunds", "NetLiquidation", "BuyingPower", "SettledCash")


class Session:
    def __init__(self, gateway: Gateway, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.gw, self.reader, self.writer = gateway, reader, writer
        self.client_id: int | None = None
        self.account_updates = False  # subscribed to reqAccountUpdates: fills push new values
        self.position_updates = False  # subscribed to reqPositions: fills push the new position

    def send(self, *frames: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))

    def drop(self) -> None:
        """The socket closes as a crashed or unplugged gateway's would: no goodbye. The
        session is gone at once, so its client id is free for the client's reconnect."""
        self.gw.sessions.discard(self)
        self.writer.transport.abort()

    async def run(self) -> None:
        """Requests are read as they come and each is answered ``latency_ms`` after it
        arrived, in order: the latency is the distance to the gateway, paid once per request
        however many are on their way, as on a real link (answering one request only after
        the last one's latency made a 250 ms gateway take four orders a second)."""
        queued: asyncio.Queue[tuple[float, list[str]] | None] = asyncio.Queue()
        answering = asyncio.create_task(self._answer(queued))
        try:
            version = await handshake(self.reader)
            self.send(handshake_reply(version))
            loop = asyncio.get_running_loop()
            while not self.writer.is_closing() and not answering.done():
                fields = await read_message(self.reader)
                queued.put_nowait((loop.time() + self.gw.faults.latency_ms / 1000, fields))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the client went away
        finally:
            queued.put_nowait(None)
            try:
                await answering
            except (ConnectionError, OSError):
                pass
            self.gw.sessions.discard(self)
            self.writer.close()

    async def _answer(self, queued: asyncio.Queue[tuple[float, list[str]] | None]) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queued.get()) is not None:
            due, fields = item
            if self.writer.is_closing():
                continue  # dropped: what was still on its way is never answered
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dispatch(fields)
            await self.writer.drain()

    def dispatch(self, f: list[str]) -> None:
        if not f or not f[0].lstrip("-").isdigit():
            return
        handler = HANDLERS.get(int(f[0]))
        if handler is None:
            return
        try:
            handler(self, f)
        except (IndexError, ValueError):
            log.warning("malformed request %s ignored", f[0])

    # requests

    def start_api(self, f: list[str]) -> None:
        cid = int(f[2])
        if any(s.client_id == cid for s in self.gw.sessions if s is not self):
            self.send(m.error(-1, 326, f"Unable to connect as the client id {cid} is already in use."))
            self.drop()
            return
        self.client_id = cid
        self.send(m.next_valid_id(self.gw.state.book.next_order_id), m.managed_accounts(self.gw.account))

    def req_ids(self, f: list[str]) -> None:
        self.send(m.next_valid_id(self.gw.state.book.next_order_id))

    def current_time(self, f: list[str]) -> None:
        self.send(m.current_time(self.gw.clock_skew_s))

    def contract_details(self, f: list[str]) -> None:
        req_id, symbol, sec_type = int(f[2]), f[4], f[5]
        if not self.gw.state.defines(symbol) or sec_type not in ("STK", ""):
            self.send(m.error(req_id, 200, "No security definition has been found for the request"))
        else:
            self.send(m.contract_details(req_id, symbol), m.contract_details_end(req_id))

    def place_order(self, f: list[str]) -> None:
        order_id, symbol = int(f[1]), f[3]
        action, quantity, order_type, account, ref = f[16], float(f[17] or 0), f[18], f[23], f[26]
        limit, tif = _price(f[19]), f[21]
        gw, cid = self.gw, self.client_id or 0
        if gw.state.find(cid, order_id) is not None:
            self.send(m.error(order_id, 103, "Duplicate order id"))
            return
        price = gw.state.price(symbol)
        reason = self._refusal(symbol, action, quantity, order_type, tif, limit, price)
        if reason:
            self.send(m.error(order_id, 201, f"Order rejected - reason:{reason}"))
            return
        assert price is not None
        o = gw.state.accept(order_id, cid, symbol, action, quantity, order_type, account or gw.account, ref)
        gw.state.log_accepted(o, price)
        shares = quantity if gw.faults.partial is None else math.floor(quantity * gw.faults.partial)
        if order_type == "LMT" and not (price <= limit if action == "BUY" else price >= limit):
            shares = 0  # an IOC not marketable at its limit: nothing fills, all of it is cancelled
        ex = gw.state.execute(o, shares, price) if shares > 0 else None
        ioc_rest = order_type == "LMT" and not o.done  # an IOC's unfilled rest: cancelled at once, answered or not
        if gw.faults.take("drop_orders"):
            if ioc_rest:
                gw.state.cancel(o)
            self.drop()
            return
        if gw.faults.take("error_103"):
            if ioc_rest:
                gw.state.cancel(o)
            self.send(m.error(order_id, 103, "Duplicate order id"))
            return
        self.send(m.open_order(o))
        if ex is None:
            self.send(m.order_status(o, 0.0))
        else:
            self.send(m.order_status(o, price), m.exec_details(-1, ex), m.commission_report(ex))
            gw.push_account(symbol)
        if ioc_rest:  # said after its fills, with the venue's price
            gw.state.cancel(o)
            self.send(m.error(order_id, 202, f"Order Canceled - reason:IOC not marketable at limit {limit:.15g}; "
                                             f"venue price {price:.15g}"), m.order_status(o, 0.0))

    def _refusal(self, symbol: str, action: str, quantity: float, order_type: str, tif: str, limit: float,
                 price: float | None) -> str:
        if not self.gw.state.defines(symbol) or symbol in self.gw.faults.reject:
            return f"{symbol} is not tradable here"
        if price is None:  # never an invented price: the order is refused, and says why
            return NO_PRICE.format(symbol=symbol)
        if order_type not in ("MKT", "LMT") or (order_type == "LMT" and (tif != "IOC" or limit <= 0)):
            return "this simulator takes market orders and marketable limits (LMT, IOC) only"
        if action not in ("BUY", "SELL") or quantity <= 0 or not quantity.is_integer():
            return "the quantity must be a whole number of shares"
        if action == "BUY" and quantity * price > self.gw.state.book.cash:
            return "Insufficient funds"
        return ""

    def cancel_order(self, f: list[str]) -> None:
        order_id = int(f[2])
        o = self.gw.state.find(self.client_id or 0, order_id)
        if o is None:
            self.send(m.error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found."))
        elif o.done:
            self.send(m.error(order_id, 161, "Cancel attempted when order is not in a cancellable state."))
        else:
            self.gw.state.cancel(o)
            self.send(m.order_status(o, 0.0), m.error(order_id, 202, "Order Canceled - reason:"))

    def open_orders(self, f: list[str]) -> None:
        """reqOpenOrders answers this client's orders, reqAllOpenOrders everyone's."""
        mine = int(f[0]) == 5
        orders, *_ = self.gw.state.snapshot()
        for o in orders:
            if not o.done and (not mine or o.client_id == self.client_id):
                self.send(m.open_order(o), m.order_status(o, 0.0))
        self.send(m.open_order_end())

    def completed_orders(self, f: list[str]) -> None:
        orders, *_ = self.gw.state.snapshot()
        self.send(*(m.completed_order(o) for o in orders if o.done), m.completed_orders_end())

    def executions(self, f: list[str]) -> None:
        req_id, client_id, symbol = int(f[2]), int(f[3] or 0), f[7] if len(f) > 7 else ""
        _, execs, _, _ = self.gw.state.snapshot()
        for ex in execs:
            if (not client_id or ex.client_id == client_id) and (not symbol or ex.symbol == symbol):
                self.send(m.exec_details(req_id, ex), m.commission_report(ex))
        self.send(m.exec_details_end(req_id))

    def positions(self, f: list[str]) -> None:
        self.position_updates = True
        _, _, held, _ = self.gw.state.snapshot()
        self.send(*(m.position(self.gw.account, s, q, a) for s, (q, a) in held.items()), m.position_end())

    def account_updates_req(self, f: list[str]) -> None:
        self.account_updates = f[2] == "1"
        if self.account_updates:
            self.send(*self.account_values(), m.account_time(), m.account_download_end(self.gw.account))

    def account_values(self) -> list[bytes]:
        acct = self.gw.account
        return [m.account_value(k, v, "USD", acct) for k, v in self.gw.summary().items()]

    def account_updates_multi(self, f: list[str]) -> None:
        req_id, acct = int(f[2]), self.gw.account
        rows = [m.account_update_multi(req_id, acct, k, v, "USD") for k, v in self.gw.summary().items()]
        self.send(*rows, m.account_update_multi_end(req_id))

    def account_summary(self, f: list[str]) -> None:
        req_id, tags = int(f[2]), set(f[4].split(","))
        rows = [m.account_summary(req_id, self.gw.account, k, v, "USD")
                for k, v in self.gw.summary().items() if k in tags]
        self.send(*rows, m.account_summary_end(req_id))

    def cancel_positions(self, f: list[str]) -> None:
        self.position_updates = False

    def ignore(self, f: list[str]) -> None:
        """Cancels of subscriptions this simulator never streams, and auto-binding."""

    def order_filled_later(self, o: SimOrder, frames: list[bytes]) -> None:
        """A resting order of this client filled: its owner hears it as a live update."""
        self.send(m.open_order(o), *frames)


def _price(field: str) -> float:
    """A price field of a placed order: empty, or ib_async's "unset" (the largest double), is none."""
    try:
        px = float(field)
    except ValueError:
        return 0.0
    return px if 0 < px < 1e300 else 0.0


HANDLERS = {
    71: Session.start_api, 8: Session.req_ids, 49: Session.current_time, 9: Session.contract_details,
    3: Session.place_order, 4: Session.cancel_order, 5: Session.open_orders, 16: Session.open_orders,
    15: Session.ignore, 99: Session.completed_orders, 7: Session.executions, 61: Session.positions,
    64: Session.cancel_positions, 6: Session.account_updates_req, 76: Session.account_updates_multi,
    77: Session.ignore, 62: Session.account_summary, 63: Session.ignore,
}
