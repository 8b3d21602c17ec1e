"""OKX spot through the real ccxt client, behind the venue interface.

Orders leave in batches (``trade/batch-orders``, at most 20 a request) and ``submit``
returns once OKX has answered them: taken, with OKX's order id, or refused, with its
reason. A poller (``okx_poller``) then learns their fates from OKX's order lists in a
thread of its own and queues each change; ``updates()`` only hands that queue over.
``place_many`` is ``submit`` followed by a wait for each order's final fate (see
``okx_poller`` for who hears which update). What a market order leaves unfilled after
``fill_wait_s`` is cancelled, and what filled is its fill.

An order whose outcome is unknown (a timeout, a dropped connection, OKX's 50004, or its
51016 "duplicated clOrdId") may have been placed: it is looked up by client order id,
never sent again. If the venue cannot be asked, ``VenueDown``: the egress leaves the
entry pending and asks ``lookup`` when it retries.

Everything it needs is passed in; it reads no environment, and neither its repr nor its
errors carry the credentials."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import ccxt

from connectors.venues import PENDING, REJECTED, Ack, Instrument, OrderUpdate, Rejected, VenueDown
from connectors.venues import okx_limits as limits
from connectors.venues import okx_records as records
from connectors.venues.okx_poller import Mailbox, Poller
from connectors.venues.okx_records import MAYBE_PLACED, TERMINAL
from operators.fill import Fill
from operators.orders import Order

T = TypeVar("T")


class _Link:
    """One ccxt client and the questions asked through it, each paced by OKX's limits. The
    caller's thread and the poller's each have their own (a client is not shared between
    threads); they share the pacer, the markets and the instrument names."""

    def __init__(self, ex: ccxt.okx, venue: OkxVenue, markets_from: _Link | None = None):
        """``markets_from``: the link whose loaded markets this one takes, rather than asking."""
        self.ex, self.venue, self.markets_from = ex, venue, markets_from

    def markets(self) -> dict[str, dict]:
        """By instId; the client's own table filled too, which ccxt reads to parse answers."""
        markets = self.venue._load()
        if self.ex.markets is None and self.markets_from is not None:
            self.ex.set_markets_from_exchange(self.markets_from.ex)
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
        query: dict = {"instType": "SPOT", "limit": str(limits.PAGE)}
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
            raise VenueDown(f"{self.venue._where} could not say what became of {order.client_order_id}: {e}") \
                from None

    def cancel(self, order: Order) -> None:
        inst = self.venue._inst(order.symbol)
        symbol = self.symbol_of(order)
        try:
            self.venue._paced(limits.cancel(inst), lambda: self.ex.cancel_order(
                None, symbol, {"clientOrderId": order.client_order_id}))
        except (ccxt.OrderNotFound, ccxt.InvalidOrder):
            pass  # finished meanwhile: its record says how
        except ccxt.ExchangeError as e:
            raise VenueDown(f"{self.venue._where} could not cancel {order.client_order_id}: {e}") from None

    def update(self, order: Order, o: dict) -> OrderUpdate:
        return records.update(order, o, self.usd)

    def usd(self, ccy: str) -> float:
        """The last price of a coin in the quote currency, taken as USD (a fee paid in OKB)."""
        inst = f"{ccy}-{self.venue.quote}"
        markets = self.markets()
        if inst not in markets:
            return 0.0
        ticker = self.venue._read({}, lambda: self.ex.fetch_ticker(markets[inst]["symbol"]))
        return float(ticker.get("last") or 0)


