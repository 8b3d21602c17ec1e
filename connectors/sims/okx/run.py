"""Starting the simulator: ``serve`` blocks until SIGINT or SIGTERM (the command line),
``running`` runs it in a thread of its own for the length of a ``with`` block (tests), and
the ``SimServer`` it yields sets prices, balances, fills and faults in-process."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from connectors.sims.okx.control import add_routes, stats
from connectors.sims.okx.prices import DEFAULT_STREAM, PriceFollower
from connectors.sims.okx.server import Sim, make_app
from connectors.sims.okx.state import Book
from connectors.sims.okx.ws import Credentials

Prices = dict[str, float] | str | Path | None


def load_prices(prices: Prices) -> dict[str, float] | None:
    """A mapping of instId to last price, given as one or as a JSON file holding one.
    Raises ValueError saying what is wrong with it."""
    if prices is None or isinstance(prices, dict):
        doc: object = prices
    else:
        try:
            doc = json.loads(Path(prices).read_text())
        except OSError as e:
            raise ValueError(f"{prices}: {e.strerror}") from None
        except ValueError:
            raise ValueError(f"{prices}: not JSON") from None
    if doc is None:
        return None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{prices}: must be a JSON object of instId to price, like {{\"BTC-USDT\": 100.0}}")
    out = {}
    for inst, px in doc.items():
        parts = str(inst).split("-")
        if len(parts) != 2 or not all(parts) or isinstance(px, bool) or not isinstance(px, (int, float)) or px <= 0:
            raise ValueError(f"{prices}: {inst!r}: {px!r} is not an instId like BTC-USDT with a price above 0")
        out[str(inst)] = float(px)
    return out


def _follower(sim: Sim, redis_url: str | None, price_stream: str) -> PriceFollower | None:
    return PriceFollower(sim.book, redis_url, price_stream).start() if redis_url else None


def _sim(latency_ms: float, orders_log: str | Path | None, state_file: str | Path | None, prices: Prices,
         balances: dict[str, float] | None, hang_s: float, clock: Callable[[], float] = time.monotonic,
         credentials: Credentials | None = None) -> Sim:
    book = Book(load_prices(prices), balances, orders_log=orders_log, state_file=state_file)
    return Sim(book, latency_ms=latency_ms, hang_s=hang_s, clock=clock, credentials=credentials)


async def _start(sim: Sim, host: str, port: int) -> tuple[web.AppRunner, str]:
    sim.stopping = asyncio.Event()
    runner = web.AppRunner(make_app(sim, add_routes), handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host  # an IPv6 address, bracketed in a URL
    return runner, f"http://{shown}:{bound_port}"


async def _stop(sim: Sim, runner: web.AppRunner) -> None:
    assert sim.stopping is not None
    sim.stopping.set()  # a hanging answer ends now, not after its hang
    await sim.sockets.close_all()  # an open socket would hold the shutdown until its timeout
    await runner.cleanup()
    sim.book.save()
    sim.swaps.save()


def serve(host: str, port: int, *, latency_ms: float = 0.0, orders_log: str | Path | None = None,
          state_file: str | Path | None = None, prices: Prices = None, balances: dict[str, float] | None = None,
          hang_s: float = 30.0, redis_url: str | None = None, price_stream: str = DEFAULT_STREAM,
          ready: Callable[[str], None] | None = None, credentials: Credentials | None = None) -> None:
    """Runs until SIGINT or SIGTERM, then stops cleanly (state saved). ``ready`` is told the
    base URL once it listens. ``redis_url``: follow last prices on that Redis's
    ``price_stream``. ``credentials``: what a WebSocket login and a private REST request must
    show (None: any key, passphrase and signature, every header still required).
    Raises OSError if it cannot listen, ValueError for bad prices, and redis's errors if
    Redis does not answer."""
    sim = _sim(latency_ms, orders_log, state_file, prices, balances, hang_s, credentials=credentials)
    follower = _follower(sim, redis_url, price_stream)

    async def main() -> None:
        runner, url = await _start(sim, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(url)
        try:
            await stop.wait()
        finally:
            await _stop(sim, runner)

    try:
        asyncio.run(main())
    finally:
        if follower is not None:
            follower.stop()


class SimServer:
    """A simulator in a background thread, and its controls for the test that runs it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0,
                 orders_log: str | Path | None = None, state_file: str | Path | None = None, prices: Prices = None,
                 balances: dict[str, float] | None = None, hang_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, redis_url: str | None = None,
                 price_stream: str = DEFAULT_STREAM, credentials: Credentials | None = None):
        """``clock``: what the rate limits count time by (a test may stop it, to send more than
        a limit allows in one window however slowly its requests go). ``redis_url``: follow
        last prices on that Redis's ``price_stream``. ``credentials``: what a WebSocket login
        and a private REST request must show (None: any, every header still required)."""
        self.sim = _sim(latency_ms, orders_log, state_file, prices, balances, hang_s, clock, credentials)
        self.redis_url, self.price_stream = redis_url, price_stream
        self._follower: PriceFollower | None = None
        self.host, self.port = host, port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SimServer:
        started = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner, self.url = loop.run_until_complete(_start(self.sim, self.host, self.port))
            except BaseException as e:  # handed to the caller of start
                failed.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(_stop(self.sim, self._runner))
            loop.close()

        self._thread = threading.Thread(target=run, name="okx-sim", daemon=True)
        self._thread.start()
        started.wait()
        if failed:
            raise failed[0]
        try:
            self._follower = _follower(self.sim, self.redis_url, self.price_stream)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    # ----- controls -----

    def arm(self, kind: str, *, times: int = 1, paths: tuple[str, ...] | str = ("trade/order", "trade/batch-orders"),
            accept: bool = True, status: int = 503, code: str = "51008",
            msg: str = "Order failed. Insufficient balance") -> None:
        """The next ``times`` requests to ``paths`` meet this fault (see ``faults``)."""
        self.sim.faults.arm(kind, times=times, paths=paths, accept=accept, status=status, code=code, msg=msg)

    def clear_faults(self) -> None:
        self.sim.faults.clear()

    def set_price(self, inst: str, price: float, volume: float = 0.0) -> None:
        self.sim.book.set_price(inst, price, volume)

    def set_balance(self, ccy: str, amount: float) -> None:
        self.sim.book.set_balance(ccy, amount)

    def set_fill_ratio(self, ratio: float) -> None:
        self.sim.book.set_fill_ratio(ratio)

    def fund(self, rate: float | None = None, inst: str = "") -> list[dict]:
        """Funding at ``rate`` (None: the current one) for every open swap position (of ``inst``
        only): the bills written."""
        return self.sim.swaps.fund(rate, inst)

    def set_depth(self, **depth: float) -> None:
        """The book drawn around each last price (``Depth``'s fields: half_spread_bps,
        step_bps, levels, level_notional; those omitted keep their defaults)."""
        from connectors.sims.okx.control import depth as parse

        self.sim.book.set_depth(parse(depth))

    def set_latency(self, latency_ms: float) -> None:
        self.sim.latency_ms = latency_ms

    def skew_clock(self, seconds: float) -> None:
        self.sim.clock_skew_s = float(seconds)

    def drop_sockets(self, refuse: bool = False) -> None:
        """Cuts every open WebSocket; new ones are refused while ``refuse`` holds (call
        again with False to let them in)."""
        self.sim.sockets.drop(refuse)

    def sockets(self) -> dict:
        """Open sockets, how many logged in and subscribed, logins accepted and refused."""
        return self.sim.sockets.stats()

    def placements(self) -> dict[str, int]:
        """How many times each clOrdId arrived in a placement request, taken or not."""
        return self.sim.placements()

    def stats(self) -> dict:
        """``accepted``: orders taken; ``rate_limited``: requests refused with 50011;
        ``requests``: how many of each ("GET trade/order") arrived, refused or not."""
        return stats(self.sim)


@contextmanager
def running(host: str = "127.0.0.1", port: int = 0, **options) -> Iterator[SimServer]:
    """A simulator listening for the ``with`` block; ``.url`` is its base URL (port 0: a free one)."""
    server = SimServer(host, port, **options).start()
    try:
        yield server
    finally:
        server.stop()
