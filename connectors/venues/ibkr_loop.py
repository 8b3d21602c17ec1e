"""An asyncio loop on a thread of its own, for a client library that is asynchronous
behind a venue interface that is not: the Bytewax worker calls plain methods, and each
runs its coroutine here and waits for it, bounded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.ended = False  # closed: nothing more runs here (the loop may not have started yet otherwise)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """The coroutine's result; ``TimeoutError`` (the coroutine cancelled) past ``timeout``;
        ``ConnectionError`` once the loop has ended (a call racing the venue's close)."""
        if self.ended or self.loop.is_closed():
            coro.close()  # never to run: closed now, or it warns "never awaited" when collected
            raise ConnectionError("the venue's connection is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop closed between the look and the call
            coro.close()
            raise ConnectionError("the venue's connection is closed") from None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            if self.ended and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()  # the loop stopped before it ever ran: nothing else will
            raise TimeoutError from None

    def on_it(self) -> bool:
        """Whether the caller runs on the loop's own thread (where waiting on it would hang)."""
        return threading.current_thread() is self._thread

    def close(self, timeout: float = 0.5) -> None:
        if not self.loop.is_running():
            return
        self.ended = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class Changes:
    """Wakes the coroutines waiting on a condition each time something they read may
    have changed (an event from IB, a connection won or lost), so that a wait is a
    condition checked on news, never a loop that sleeps and looks again. Loop-only."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # the next waiters wait for the next news

    async def until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Whether ``done()`` came true before ``deadline`` (the loop's clock)."""
        loop = asyncio.get_running_loop()
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                return done()
        return True