class OkxVenue:
    name = "okx"
    asynchronous = True  # submit returns once OKX answered the placement; the poller learns fates

    def __init__(self, *, url: str | None = None, sandbox: bool = False, api_key: str = "", secret: str = "",
                 passphrase: str = "", timeout_ms: int = 5000, fill_wait_s: float = 2.0,
                 poll_interval_s: float = 0.05, settle_timeout_s: float = 30.0, market: str = "okx",
                 market_map: Mapping[str, str] | None = None, quote: str = "USDT", rate_limit_retries: int = 3,
                 pacer: limits.Pacer | None = None):
        """``url``: None for OKX itself, else the base URL of a stand-in (a simulator).
        ``sandbox``: OKX's demo trading. ``fill_wait_s``: how long an order's fate is awaited
        before what is left unfilled is cancelled. ``poll_interval_s``: the pause between the
        poller's rounds. ``settle_timeout_s``: how much longer than that ``place_many`` awaits
        the final fates before VenueDown. ``market``: the market signals name for this
        venue; ``market_map``: a signal's symbol to OKX's instId where they differ."""
        def client() -> ccxt.okx:
            ex = ccxt.okx({"apiKey": api_key, "secret": secret, "password": passphrase, "timeout": timeout_ms,
                           "enableRateLimit": False})  # the pacer keeps OKX's own limits instead
            if sandbox:
                ex.set_sandbox_mode(True)
            if url:
                ex.urls["api"]["rest"] = url.rstrip("/")  # after the sandbox switch, which replaces the URLs
            ex.options["fetchMarkets"] = {"types": ["spot"]}
            ex.has["fetchCurrencies"] = False  # a private call per load that nothing here needs
            return ex

        self._client = client
        self._where = url or ("OKX demo trading" if sandbox else "OKX")
        self.fill_wait_s, self.settle_timeout_s = fill_wait_s, settle_timeout_s
        self.market, self.quote = market, quote
        self._to_inst = dict(market_map or {})
        self._to_symbol = {v: k for k, v in self._to_inst.items()}
        self.rate_limit_retries = rate_limit_retries
        self.pacer = pacer or limits.Pacer()
        self._link = _Link(client(), self)
        self._ex = self._link.ex
        self._markets: dict[str, dict] | None = None  # by instId
        self._poller = Poller(_Link(client(), self, markets_from=self._link), fill_wait_s=fill_wait_s,
                              interval_s=poll_interval_s)

    def __repr__(self) -> str:
        return f"OkxVenue({self._where})"

    def close(self) -> None:
        """Stops the poller; fates not yet learnt are left to ``lookup``."""
        self._poller.close()

    # ----- placing -----

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        """Sends, then awaits each order's final fate from the poller (see the module's docstring)."""
        fates, placed = self._place(orders)
        box = Mailbox({orders[i].client_order_id for i, _, _ in placed})
        self._poller.track(((orders[i], ord_id, acked) for i, ord_id, acked in placed), box)
        self._poller.wait(box, self.fill_wait_s + self.settle_timeout_s)
        return [fates[i] if i in fates else records.outcome(box.got[o.client_order_id])
                for i, o in enumerate(orders)]

    def submit(self, orders: list[Order]) -> list[Ack]:
        """Returns once OKX has answered; the fates follow through ``updates()``."""
        fates, placed = self._place(orders)
        acks = []
        for i, order in enumerate(orders):
            if i in fates:
                acks.append(Ack(order.client_order_id, False, str(fates[i])))
                self._poller.tell(OrderUpdate(order.client_order_id, REJECTED, None, str(fates[i])))
            else:
                acks.append(Ack(order.client_order_id, True))
        self._poller.track((orders[i], ord_id, acked) for i, ord_id, acked in placed)
        return acks

    def updates(self) -> list[OrderUpdate]:
        """The changes of fate the poller learnt since the last call: no request to OKX."""
        return self._poller.drain()

    def in_flight(self) -> int:
        """How many submitted orders' fates are not final yet."""
        return self._poller.in_flight()

    def _place(self, orders: list[Order]) -> tuple[dict[int, Rejected], list[tuple[int, str, float]]]:
        """Sends what can be sent. Returns the refusals by position and the (position, OKX's
        order id, when it answered) of every order the venue holds. Raises VenueDown once an
        order may or may not be there, sending nothing after it; what OKX took before that
        is watched all the same, its fate told through ``updates()``."""
        markets = self._load()
        fates: dict[int, Rejected] = {}
        sendable: list[int] = []
        for i, order in enumerate(orders):
            reason = self._unsendable(order, markets)
            if reason:
                fates[i] = Rejected(reason)
            else:
                sendable.append(i)
        placed: list[tuple[int, str, float]] = []
        try:
            for start in range(0, len(sendable), limits.BATCH_MAX):
                chunk = sendable[start:start + limits.BATCH_MAX]
                answers = self._send([orders[i] for i in chunk])
                acked = time.monotonic()
                for i, answer in answers.items():
                    if answer is not None and answer[0]:
                        fates[chunk[i]] = Rejected(answer[0])
                    elif answer is not None:
                        placed.append((chunk[i], answer[1], acked))
                for i in [chunk[i] for i, answer in answers.items() if answer is None]:
                    placed.append((i, self._asked(orders[i]), time.monotonic()))  # asked, never sent again
        except VenueDown:
            self._poller.track((orders[i], ord_id, acked) for i, ord_id, acked in placed)
            raise
        return fates, placed

    def _asked(self, order: Order) -> str:
        """OKX's id of an order that may have been placed; VenueDown if it cannot say it was."""
        o = self._link.one(order)
        if o is None:
            raise VenueDown(f"order {order.client_order_id} may not have reached {self._where}: ask again later")
        return str(o.get("id") or "")

    def _unsendable(self, order: Order, markets: dict[str, dict]) -> str:
        if order.venue != self.market:
            return f"{self._where} does not serve market {order.venue}"
        inst = self._inst(order.symbol)
        if inst not in markets:
            return f"unknown instrument {inst}"
        try:  # ccxt's own checks (amount precision), which would refuse the whole batch
            self._ex.create_order_request(markets[inst]["symbol"], "market", order.side, order.quantity, None,
                                          self._params(order))
        except ccxt.BaseError as e:
            return f"{type(e).__name__}: {e}"
        return ""

    def _params(self, order: Order) -> dict:
        # a market buy is sized in the base currency, as the order is
        return {"clientOrderId": order.client_order_id, "tgtCcy": "base_ccy"}

    def _send(self, chunk: list[Order]) -> dict[int, tuple[str, str] | None]:
        """One batch request. By position: (reason, "") refused, ("", OKX's order id) taken,
        None maybe placed."""
        requests = [{"symbol": self._markets[self._inst(o.symbol)]["symbol"], "type": "market",  # type: ignore[index]
                     "side": o.side, "amount": o.quantity, "params": self._params(o)} for o in chunk]
        costs = limits.batch([self._inst(o.symbol) for o in chunk])
        pos = {o.client_order_id: i for i, o in enumerate(chunk)}
        try:
            answers = self._paced(costs, lambda: self._ex.create_orders(requests))
        except VenueDown:
            return {i: None for i in range(len(chunk))}  # no answer: any of them may be there
        except ccxt.ExchangeError as e:  # every order refused: the body says why, each
            per = records.refusals_in(e)
            if not per:
                return {i: None for i in range(len(chunk))}
            out: dict[int, tuple[str, str] | None] = {}
            for n, (cid, code, msg) in enumerate(per):
                out[pos.get(cid, n)] = None if code == MAYBE_PLACED else (f"okx {code}: {msg}", "")
            return {i: out.get(i) for i in range(len(chunk))}
        got: dict[int, tuple[str, str] | None] = {}
        for n, a in enumerate(answers):
            refusal, i = records.refusal(a), pos.get(a.get("clientOrderId") or "", n)
            got[i] = None if refusal is None else (refusal, str(a.get("id") or ""))
        return {i: got.get(i) for i in range(len(chunk))}

    # ----- asking after one order -----

    def lookup(self, order: Order) -> Fill | None:
        """Asked by client order id under the order's instrument (OKX asks for one). An
        order still open is finished first, as ``place_many`` would have after its bound."""
        o = self._link.one(order)
        if o is None:
            return None
        fate = records.fate(order, o, self._link.usd) if o.get("status") in TERMINAL else self._finish(order)
        if isinstance(fate, Rejected):
            raise fate
        return fate

    def _finish(self, order: Order) -> Fill | Rejected:
        """Cancels what is left of an order, then its fate: the part filled, or a refusal."""
        self._link.cancel(order)
        o = self._link.one(order)
        if o is None or o.get("status") not in TERMINAL:
            raise VenueDown(f"order {order.client_order_id} is still open at {self._where}")
        return records.fate(order, o, self._link.usd)

    # ----- what the account holds -----

    def open_orders(self) -> list[Order]:
        self._load()
        got = self._read(limits.PENDING_ORDERS, lambda: self._ex.fetch_open_orders())
        out = []
        for o in got:
            info = o.get("info") or {}
            cid = o.get("clientOrderId") or ""
            watched = self._poller.tracked.get(cid)  # an order of ours still working: what it was for
            sent = watched.order if watched is not None else None
            out.append(Order(cid, sent.signal_id if sent else "", sent.kind if sent else "open", self.market,
                             self._symbol(info.get("instId", "")), o.get("side") or "",
                             float(o.get("remaining") or o.get("amount") or 0), float(o.get("price") or 0),
                             int(o.get("timestamp") or 0)))
        return out

    def balances(self) -> dict[str, float]:
        self._load()
        got = self._read(limits.BALANCES, lambda: self._ex.fetch_balance())
        return {ccy: float(v) for ccy, v in (got.get("total") or {}).items() if v is not None}

    def positions(self) -> dict[tuple[str, str], float]:
        """Spot holdings: each currency but the quote, as a position in it against the quote."""
        return {(self.market, self._symbol(f"{ccy}-{self.quote}")): qty
                for ccy, qty in self.balances().items() if ccy != self.quote and qty}

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
        return Instrument(self.market, self._symbol(inst), float(info.get("lotSz") or m["precision"]["amount"]),
                          float(info.get("tickSz") or m["precision"]["price"]),
                          float(info.get("minSz") or m["limits"]["amount"]["min"] or 0))

    # ----- plumbing -----

    def _load(self) -> dict[str, dict]:
        if self._markets is None:
            got = self._read(limits.MARKETS, lambda: self._ex.load_markets())
            self._markets = {m["id"]: m for m in got.values() if m.get("spot") and m.get("active") is not False}
        return self._markets

    def _inst(self, symbol: str) -> str:
        return self._to_inst.get(symbol, symbol)

    def _symbol(self, inst: str) -> str:
        return self._to_symbol.get(inst, inst)

    def _paced(self, costs: limits.Costs, call: Callable[[], T]) -> T:
        """One request inside OKX's limits. A refusal for the rate (someone else sharing the
        account, or a limit OKX lowered) is retried after a window; VenueDown if it persists
        or if the venue cannot be reached."""
        for attempt in range(self.rate_limit_retries + 1):
            try:
                with self.pacer.slot(costs):
                    return call()
            except ccxt.RateLimitExceeded:
                if attempt == self.rate_limit_retries:
                    raise VenueDown(f"{self._where} keeps refusing requests for their rate") from None
                time.sleep(limits.WINDOW_S)
            except ccxt.NetworkError as e:  # a timeout, a dropped connection, 5xx, 50004
                raise VenueDown(f"{self._where} did not answer: {type(e).__name__}") from None
        raise AssertionError("unreachable")

    def _read(self, costs: limits.Costs, call: Callable[[], T]) -> T:
        """A request that only asks: any error in the answer means it could not be asked."""
        try:
            return self._paced(costs, call)
        except ccxt.BaseError as e:
            raise VenueDown(f"{self._where} could not be asked: {type(e).__name__}: {e}") from None

