"""The OKX venue's own asyncio loop, on a thread of its own. The WebSocket's conversation
and the poller's requests run on it, so that ``close`` can cut every one of them at once:
a thread blocked in a socket read cannot be stopped, a coroutine can be cancelled.

A plain thread (the poller's) runs a ccxt asyncio client's calls here through
``OnLoop``, as if the client were the blocking one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CLOSE_S = 0.25  # how long ``close`` lets cancelled work and clients wind down before cutting them
CHECK_S = 0.1  # how often a caller waiting on the loop looks whether it was closed


class Closed(Exception):
    """The loop was closed while the call waited: nothing more is asked."""


class Io:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self.clients: list[Any] = []  # ccxt asyncio clients, closed with the loop
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, awaitable: Awaitable[T]) -> T:
        """Runs it on the loop and waits for it (its own timeout bounds it); ``Closed`` if
        the loop is closed first."""
        if self.closed:
            raise Closed
        future = self.spawn(_awaited(awaitable))
        while True:
            try:
                return future.result(CHECK_S)
            except concurrent.futures.TimeoutError:
                if self.closed:
                    future.cancel()
                    raise Closed from None
            except concurrent.futures.CancelledError:
                raise Closed from None

    def close(self) -> None:
        """Cancels everything running on the loop, closes the clients, ends the thread."""
        if self.closed:
            return
        self.closed = True
        try:
            self.spawn(self._wind_down()).result(3 * CLOSE_S)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            pass  # what did not wind down in time is cut with the loop
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not threading.current_thread():
            self.thread.join(CLOSE_S)
        if not self.thread.is_alive():
            self.loop.close()

    async def _wind_down(self) -> None:
        # the clients first, while their own tasks still run: their sockets are closed properly
        # (a socket left to a cancelled task would stay open after the loop is gone)
        for c in list(self.clients):
            await quietly_close(c)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_S)
        for _ in range(3):  # the transports closed above finish closing over the loop's next turns
            await asyncio.sleep(0)


class OnLoop:
    """A ccxt asyncio client called from a plain thread: a call that returns a coroutine
    runs on the loop and is waited for; anything else (attributes, parsing) is the client's."""

    def __init__(self, ex: Any, io: Io):
        self._ex, self._io = ex, io

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ex, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            return self._io.wait(out) if inspect.isawaitable(out) else out
        return call


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def quietly_close(ex: Any) -> None:
    """Closes a ccxt asyncio client, bounded; closing what failed has nothing left to tell."""
    try:
        await asyncio.wait_for(ex.close(), CLOSE_S)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001
        pass
