"""OKX spot through the real ccxt client, behind the venue interface.

``submit`` is made for a sender thread: several threads may call it at once (for orders of
different instruments), each through a ccxt client of its own, all sharing one pacer
(OKX's limits), one table of markets and one map of instrument names. Orders leave in
batches (``trade/batch-orders``, at most 20 a request), each request bounded by the
timeout, and ``submit`` returns once OKX has answered: an ``Ack`` per order (see
``submit`` for what each says). It never raises for an order that may have reached OKX.

The fates follow as ``OrderUpdate``s: pushed by OKX on its private WebSocket and heard by
``okx_stream`` (ccxt pro's ``watch_orders``), or read from OKX's order lists by the
``okx_poller`` thread while that socket is down (both talk to OKX on the venue's own
asyncio loop, ``okx_io``, which ``close`` shuts at once). Each is handed to ``on_update``
when the engine set it, else kept for ``updates()``, which never asks OKX anything. What a market
order leaves unfilled after ``fill_wait_s`` is cancelled, and what filled is its fill.

An order whose outcome is unknown (a timeout, a dropped connection, OKX's 50004) may
have been placed: it is never sent again, only asked about by client order id
(``lookup``). OKX's 51016 ("duplicated clOrdId") means OKX holds an open order under that
id: it is looked up at once and reported as what OKX holds, never as a refusal. OKX keeps a
clOrdId unique among open orders only (a finished order's clOrdId places a new order), so an
order this venue has sent before is asked about, never sent again.
``place_many`` (send, then wait for each final fate) stays for tests and tools.

Everything it needs is passed in; it reads no environment, and neither its repr nor its
errors nor its log lines carry the credentials."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import ccxt
import ccxt.async_support
import requests
import urllib3

from connectors.venues import CANCELLED, PENDING, REJECTED, Ack, Instrument, OrderUpdate, Rejected, VenueDown
from connectors.venues import okx_limits as limits
from connectors.venues import okx_records as records
from connectors.venues import okx_secrets
from connectors.venues import okx_volume
from connectors.venues import okx_swap as swaps
from connectors.venues.okx_io import Closed, Io, OnLoop
from connectors.venues.okx_poller import Mailbox, Poller
from connectors.venues.okx_records import MAYBE_PLACED, TERMINAL
from connectors.venues.okx_stream import Stream
from connectors.venues.settings import OKX_FEE_COINS
from operators.fill import Fill
from operators.orders import Order
from operators.protection import not_marketable

T = TypeVar("T")

# what became of one order handed to ``_send_all``
TAKEN, REFUSED, MAYBE, UNSENT = "taken", "refused", "maybe", "unsent"


class NotSent(VenueDown):
    """The request cannot have reached OKX: no connection was made, or OKX refused it
    whole for its rate (50011 takes nothing)."""


@dataclass(frozen=True)
class Answer:
    kind: str  # TAKEN, REFUSED, MAYBE (may be at OKX: ask, never resend), UNSENT (did not leave)
    ord_id: str = ""
    reason: str = ""
    record: dict | None = None  # OKX's record, when it was looked up (after a 51016)
    left: bool = True  # False: refused here, before anything was sent
    acked: float = 0.0  # when OKX answered (monotonic clock)


def never_connected(error: BaseException) -> bool:
    """Whether a failed request cannot have reached OKX: no connection was ever made
    (refused, or not made in time). Anything later may have delivered it."""
    cause = error.__cause__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(cause, requests.exceptions.ConnectionError) and cause.args:
        reason = getattr(cause.args[0], "reason", None)
        return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
    return False


class _Link:
    """One ccxt client and the questions asked through it, each paced by OKX's limits. Each
    thread that talks to OKX has its own (a ccxt client is not shared between threads); they
    share the pacer, the markets and the instrument names."""

    def __init__(self, ex: ccxt.okx, venue: OkxVenue):
        self.ex, self.venue = ex, venue

    def markets(self) -> dict[str, dict]:
        """By instId; the client's own table filled too, which ccxt reads to parse answers."""
        markets = self.venue._load()
        if self.ex.markets is None:
            self.ex.set_markets_from_exchange(self.venue._markets_ex)
        return markets

    def symbol_of(self, order: Order) -> str:
        return self.markets()[self.venue._inst(order.symbol)]["symbol"]

    # ----- what the poller asks -----

    def working(self) -> list[dict]:
        """Every working spot order of the account, a full page a request."""
        return self._pages(limits.PENDING_ORDERS, self.ex.privateGetTradeOrdersPending, 0, None)

    def completed(self, floor: int, wanted: set[str]) -> list[dict]:
        """Completed spot orders, newest first, back to ordId ``floor`` or until every client
        order id in ``wanted`` has been seen."""
        return self._pages(limits.ORDERS_HISTORY, self.ex.privateGetTradeOrdersHistory, floor, wanted,
                           limits.HISTORY_PAGES)

    def _pages(self, costs: limits.Costs, call: Callable[[dict], dict], floor: int, wanted: set[str] | None,
               most: int = limits.PENDING_PAGES) -> list[dict]:
        self.markets()
        out: list[dict] = []
        missing = set(wanted) if wanted is not None else None
        query: dict = {"instType": self.venue.inst_type, "limit": str(limits.PAGE)}
        for _ in range(most):
            data = self.venue._read(costs, lambda: call(dict(query))).get("data") or []
            out.extend(self.ex.parse_orders(data))
            if missing is not None:
                missing -= {str(d.get("clOrdId")) for d in data}
            last = str(data[-1].get("ordId", "")) if data else ""
            if len(data) < limits.PAGE or not last.isdigit() or int(last) <= floor or missing == set():
                break
            query["after"] = last
        return out

    def one(self, order: Order) -> dict | None:
        """OKX's record of the order, None if it has none."""
        inst = self.venue._inst(order.symbol)
        if inst not in self.markets():
            return None  # OKX holds no order on an instrument it does not list (was a KeyError)
        symbol = self.symbol_of(order)
        try:
            return self.venue._paced(limits.get_order(inst), lambda: self.ex.fetch_order(
                None, symbol, {"clientOrderId": order.client_order_id}))
        except ccxt.OrderNotFound:
            return None
        except ccxt.ExchangeError as e:
            raise VenueDown(self.venue._scrub(
                f"{self.venue._where} could not say what became of {order.client_order_id}: {e}")) from None

    def cancel(self, order: Order) -> None:
        inst = self.venue._inst(order.symbol)
        symbol = self.symbol_of(order)
        try:
            self.venue._paced(limits.cancel(inst), lambda: self.ex.cancel_order(
                None, symbol, {"clientOrderId": order.client_order_id}))
        except (ccxt.OrderNotFound, ccxt.InvalidOrder):
            pass  # finished meanwhile: its record says how
        except ccxt.ExchangeError as e:
            raise VenueDown(self.venue._scrub(f"{self.venue._where} could not cancel {order.client_order_id}: {e}")) \
                from None

    def update(self, order: Order, o: dict) -> OrderUpdate:
        # priced through the calling thread's own client: the stream's thread calls this too
        u = records.update(order, self.venue._in_coins(o), lambda ccy: self.venue._here().usd(ccy))
        if order.limit > 0 and u.status == CANCELLED and u.fill is None:
            # an IOC nothing of which was marketable: OKX's answer has no market price, its ticker does
            u = replace(u, reason=not_marketable(order.limit, self.venue._here().last(order)))
        return u

    # ----- placing -----

    def send(self, chunk: list[Order]) -> list[Answer]:
        """One batch request; what became of each order, in the order given."""
        requests_ = [{"symbol": self.symbol_of(o), "type": _type(o), "side": o.side, "amount": self.venue._amount(o),
                      "price": o.limit or None, "params": self.venue._params(o)} for o in chunk]
        costs = limits.batch([self.venue._inst(o.symbol) for o in chunk])
        pos = {o.client_order_id: i for i, o in enumerate(chunk)}
        try:
            answers = self.venue._paced(costs, lambda: self.ex.create_orders(requests_))
        except NotSent as e:
            return [Answer(UNSENT, reason=str(e), left=False)] * len(chunk)
        except VenueDown as e:  # no answer: any of them may be there
            return [Answer(MAYBE, reason=str(e))] * len(chunk)
        except Exception as e:  # noqa: BLE001 - an answer that could not be read: the orders may be there
            if not isinstance(e, ccxt.ExchangeError):
                return [Answer(MAYBE, reason=f"{self.venue._where}'s answer could not be read: "
                                             f"{type(e).__name__}")] * len(chunk)
            per = records.refusals_in(e)  # every order refused: the body says why, each
            if not per:
                return [Answer(MAYBE, reason=f"okx refused the request: {type(e).__name__}")] * len(chunk)
            out: dict[int, Answer] = {}
            for n, (cid, code, msg) in enumerate(per):
                out[pos.get(cid, n)] = (Answer(MAYBE, reason=f"okx {code}: {msg}") if code == MAYBE_PLACED
                                        else Answer(REFUSED, reason=f"okx {code}: {msg}"))
            return [out.get(i, Answer(MAYBE, reason="okx said nothing of it")) for i in range(len(chunk))]
        got: dict[int, Answer] = {}
        for n, a in enumerate(answers):
            refusal, i = records.refusal(a), pos.get(a.get("clientOrderId") or "", n)
            info = a.get("info") or {}
            got[i] = (Answer(MAYBE, reason=f"okx {MAYBE_PLACED}: {info.get('sMsg', '')}") if refusal is None
                      else Answer(REFUSED, reason=refusal) if refusal else Answer(TAKEN, str(a.get("id") or "")))
        return [got.get(i, Answer(MAYBE, reason="okx said nothing of it")) for i in range(len(chunk))]

    def last(self, order: Order) -> float | None:
        """The instrument's last price, None if it cannot be asked (the order's outcome says so)."""
        try:
            ticker = self.venue._read({}, lambda: self.ex.fetch_ticker(self.symbol_of(order)))
        except (VenueDown, KeyError):
            return None
        return float(ticker.get("last") or 0) or None

    def usd(self, ccy: str) -> float:
        """The last price of a coin in the quote currency, taken as USD (a fee paid in OKB)."""
        inst = f"{ccy}-{self.venue.quote}"
        markets = self.markets()
        if inst not in markets:
            return 0.0
        ticker = self.venue._read({}, lambda: self.ex.fetch_ticker(markets[inst]["symbol"]))
        return float(ticker.get("last") or 0)


