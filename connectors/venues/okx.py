"""OKX spot through the real ccxt client, behind the venue interface.

Orders leave in batches (``trade/batch-orders``, at most 20 a request), and each one's fate
is then asked by its client order id until it is filled or refused, up to a bound: what a
market order leaves unfilled by then is cancelled, and what filled is its fill.

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

from connectors.venues import CANCELLED, FILLED, REJECTED, Ack, Instrument, OrderUpdate, Rejected, VenueDown
from connectors.venues import okx_limits as limits
from connectors.venues import okx_records as records
from connectors.venues.okx_records import MAYBE_PLACED, TERMINAL
from operators.fill import Fill
from operators.orders import Order

T = TypeVar("T")


class OkxVenue:
    name = "okx"

    def __init__(self, *, url: str | None = None, sandbox: bool = False, api_key: str = "", secret: str = "",
                 passphrase: str = "", timeout_ms: int = 5000, fill_wait_s: float = 2.0,
                 poll_interval_s: float = 0.02, market: str = "okx", market_map: Mapping[str, str] | None = None,
                 quote: str = "USDT", rate_limit_retries: int = 3, pacer: limits.Pacer | None = None):
        """``url``: None for OKX itself, else the base URL of a stand-in (a simulator).
        ``sandbox``: OKX's demo trading. ``fill_wait_s``: how long an order's fate is awaited
        before what is left unfilled is cancelled. ``market``: the market signals name for
        this venue; ``market_map``: a signal's symbol to OKX's instId where they differ."""
        ex = ccxt.okx({"apiKey": api_key, "secret": secret, "password": passphrase, "timeout": timeout_ms,
                       "enableRateLimit": False})  # the pacer keeps OKX's own limits instead
        if sandbox:
            ex.set_sandbox_mode(True)
        if url:
            ex.urls["api"]["rest"] = url.rstrip("/")  # after the sandbox switch, which replaces the URLs
        ex.options["fetchMarkets"] = {"types": ["spot"]}
        ex.has["fetchCurrencies"] = False  # a private call per load that nothing here needs
        self._ex = ex
        self._where = url or ("OKX demo trading" if sandbox else "OKX")
        self.fill_wait_s, self.poll_interval_s = fill_wait_s, poll_interval_s
        self.market, self.quote = market, quote
        self._to_inst = dict(market_map or {})
        self._to_symbol = {v: k for k, v in self._to_inst.items()}
        self.rate_limit_retries = rate_limit_retries
        self.pacer = pacer or limits.Pacer()
        self._markets: dict[str, dict] | None = None  # by instId
        self._sent: dict[str, Order] = {}  # by client order id: what this process sent
        self._tracked: dict[str, tuple[str, float]] = {}  # submitted, not yet final: last (status, filled) told
        self._updates: list[OrderUpdate] = []

    def __repr__(self) -> str:
        return f"OkxVenue({self._where})"

    # ----- placing -----

    def place_many(self, orders: list[Order]) -> list[Fill | Rejected]:
        """Sends, then awaits each order's fate (see the module's docstring)."""
        fates, placed = self._place(orders)
        settled = self._settle({cid: orders[i] for i, cid in placed})
        return [fates[i] if i in fates else settled[o.client_order_id] for i, o in enumerate(orders)]

    def submit(self, orders: list[Order]) -> list[Ack]:
        fates, placed = self._place(orders)
        acks = []
        for i, order in enumerate(orders):
            cid = order.client_order_id
            if i in fates:
                acks.append(Ack(cid, False, str(fates[i])))
                self._updates.append(OrderUpdate(cid, REJECTED, None, str(fates[i])))
            else:
                acks.append(Ack(cid, True))
                self._tracked[cid] = ("", 0.0)
        return acks

    def updates(self) -> list[OrderUpdate]:
        for cid in list(self._tracked):
            order = self._sent[cid]
            o = self._fetch(order)
            if o is None:
                continue  # not visible yet; asked again on the next call
            status, filled = records.status(o), records.filled(o)
            if (status, filled) == self._tracked[cid]:
                continue
            fill = records.fill(order, o, self._usd) if filled > 0 else None
            reason = "cancelled with nothing filled" if status == CANCELLED and fill is None else ""
            self._updates.append(OrderUpdate(cid, status, fill, reason))
            if status in (FILLED, CANCELLED, REJECTED):
                del self._tracked[cid]
            else:
                self._tracked[cid] = (status, filled)
        out, self._updates = self._updates, []
        return out

    def _place(self, orders: list[Order]) -> tuple[dict[int, Rejected], list[tuple[int, str]]]:
        """Sends what can be sent. Returns the refusals by position and the (position, client
        order id) of every order the venue holds; raises VenueDown if one may or may not."""
        markets = self._load()
        fates: dict[int, Rejected] = {}
        sendable: list[int] = []
        for i, order in enumerate(orders):
            reason = self._unsendable(order, markets)
            if reason:
                fates[i] = Rejected(reason)
            else:
                sendable.append(i)
                self._sent[order.client_order_id] = order
        maybe: list[int] = []
        for start in range(0, len(sendable), limits.BATCH_MAX):
            chunk = sendable[start:start + limits.BATCH_MAX]
            for i, refusal in self._send([orders[i] for i in chunk]).items():
                idx = chunk[i]
                if refusal is None:
                    maybe.append(idx)
                elif refusal:
                    fates[idx] = Rejected(refusal)
        placed = [(i, orders[i].client_order_id) for i in sendable if i not in fates and i not in maybe]
        for i in maybe:  # an unknown outcome is asked, never sent again
            if self._fetch(orders[i]) is None:
                raise VenueDown(f"order {orders[i].client_order_id} may not have reached {self._where}:"
                                " ask again later")
            placed.append((i, orders[i].client_order_id))
        return fates, placed

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

    def _send(self, chunk: list[Order]) -> dict[int, str | None]:
        """One batch request. By position: "" taken, a reason refused, None maybe placed."""
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
            out: dict[int, str | None] = {}
            for n, (cid, code, msg) in enumerate(per):
                i = pos.get(cid, n)
                out[i] = None if code == MAYBE_PLACED else f"okx {code}: {msg}"
            return {i: out.get(i) for i in range(len(chunk))}
        out = {pos.get(a.get("clientOrderId") or "", n): records.refusal(a) for n, a in enumerate(answers)}
        return {i: out.get(i) for i in range(len(chunk))}

    # ----- learning fates -----

    def _settle(self, pending: dict[str, Order]) -> dict[str, Fill | Rejected]:
        """Each order's fate, asked until final or the bound; then the rest is cancelled."""
        out: dict[str, Fill | Rejected] = {}
        deadline = time.monotonic() + self.fill_wait_s
        left = list(pending)
        while left:
            still = []
            for cid in left:
                o = self._fetch(pending[cid])
                if o is not None and o.get("status") in TERMINAL:
                    out[cid] = records.fate(pending[cid], o, self._usd)
                else:
                    still.append(cid)
            left = still
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval_s)
        for cid in left:
            out[cid] = self._finish(pending[cid])
        return out

    def _finish(self, order: Order) -> Fill | Rejected:
        """Cancels what is left of an order, then its fate: the part filled, or a refusal."""
        self._cancel(order)
        o = self._fetch(order)
        if o is None or o.get("status") not in TERMINAL:
            raise VenueDown(f"order {order.client_order_id} is still open at {self._where}")
        return records.fate(order, o, self._usd)

    def lookup(self, order: Order) -> Fill | None:
        """Asked by client order id under the order's instrument (OKX asks for one). An
        order still open is finished first, as ``place_many`` would have after its bound."""
        o = self._fetch(order)
        if o is None:
            return None
        fate = records.fate(order, o, self._usd) if o.get("status") in TERMINAL else self._finish(order)
        if isinstance(fate, Rejected):
            raise fate
        return fate

    def _fetch(self, order: Order) -> dict | None:
        """OKX's record of the order, None if it has none."""
        inst = self._inst(order.symbol)
        symbol = self._load()[inst]["symbol"]
        try:
            return self._paced(limits.get_order(inst), lambda: self._ex.fetch_order(
                None, symbol, {"clientOrderId": order.client_order_id}))
        except ccxt.OrderNotFound:
            return None
        except ccxt.ExchangeError as e:
            raise VenueDown(f"{self._where} could not say what became of {order.client_order_id}: {e}") from None

    def _cancel(self, order: Order) -> None:
        inst = self._inst(order.symbol)
        symbol = self._load()[inst]["symbol"]
        try:
            self._paced(limits.cancel(inst), lambda: self._ex.cancel_order(
                None, symbol, {"clientOrderId": order.client_order_id}))
        except (ccxt.OrderNotFound, ccxt.InvalidOrder):
            pass  # finished meanwhile: its record says how
        except ccxt.ExchangeError as e:
            raise VenueDown(f"{self._where} could not cancel {order.client_order_id}: {e}") from None

    def _usd(self, ccy: str) -> float:
        """The last price of a coin in the quote currency, taken as USD (a fee paid in OKB)."""
        inst = f"{ccy}-{self.quote}"
        if inst not in self._load():
            return 0.0
        ticker = self._read({}, lambda: self._ex.fetch_ticker(self._markets[inst]["symbol"]))  # type: ignore[index]
        return float(ticker.get("last") or 0)

    # ----- what the account holds -----

    def open_orders(self) -> list[Order]:
        self._load()
        got = self._read(limits.PENDING_ORDERS, lambda: self._ex.fetch_open_orders())
        out = []
        for o in got:
            info = o.get("info") or {}
            cid = o.get("clientOrderId") or ""
            sent = self._sent.get(cid)
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

