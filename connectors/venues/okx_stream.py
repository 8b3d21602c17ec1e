"""OKX's own word on each order change, pushed on its private WebSocket: ccxt pro's
``watch_orders`` (the ``orders`` channel, spot) on the venue's asyncio loop (``okx_io``).

While the channel is subscribed, the stream is "up" and every change it hears is handed
to the sink (the poller's registry of orders being watched); the order lists are then
not asked. When the socket drops, the login is refused or anything else fails, the sink
is told the stream is down (the poller asks the order lists meanwhile), and a fresh
client tries again after a pause that doubles up to ``retry_max_s``. OKX pushes nothing
at subscription, so each time the channel comes up the sink takes one look at the lists
for what changed while it was down.

Nothing here ever logs or raises the credentials: errors are named by their type and
OKX's code, and any text is scrubbed of them first."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import ccxt.pro

from connectors.venues.okx_io import Io, quietly_close

log = logging.getLogger(__name__)

# OKX takes 3 new connections a second from one address: the first retries stay under it
FIRST_RETRY_S = 0.35


class Sink(Protocol):
    def streaming(self, up: bool) -> None: ...

    def observe(self, orders: list[dict]) -> None:
        """ccxt's parsed orders, as pushed."""
        ...


class _Client(ccxt.pro.okx):
    """ccxt pro's OKX, telling when OKX confirms the ``orders`` subscription (ccxt itself
    only learns of a subscription when the first push arrives)."""

    subscribed: Callable[[], None] | None = None

    def handle_subscription_status(self, client, message):  # noqa: ANN001 - ccxt's signature
        arg = message.get("arg") if isinstance(message, dict) else None
        if isinstance(arg, dict) and arg.get("channel") == "orders" and self.subscribed is not None:
            self.subscribed()
        return super().handle_subscription_status(client, message)


class Stream:
    def __init__(self, options: dict, sink: Sink, markets: Callable[[], object], scrub: Callable[[str], str],
                 io: Callable[[], Io], *, ws_url: str | None, sandbox: bool, retry_max_s: float = 5.0,
                 inst_type: str = "SPOT"):
        """``options``: the ccxt client's options (credentials, timeout). ``markets``: a
        ccxt client whose markets are loaded, lent to each new client (which then asks
        for none). ``io``: the venue's loop, where the conversation runs. ``ws_url``: OKX's
        WebSocket base (``…/ws/v5``), None for OKX's own."""
        self.options, self.sink, self.markets, self.scrub, self.io = options, sink, markets, scrub, io
        self.ws_url, self.sandbox, self.retry_max_s = ws_url, sandbox, retry_max_s
        self.inst_type = inst_type  # the orders channel's instType: SPOT, or SWAP in swap mode
        self.lock = threading.Lock()
        self.running: concurrent.futures.Future | None = None
        self.stopping = False
        self.failures = 0  # attempts in a row that failed (the loop's thread only)

    def start(self) -> None:
        """Connects in the background (once; later calls do nothing, and none after ``close``)."""
        with self.lock:
            if self.running is None and not self.stopping:
                self.running = self.io().spawn(self._main())

    def close(self) -> None:
        """No conversation after this; the venue's loop, closed next, ends the one going on
        (its client closed first, then its task cancelled)."""
        with self.lock:
            self.stopping = True

    def _up(self) -> None:
        self.failures = 0
        self.sink.streaming(True)

    def _client(self) -> _Client:
        ex = _Client(self.options)
        if self.sandbox:
            ex.set_sandbox_mode(True)
        if self.ws_url:
            ex.urls["api"]["ws"] = self.ws_url  # after the sandbox switch, which replaces the URLs
        ex.options["watchOrders"] = {"type": self.inst_type}
        ex.set_markets_from_exchange(self.markets())
        return ex

    async def _main(self) -> None:
        try:
            await self._converse()
        finally:
            self.sink.streaming(False)

    async def _converse(self) -> None:
        while True:
            ex: _Client | None = None
            io = self.io()
            try:
                ex = self._client()
                io.clients.append(ex)  # closed by the loop's closing if still open then
                await self._listen(ex)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever ends the conversation, the lists take over
                self.sink.streaming(False)
                self.failures += 1
                # said once when it goes down, not at every attempt to come back
                log.log(logging.WARNING if self.failures == 1 else logging.DEBUG,
                        "okx order stream down (%s); order fates are read from the order lists meanwhile",
                        self.scrub(_named(e)))
            finally:
                if ex is not None:
                    await quietly_close(ex)
                    io.clients.remove(ex)
            await asyncio.sleep(min(self.retry_max_s, FIRST_RETRY_S * 2 ** min(self.failures - 1, 16)))

    async def _listen(self, ex: _Client) -> None:
        ex.subscribed = self._up
        while True:
            orders = await ex.watch_orders()
            self.sink.observe([dict(o) for o in orders])  # copies: ccxt updates its cached records in place


def _named(e: BaseException) -> str:
    """An error by its type and OKX's code if it quotes one; never its whole text (ccxt
    quotes what OKX said, and OKX may quote the request)."""
    text = str(e)
    code = ""
    for marker in ('"code":"', '"code": "'):
        at = text.find(marker)
        if at >= 0:
            code = text[at + len(marker):].split('"', 1)[0]
            break
    return f"{type(e).__name__} {code}".strip()
