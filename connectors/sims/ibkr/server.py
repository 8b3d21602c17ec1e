"""The simulated gateway's listening side: one session per client, a blocking ``serve``
for the command line and ``running`` for tests, which serves from a thread of its own
and hands back a ``Control`` to move prices and cause faults while clients talk to it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from connectors.sims.ibkr import messages as m
from connectors.sims.ibkr.faults import Faults
from connectors.sims.ibkr.price_feed import PriceFeed
from connectors.sims.ibkr.session import Session
from connectors.sims.ibkr.state import SimExecution, SimOrder, SimState

DEFAULT_ACCOUNT = "DU1234567"
DEFAULT_CASH = 1_000_000.0
PRICES_STREAM = "argus:prices:stream"  # the pipeline's default price stream


class Gateway:
    def __init__(self, state: SimState, faults: Faults, account: str):
        self.state, self.faults, self.account = state, faults, account
        self.sessions: set[Session] = set()
        self.server: asyncio.base_events.Server | None = None
        self.refusing = False
        self.clock_skew_s = 0.0  # reqCurrentTime's answer is this far from this machine's clock

    async def listen(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._connected, host, port, reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing or self.faults.take("refuse_first"):
            writer.transport.abort()
            return
        session = Session(self, reader, writer)
        self.sessions.add(session)
        await session.run()

    def summary(self) -> dict[str, float]:
        _, _, held, cash = self.state.snapshot()
        value = sum(q * (self.state.price(s) or a) for s, (q, a) in held.items())
        return {"TotalCashValue": round(cash, 2), "SettledCash": round(cash, 2),
                "AvailableFunds": round(cash, 2), "BuyingPower": round(cash, 2),
                "NetLiquidation": round(cash + value, 2)}

    def push_account(self, *symbols: str) -> None:
        """Subscribers hear the new cash and positions after a fill, as from TWS."""
        _, _, held, _ = self.state.snapshot()
        for s in list(self.sessions):
            if s.account_updates:
                s.send(*s.account_values(), m.account_time())
            if s.position_updates:
                s.send(*(m.position(self.account, sym, *held.get(sym, [0.0, 0.0])) for sym in symbols))

    def fill_open(self, symbol: str | None = None) -> int:
        """Fill what rests of every working order (of one symbol), as the market would;
        owners connected now hear it live, others find it when they ask. How many filled."""
        orders, *_ = self.state.snapshot()
        count, symbols = 0, set()
        for o in orders:
            if o.done or (symbol and o.symbol != symbol):
                continue
            price = self.state.price(o.symbol) or o.avg_price
            ex = self.state.execute(o, o.remaining, price)
            frames = [m.order_status(o, price), m.exec_details(-1, ex), m.commission_report(ex)]
            for s in self._owners(o):
                s.order_filled_later(o, frames)
            count += 1
            symbols.add(o.symbol)
        self.push_account(*symbols)
        return count

    def _owners(self, o: SimOrder) -> list[Session]:
        return [s for s in self.sessions if s.client_id == o.client_id]

    def drop_all(self) -> None:
        for s in list(self.sessions):
            s.drop()


async def _serve(gw: Gateway, host: str, port: int, ready: Callable[[int], None] | None, stop: asyncio.Event,
                 stop_signals: tuple[int, ...] = ()) -> None:
    for sig in stop_signals:  # a stop between two requests, never an exception inside one
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    bound = await gw.listen(host, port)
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
    finally:
        assert gw.server is not None
        gw.server.close()
        gw.drop_all()


def _gateway(*, account: str, cash: float, orders_log: str | Path | None, state_file: str | Path | None,
             prices: dict[str, float] | str | Path | None, faults: Faults | None) -> Gateway:
    if isinstance(prices, (str, Path)):
        prices = {k: float(v) for k, v in json.loads(Path(prices).read_text()).items()}
    state = SimState(cash=cash, prices=prices, state_file=state_file, orders_log=orders_log)
    return Gateway(state, faults or Faults(), account)


def serve(host: str = "127.0.0.1", port: int = 4002, *, latency_ms: float = 0.0,
          orders_log: str | Path | None = None, state_file: str | Path | None = None,
          prices: dict[str, float] | str | Path | None = None, account: str = DEFAULT_ACCOUNT,
          cash: float = DEFAULT_CASH, faults: Faults | None = None, redis_url: str | None = None,
          prices_stream: str = PRICES_STREAM, on_ready: Callable[[int], None] | None = None,
          stop_signals: tuple[int, ...] = (), clock_skew_s: float = 0.0) -> None:
    """Serve until one of ``stop_signals`` arrives (then return) or until interrupted
    (KeyboardInterrupt propagates). ``on_ready`` is told the port once it listens."""
    faults = faults or Faults()
    faults.latency_ms = latency_ms
    gw = _gateway(account=account, cash=cash, orders_log=orders_log, state_file=state_file, prices=prices,
                  faults=faults)
    gw.clock_skew_s = clock_skew_s
    feed = PriceFeed(gw.state, redis_url, prices_stream).start() if redis_url else None
    try:
        asyncio.run(_serve(gw, host, port, on_ready, asyncio.Event(), stop_signals))
    finally:
        if feed is not None:
            feed.stop()


class Control:
    """A test's handle on a running simulator, safe to use from the test's thread."""

    def __init__(self, gw: Gateway, loop: asyncio.AbstractEventLoop, host: str, port: int):
        self._gw, self._loop, self.host, self.port = gw, loop, host, port
        self.faults = gw.faults

    def _call(self, fn, *args):
        async def run():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def set_price(self, symbol: str, price: float) -> None:
        self._gw.state.set_price(symbol, price)

    def price(self, symbol: str) -> float | None:
        return self._gw.state.price(symbol)

    def skew_clock(self, seconds: float) -> None:
        """The gateway's clock set ``seconds`` from this machine's (reqCurrentTime says so)."""
        self._gw.clock_skew_s = float(seconds)

    def refuse_connections(self, refusing: bool = True) -> None:
        """Stop listening (a client's connect is refused at once) and drop who is connected;
        ``False`` listens again on the same port."""
        self._gw.refusing = refusing
        if refusing:
            self._call(self._gw.drop_all)
        asyncio.run_coroutine_threadsafe(self._relisten(refusing), self._loop).result(10)

    async def _relisten(self, refusing: bool) -> None:
        gw = self._gw
        if refusing and gw.server is not None:
            gw.server.close()
            await gw.server.wait_closed()
        elif not refusing and (gw.server is None or not gw.server.is_serving()):
            await gw.listen(self.host, self.port)

    def drop_connections(self) -> None:
        self._call(self._gw.drop_all)

    def fill_open(self, symbol: str | None = None) -> int:
        return self._call(self._gw.fill_open, symbol)

    def connected_clients(self) -> int:
        return len(self._gw.sessions)

    def orders(self) -> list[SimOrder]:
        return self._gw.state.snapshot()[0]

    def executions(self) -> list[SimExecution]:
        return self._gw.state.snapshot()[1]


@contextmanager
def running(host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0,
            orders_log: str | Path | None = None, state_file: str | Path | None = None,
            prices: dict[str, float] | str | Path | None = None, account: str = DEFAULT_ACCOUNT,
            cash: float = DEFAULT_CASH, redis_url: str | None = None,
            prices_stream: str = PRICES_STREAM) -> Iterator[Control]:
    """The simulator on a thread of its own; port 0 picks a free one (``control.port``)."""
    faults = Faults(latency_ms=latency_ms)
    gw = _gateway(account=account, cash=cash, orders_log=orders_log, state_file=state_file, prices=prices,
                  faults=faults)
    loop = asyncio.new_event_loop()
    ready, bound = threading.Event(), []  # type: ignore[var-annotated]
    stop_holder: list[asyncio.Event] = []

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def go() -> None:
            stop = asyncio.Event()
            stop_holder.append(stop)
            await _serve(gw, host, port, lambda p: (bound.append(p), ready.set()), stop)
        loop.run_until_complete(go())
        loop.close()

    thread = threading.Thread(target=main, name="ibkr-sim", daemon=True)
    thread.start()
    feed = PriceFeed(gw.state, redis_url, prices_stream).start() if redis_url else None
    if not ready.wait(10):
        raise RuntimeError("the IBKR simulator did not start")
    try:
        yield Control(gw, loop, host, bound[0])
    finally:
        if feed is not None:
            feed.stop()
        loop.call_soon_threadsafe(stop_holder[0].set)
        thread.join(10)