class _LoopLink(_Link):
    """The poller's link: its client is ccxt's asyncio one, run on the venue's loop, so that
    ``close`` cuts a request it is waiting on rather than waiting for it to end."""

    def __init__(self, venue: OkxVenue):  # noqa: D107 - no client of its own until first asked
        self.venue = venue
        self._on: tuple[Io, OnLoop] | None = None

    @property
    def ex(self) -> OnLoop:  # type: ignore[override]
        io = self.venue._io()
        if self._on is None or self._on[0] is not io:
            client = self.venue._async_client()
            io.clients.append(client)
            self._on = (io, OnLoop(client, io))
        return self._on[1]


class OkxVenue:
    name = "okx"
    asynchronous = True  # submit returns once OKX answered the placement; the fates follow as updates

    def __init__(self, *, url: str | None = None, sandbox: bool = False, api_key: str = "", secret: str = "",
                 passphrase: str = "", timeout_ms: int = 5000, fill_wait_s: float = 2.0,
                 poll_interval_s: float = 0.05, settle_timeout_s: float = 30.0, market: str = "okx",
                 market_map: Mapping[str, str] | None = None, quote: str = "USDT", rate_limit_retries: int = 3,
                 pacer: limits.Pacer | None = None, stream_retry_s: float = 5.0, swap: bool = False,
                 leverage: float = 1.0):
        """``url``: None for OKX itself, else the base URL of a stand-in (a simulator), whose
        WebSocket is taken at ``/ws/v5`` under the same address. ``sandbox``: OKX's demo
        trading. ``fill_wait_s``: how long an order's fate is awaited before what is left
        unfilled is cancelled. ``poll_interval_s``: the pause between looks at the order
        lists while the WebSocket is down. ``settle_timeout_s``: how much longer than that
        ``place_many`` awaits the final fates before VenueDown. ``market``: the market
        signals name for this venue; ``market_map``: a signal's symbol to OKX's instId where
        they differ. ``stream_retry_s``: the longest pause between attempts to reconnect the
        WebSocket. ``swap``: trade the USDT perpetual swaps of the instruments signals name
        (``okx_swap``), in isolated margin at ``leverage``, set once per instrument before
        its first order."""
        options = {"apiKey": api_key, "secret": secret, "password": passphrase, "timeout": timeout_ms,
                   "enableRateLimit": False}  # the pacer keeps OKX's own limits instead

        def configured(ex: T) -> T:
            if sandbox:
                ex.set_sandbox_mode(True)  # type: ignore[attr-defined]
            if url:
                ex.urls["api"]["rest"] = url.rstrip("/")  # type: ignore[attr-defined] # after the sandbox switch
            ex.options["fetchMarkets"] = {"types": ["swap" if swap else "spot"]}  # type: ignore[attr-defined]
            ex.has["fetchCurrencies"] = False  # type: ignore[attr-defined] # a private call per load, not needed
            return ex

        self._client = lambda: configured(ccxt.okx(dict(options)))
        self._async_client = lambda: configured(ccxt.async_support.okx(dict(options)))
        okx_secrets.hide(api_key, secret, passphrase)
        self._where = url or ("OKX demo trading" if sandbox else "OKX")
        self.fill_wait_s, self.settle_timeout_s = fill_wait_s, settle_timeout_s
        self.market, self.quote = market, quote
        self.swap, self.leverage = swap, leverage
        self.inst_type = "SWAP" if swap else "SPOT"
        self._levered: set[str] = set()  # swaps whose leverage this run has set
        self._to_inst = dict(market_map or {})
        self._to_symbol = {v: k for k, v in self._to_inst.items()}
        self.rate_limit_retries = rate_limit_retries
        self.pacer = pacer or limits.Pacer()
        self._links = threading.local()  # each calling thread's own link
        self._markets_lock = threading.Lock()
        self._markets: dict[str, dict] | None = None  # by instId
        self._markets_ex: ccxt.okx | None = None  # the client that loaded them, which others copy
        self._io_lock = threading.Lock()
        self._io_now: Io | None = None
        self._closed = False
        self._sent_lock = threading.Lock()
        self._sent: set[str] = set()  # client order ids that may have left: asked about, never sent again
        self._poller = Poller(_LoopLink(self), fill_wait_s=fill_wait_s, interval_s=poll_interval_s)
        self._stream = Stream(options, self._poller, self._markets_client, self._scrub, self._io,
                              ws_url=_ws_url(url), sandbox=sandbox, retry_max_s=stream_retry_s,
                              inst_type=self.inst_type)

    def __repr__(self) -> str:
        return f"OkxVenue({self._where})"

    @property
    def on_update(self) -> Callable[[OrderUpdate], None] | None:
        return self._poller.on_update

    @on_update.setter
    def on_update(self, callback: Callable[[OrderUpdate], None] | None) -> None:
        self._poller.on_update = callback

    def listen(self) -> None:
        """Opens OKX's private WebSocket in the background (``submit`` does it too); nothing
        once the venue is closed."""
        try:
            self._stream.start()
        except Closed:
            pass

    @property
    def streaming(self) -> bool:
        """Whether order changes are pushed to it now (else the order lists are read)."""
        return self._poller.stream_up

    def close(self) -> None:
        """Stops the WebSocket and the poller, at once: a request either is waiting on is
        cut. Final: fates not yet learnt are left to ``lookup`` (which, like ``submit``,
        still works, in the calling thread)."""
        self._poller.stop()
        self._stream.close()
        with self._io_lock:
            self._closed = True
            io, self._io_now = self._io_now, None
        if io is not None:
            io.close()
        self._poller.close()

    def _io(self) -> Io:
        """The venue's loop, started on first use; ``Closed`` once the venue is."""
        with self._io_lock:
            if self._closed:
                raise Closed
            if self._io_now is None:
                self._io_now = Io("okx-io")
            return self._io_now

    # ----- placing -----

    def submit(self, orders: list[Order]) -> list[Ack]:
        """Sends the orders and returns once OKX has answered, an ``Ack`` each, in order:
        accepted (OKX holds it: its fate follows as updates); refused (``reason``; a REJECTED
        update is told too); ``unknown`` (no answer came: it may be at OKX; never send it
        again, ask ``lookup``); or not ``sent`` (the connection failed before it left: it
        may be handed over again). Raises VenueDown only when nothing of the batch can
        have left."""
        self.listen()
        sent = time.monotonic()
        answers = self._send_all(orders, ask_now=False)
        if any(a.kind == UNSENT for a in answers) and not any(a.left for a in answers):
            raise VenueDown(next(a.reason for a in answers if a.kind == UNSENT))
        self._watch(orders, answers, sent)
        acks = []
        for order, a in zip(orders, answers, strict=True):
            cid = order.client_order_id
            if a.kind == TAKEN:
                acks.append(Ack(cid, True))
            elif a.kind == REFUSED:
                acks.append(Ack(cid, False, a.reason))
                self._poller.tell(OrderUpdate(cid, REJECTED, None, a.reason))
            else:
                acks.append(Ack(cid, False, a.reason, unknown=a.kind == MAYBE, sent=a.kind == MAYBE))
        return acks

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        """Sends, then awaits each order's final fate. An order without an answer is asked
        about at once; VenueDown if one cannot be found or asked, or some were not sent
        (what OKX took is still watched, its fate told through ``updates()``)."""
        self.listen()
        sent = time.monotonic()
        answers = self._send_all(orders, ask_now=True)
        unsettled = [a.reason for a in answers if a.kind in (MAYBE, UNSENT)]
        if unsettled:
            self._watch(orders, answers, sent)
            raise VenueDown(unsettled[0])
        box = Mailbox({o.client_order_id for o, a in zip(orders, answers) if a.kind == TAKEN})
        self._watch(orders, answers, sent, box)
        self._poller.wait(box, self.fill_wait_s + self.settle_timeout_s)
        return [Rejected(a.reason) if a.kind == REFUSED else records.outcome(box.got[o.client_order_id])
                for o, a in zip(orders, answers)]

    def updates(self) -> list[OrderUpdate]:
        """The changes of fate learnt since the last call (when ``on_update`` is not set):
        no request to OKX."""
        return self._poller.drain()

    def in_flight(self) -> int:
        """How many submitted orders' fates are not final yet."""
        return self._poller.in_flight()

    def cancel(self, order: Order) -> None:
        """Asks OKX to cancel what is left of the order; what it comes to is told as an
        update. VenueDown when OKX cannot be asked."""
        link = self._here()
        link.cancel(order)
        if self._poller.watch(order):  # not watched yet (placed before a restart): its record says how it ended
            o = link.one(order)
            if o is not None:
                self._poller.observe([o])

    def _watch(self, orders: list[Order], answers: list[Answer], sent: float, box: Mailbox | None = None) -> None:
        """The orders OKX holds are watched until final (``sent``: when the first of them
        left); those looked up are told at once."""
        taken = [(o, a) for o, a in zip(orders, answers) if a.kind == TAKEN]
        self._poller.track(((o, a.ord_id, a.acked) for o, a in taken), box, sent)
        self._poller.observe([a.record for _, a in taken if a.record is not None])

    def _send_all(self, orders: list[Order], ask_now: bool) -> list[Answer]:
        """Sends what can be sent, a batch at a time. Once a batch gets no answer, nothing
        more is sent (UNSENT), unless ``ask_now`` asks after each of its orders at once and
        finds them all. An order OKX says it holds already (51016) is looked up at once."""
        link = self._here()
        try:
            markets = link.markets()
        except VenueDown as e:
            return [Answer(UNSENT, reason=str(e), left=False)] * len(orders)
        out: dict[int, Answer] = {}
        sendable: list[int] = []
        for i, order in enumerate(orders):
            reason = self._unsendable(link, order, markets)
            unlevered = "" if reason else self._lever(link, self._inst(order.symbol))
            if reason:
                out[i] = Answer(REFUSED, reason=reason, left=False)
            elif unlevered:  # not sent without its leverage: handed over again later
                out[i] = Answer(UNSENT, reason=unlevered, left=False)
            elif not self._first_send(order.client_order_id):
                out[i] = self._asked(link, order, Answer(MAYBE, reason=f"{order.client_order_id} was sent before"))
            else:
                sendable.append(i)
        stop = ""
        for start in range(0, len(sendable), limits.BATCH_MAX):
            chunk = sendable[start:start + limits.BATCH_MAX]
            if stop:
                out.update({i: Answer(UNSENT, reason=stop, left=False) for i in chunk})
                for i in chunk:
                    self._unsent(orders[i].client_order_id)
                continue
            answers = link.send([orders[i] for i in chunk])
            acked = time.monotonic()
            for i, a in zip(chunk, answers):
                if a.kind == REFUSED or (a.kind == UNSENT and not a.left):
                    self._unsent(orders[i].client_order_id)  # OKX holds nothing under it
                out[i] = a = replace(a, acked=acked)
                if a.kind == MAYBE and (ask_now or a.reason.startswith(f"okx {MAYBE_PLACED}")):
                    out[i] = self._asked(link, orders[i], a)
            unsettled = [out[i] for i in chunk if out[i].kind in (MAYBE, UNSENT)]
            if unsettled and not all(a.reason.startswith(f"okx {MAYBE_PLACED}") for a in unsettled):
                stop = f"not sent: an earlier request to {self._where} went unanswered"
                if all(a.kind == UNSENT for a in unsettled):
                    stop = unsettled[0].reason
        return [out[i] for i in range(len(orders))]

    def _first_send(self, client_order_id: str) -> bool:
        """Whether this order has not left before (and is noted as leaving now)."""
        with self._sent_lock:
            if client_order_id in self._sent:
                return False
            self._sent.add(client_order_id)
            return True

    def _unsent(self, client_order_id: str) -> None:
        """It did not leave after all, or OKX refused it: it may be handed over again."""
        with self._sent_lock:
            self._sent.discard(client_order_id)

    def _asked(self, link: _Link, order: Order, a: Answer) -> Answer:
        """An order that may be at OKX, asked about by client order id: TAKEN with OKX's
        record if there, else still MAYBE (never sent again)."""
        try:
            o = link.one(order)
        except VenueDown as e:
            return Answer(MAYBE, reason=f"{a.reason}; {e}")
        if o is None:
            return Answer(MAYBE, reason=f"order {order.client_order_id} may not have reached {self._where}: "
                                        "ask again later")
        return Answer(TAKEN, str(o.get("id") or ""), record=o, acked=time.monotonic())

    def _unsendable(self, link: _Link, order: Order, markets: dict[str, dict]) -> str:
        if order.venue != self.market:
            return f"{self._where} does not serve market {order.venue}"
        inst = self._inst(order.symbol)
        if inst not in markets:
            return f"unknown instrument {inst}"
        if self.swap and self._amount(order) < float(swaps.contract_of(markets[inst]).min_sz):
            c = swaps.contract_of(markets[inst])
            return (f"{order.quantity:g} {order.symbol} is below {inst}'s smallest order, "
                    f"{c.min_sz} contracts of {c.ct_val}")
        try:  # ccxt's own checks (amount precision), which would refuse the whole batch
            link.ex.create_order_request(markets[inst]["symbol"], _type(order), order.side, self._amount(order),
                                         order.limit or None, self._params(order))
        except ccxt.BaseError as e:
            return self._scrub(f"{type(e).__name__}: {e}")
        return ""

    def _params(self, order: Order) -> dict:
        # a protected order is an IOC at its limit: OKX's ordType ``ioc``
        if self.swap:  # net mode: a sell opens or adds to a short, a buy reduces it
            params = {"clientOrderId": order.client_order_id, "tdMode": swaps.TD_MODE, "posSide": swaps.POS_SIDE}
        else:  # sized in the base currency, as the order is (OKX sizes a spot market buy in the quote otherwise)
            params = {"clientOrderId": order.client_order_id, "tgtCcy": "base_ccy"}
        if order.limit > 0:
            params["timeInForce"] = "IOC"
        return params

    def _amount(self, order: Order) -> float:
        """What the order asks of OKX: coins on spot, contracts on a swap."""
        if not self.swap:
            return order.quantity
        return float(swaps.contracts(order.quantity, self._contract(order.symbol)))

    def _contract(self, symbol: str) -> swaps.Contract:
        return swaps.contract_of(self._load()[self._inst(symbol)])

    def _in_coins(self, o: dict) -> dict:
        """A ccxt order record with its amounts in coins (a swap's are in contracts)."""
        if not self.swap:
            return o
        inst = str((o.get("info") or {}).get("instId") or "")
        market = self._load().get(inst)
        return swaps.in_coins(o, swaps.contract_of(market)) if market is not None else o

    def _lever(self, link: _Link, inst: str) -> str:
        """Sets the swap's leverage, once a run, before its first order: "" once set, else why not."""
        if not self.swap or inst in self._levered:
            return ""
        symbol = self._load()[inst]["symbol"]
        try:
            self._paced(limits.SET_LEVERAGE, lambda: link.ex.set_leverage(
                self.leverage, symbol, {"mgnMode": swaps.TD_MODE, "posSide": swaps.POS_SIDE}))
        except VenueDown as e:
            return str(e)
        except ccxt.BaseError as e:
            return self._scrub(f"{self._where} refused leverage {self.leverage:g} on {inst}: {e}")
        self._levered.add(inst)
        return ""

    def cancel_all_after(self, timeout_s: int) -> None:
        """Arms (or, with 0, disarms) OKX's dead man's switch: unless called again within
        ``timeout_s``, OKX cancels every working order of the account
        (``connectors/venues/okx_dead_man.py`` keeps it armed). VenueDown when OKX cannot be asked."""
        link = self._here()
        link.markets()
        try:
            link.ex.cancel_all_orders_after(timeout_s * 1000)
        except ccxt.BaseError as e:
            raise VenueDown(self._scrub(f"{self._where} could not arm cancel-all-after: {e}")) from None

    # ----- asking after one order -----

    def lookup(self, order: Order) -> Fill | None:
        """Asked by client order id under the order's instrument (OKX asks for one). An
        order still open is finished first, as ``place_many`` would have after its bound.
        None: OKX holds no order under it, so it may be sent (again)."""
        link = self._here()
        o = link.one(order)
        if o is None:
            self._unsent(order.client_order_id)
            return None
        fate = (records.fate(order, self._in_coins(o), link.usd) if o.get("status") in TERMINAL
                else self._finish(link, order))
        if isinstance(fate, Rejected):
            if order.limit > 0:  # an IOC that ended with nothing filled: not marketable at its limit
                raise Rejected(not_marketable(order.limit, link.last(order)))
            raise fate
        return fate

    def _finish(self, link: _Link, order: Order) -> Fill | Rejected:
        """Cancels what is left of an order, then its fate: the part filled, or a refusal."""
        link.cancel(order)
        o = link.one(order)
        if o is None or o.get("status") not in TERMINAL:
            raise VenueDown(f"order {order.client_order_id} is still open at {self._where}")
        return records.fate(order, self._in_coins(o), link.usd)

    # ----- what the account holds -----

    def open_orders(self) -> list[Order]:
        link = self._here()
        link.markets()
        params = {"instType": "SWAP"} if self.swap else {}
        got = self._read(limits.PENDING_ORDERS, lambda: link.ex.fetch_open_orders(None, None, None, params))
        out = []
        for o in map(self._in_coins, got):
            info = o.get("info") or {}
            cid = o.get("clientOrderId") or ""
            watched = self._poller.tracked.get(cid)  # an order of ours still working: what it was for
            sent = watched.order if watched is not None else None
            out.append(Order(cid, sent.signal_id if sent else "", sent.kind if sent else "open", self.market,
                             self._symbol(info.get("instId", "")), o.get("side") or "",
                             float(o.get("remaining") or o.get("amount") or 0), float(o.get("price") or 0),
                             int(o.get("timestamp") or 0)))
        return out

    def balances(self, free: bool = False) -> dict[str, float]:
        """What the account holds by currency; ``free``: only what no open order holds
        (OKX's availBal), what a new order may spend."""
        link = self._here()
        link.markets()
        got = self._read(limits.BALANCES, lambda: link.ex.fetch_balance())
        return {ccy: float(v) for ccy, v in (got.get("free" if free else "total") or {}).items() if v is not None}

    def positions(self) -> dict[tuple[str, str], float]:
        """Spot holdings: each coin against the quote, but the quote itself (the account's
        cash) and the fee coin (kept for OKX's fee discounts: fees paid in it change it
        under every book, so no book could account for it)."""
        return self.holdings()[0]

    def holdings(self, free: bool = False) -> tuple[dict[tuple[str, str], float], list[tuple[str, str, float, str]]]:
        """``positions`` and, from the same answer, what the account holds that is not a
        position: (market, symbol, quantity, why) each, for start-up to say it left them alone.
        ``free``: only the coins no open order holds, what a sale may sell (OKX refuses a
        spot sale of more, 51008); a swap's position is all closable."""
        if self.swap:
            return self.swap_positions(), []
        held, aside = {}, []
        for ccy, qty in self.balances(free).items():
            if ccy == self.quote or not qty:
                continue
            key = (self.market, self._symbol(f"{ccy}-{self.quote}"))
            if ccy in OKX_FEE_COINS:
                aside.append((*key, qty, "OKX's fee currency"))
            else:
                held[key] = qty
        return held, aside

    def swap_positions(self) -> dict[tuple[str, str], float]:
        """Each swap's net position in coins (a short below zero), by the signal's name."""
        link = self._here()
        markets = link.markets()
        got = self._read(limits.POSITIONS_READ, lambda: link.ex.fetch_positions(None, {"instType": "SWAP"}))
        out: dict[tuple[str, str], float] = {}
        for p in got:
            inst = str((p.get("info") or {}).get("instId") or "")
            if inst in markets:
                qty = swaps.position(p, swaps.contract_of(markets[inst]))
                if qty:
                    key = (self.market, self._symbol(inst))
                    out[key] = out.get(key, 0.0) + qty
        return out

    def funding(self, since_ms: int = 0) -> list[swaps.FundingPayment]:
        """The funding OKX booked to the account since ``since_ms`` (its bills of type 8),
        oldest first; nothing on spot."""
        if not self.swap:
            return []
        link = self._here()
        link.markets()
        got: list[dict] = []
        params: dict = {"type": "swap"}
        for _ in range(limits.BILL_PAGES):  # newest first, a page at a time, back to ``since_ms``
            page = self._read(limits.BILLS, lambda: link.ex.fetch_funding_history(
                None, since_ms or None, limits.PAGE, dict(params)))
            got += page
            ids = [str(h.get("id") or "") for h in page]
            if len(page) < limits.PAGE or not all(i.isdigit() for i in ids):
                break
            params["after"] = min(ids, key=int)
        return swaps.funding_payments(got)

    def price(self, market: str, symbol: str) -> float | None:
        """The instrument's last price at OKX; None where OKX lists no such instrument."""
        listed = self._listed(market, symbol)
        if listed is None:
            return None
        link, unified = listed
        ticker = self._read({}, lambda: link.ex.fetch_ticker(unified))
        return float(ticker.get("last") or 0) or None

    def minute_volume(self, market: str, symbol: str, now_ms: int | None = None) -> float | None:
        """What traded in the instrument over the last complete minute before ``now_ms`` (its
        1-minute candles, ``market/candles``); None where OKX lists no such instrument, or no
        candle of it yet."""
        listed = self._listed(market, symbol)
        if listed is None:
            return None
        link, unified = listed
        return self._read({}, lambda: okx_volume.minute_volume(link.ex, unified, now_ms))

    def _listed(self, market: str, symbol: str):
        """This thread's link and ccxt's name of the instrument; None where OKX lists no such
        instrument (or the market is not this venue's)."""
        if market != self.market:
            return None
        inst = self._inst(symbol)
        link = self._here()
        markets = link.markets()
        return (link, markets[inst]["symbol"]) if inst in markets else None

    def server_time(self) -> float:
        """OKX's clock (``public/time``), in unix seconds."""
        link = self._here()
        return self._read({}, lambda: link.ex.fetch_time()) / 1000

    def instruments(self) -> list[Instrument]:
        return [self._instrument(inst, m) for inst, m in sorted(self._load().items())]

    def instrument(self, venue: str, symbol: str) -> Instrument | None:
        if venue != self.market:
            return None
        m = self._load().get(self._inst(symbol))
        return self._instrument(self._inst(symbol), m) if m is not None else None

    def instrument_now(self, venue: str, symbol: str) -> Instrument | None | object:
        """``instrument`` without the network: PENDING until the markets are loaded."""
        if venue != self.market:
            return None
        if self._markets is None:
            return PENDING
        return self.instrument(venue, symbol)

    def _instrument(self, inst: str, m: dict) -> Instrument:
        info = m.get("info") or {}
        if self.swap:  # the book sizes in coins: the swap's lot and minimum in coins
            c = swaps.contract_of(m)
            return Instrument(self.market, self._symbol(inst), c.lot_coins,
                              float(info.get("tickSz") or m["precision"]["price"]), c.min_coins)
        return Instrument(self.market, self._symbol(inst), float(info.get("lotSz") or m["precision"]["amount"]),
                          float(info.get("tickSz") or m["precision"]["price"]),
                          float(info.get("minSz") or m["limits"]["amount"]["min"] or 0))

    # ----- plumbing -----

    def _here(self) -> _Link:
        """The calling thread's own link, made on its first call."""
        link = getattr(self._links, "link", None)
        if link is None:
            link = self._links.link = _Link(self._client(), self)
        return link

    def _load(self) -> dict[str, dict]:
        """The spot markets by instId, asked once (by whichever thread asks first)."""
        with self._markets_lock:
            if self._markets is None:
                ex = self._here().ex
                got = self._read(limits.MARKETS, lambda: ex.load_markets())
                self._markets = {m["id"]: m for m in got.values() if (
                    swaps.tradable(m, self.quote) if self.swap else m.get("spot") and m.get("active") is not False)}
                self._markets_ex = ex
        return self._markets

    def _markets_client(self) -> ccxt.okx:
        """A client whose markets are loaded, for another to copy them from."""
        self._load()
        assert self._markets_ex is not None
        return self._markets_ex

    @staticmethod
    def _scrub(text: str) -> str:
        """The text with the credentials blotted out, should an answer quote one."""
        return okx_secrets.scrub(text)

    def _inst(self, symbol: str) -> str:
        if symbol in self._to_inst:
            return self._to_inst[symbol]
        return swaps.inst_of(symbol) if self.swap else symbol

    def _symbol(self, inst: str) -> str:
        if inst in self._to_symbol:
            return self._to_symbol[inst]
        return swaps.symbol_of(inst) if self.swap else inst

    def _paced(self, costs: limits.Costs, call: Callable[[], T]) -> T:
        """One request inside OKX's limits. A refusal for the rate (someone else sharing the
        account, or a limit OKX lowered) is retried after a window; VenueDown if it persists
        or if the venue cannot be reached (NotSent when the request cannot have reached it)."""
        for attempt in range(self.rate_limit_retries + 1):
            try:
                with self.pacer.slot(costs):
                    return call()
            except ccxt.RateLimitExceeded:
                if attempt == self.rate_limit_retries:
                    raise NotSent(f"{self._where} keeps refusing requests for their rate") from None
                time.sleep(limits.WINDOW_S)
            except ccxt.NetworkError as e:  # a timeout, a dropped connection, 5xx, 50004
                if never_connected(e):
                    raise NotSent(f"{self._where} could not be reached: {type(e).__name__}") from None
                raise VenueDown(f"{self._where} did not answer: {type(e).__name__}") from None
        raise AssertionError("unreachable")

    def _read(self, costs: limits.Costs, call: Callable[[], T]) -> T:
        """A request that only asks: any error in the answer means it could not be asked."""
        try:
            return self._paced(costs, call)
        except ccxt.BaseError as e:
            raise VenueDown(self._scrub(f"{self._where} could not be asked: {type(e).__name__}: {e}")) from None



def _type(order: Order) -> str:
    """A protected order is a marketable limit (an IOC at its limit); one without a limit, a market order."""
    return "limit" if order.limit > 0 else "market"


def _ws_url(url: str | None) -> str | None:
    """A stand-in's WebSocket base, at the same address as its REST API; None for OKX's own."""
    if not url:
        return None
    base = url.rstrip("/")
    return ("wss://" + base[len("https://"):] if base.startswith("https://") else
            "ws://" + base[len("http://"):] if base.startswith("http://") else base) + "/ws/v5"
