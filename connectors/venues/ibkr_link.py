"""The IBKR venue's connection, kept up from the loop: one task connects (and catches the
venue up with IB through ``sync``) whenever the socket is down, with growing pauses
between attempts, so that no caller ever connects itself: a call waits for the link
to be up, bounded, and a submit on a dropped link answers at once instead of paying
for a reconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from connectors.venues import VenueDown
from connectors.venues.ibkr_loop import Changes

log = logging.getLogger("connectors.venues.ibkr")


class Link:
    def __init__(self, ib: Any, host: str, port: int, client_id: int, account: str, connect_timeout: float,
                 backoff: tuple[float, float], sync: Callable[[], Awaitable[None]], changes: Changes):
        """``sync``: asks IB what it holds after each connect (raises ``VenueDown``);
        ``backoff``: the first and the longest pause between attempts."""
        self.ib, self.host, self.port, self.client_id, self.account = ib, host, port, client_id, account
        self.connect_timeout, self.backoff, self.sync, self.changes = connect_timeout, backoff, sync, changes
        self.synced = False  # caught up with IB since the last connect
        self.closing = False
        self.failures = 0  # attempts failed so far: a waiter gives up on the first failed after it came
        self.last_failure = ""
        self.drops = 0  # sockets lost so far: a batch knows whether one dropped under it, whatever came since
        self._task: asyncio.Task | None = None  # held: the loop keeps only a weak reference
        self._wake = asyncio.Event()  # cuts a pause short: someone is waiting for the link
        ib.disconnectedEvent += self._on_disconnect

    def up(self) -> bool:
        return self.synced and self.ib.isConnected()

    async def ready(self, deadline: float) -> None:
        """Returns once the link is up; ``VenueDown`` if an attempt made meanwhile fails,
        or at ``deadline`` (the loop's clock)."""
        if self.up():
            return
        seen = self.failures
        self.keep()
        await self.changes.until(lambda: self.up() or self.failures > seen or self.closing, deadline)
        if not self.up():
            why = self.last_failure if self.failures > seen else "not connected yet"
            raise VenueDown(f"IB gateway at {self.host}:{self.port}: {why}")

    def keep(self) -> None:
        """Connect now (or soon) if down."""
        if self.closing:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            self._wake.set()

    async def _run(self) -> None:
        delay = self.backoff[0]
        while not self.closing and not self.up():
            try:
                await self._connect()
            except VenueDown as e:
                self.failures, self.last_failure = self.failures + 1, str(e)
                self.changes.notify()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, self.backoff[1])

    async def _connect(self) -> None:
        if not self.ib.isConnected():
            try:
                await self.ib.connectAsync(self.host, self.port, self.client_id, timeout=self.connect_timeout,
                                           account=self.account)
            except Exception as e:  # refused, no answer, or dropped during the start-up sync
                raise VenueDown(f"unreachable ({type(e).__name__})") from None
        await self.sync()
        self.synced = True
        log.info("IB gateway at %s:%s: connected as client %s, orders and executions asked again",
                 self.host, self.port, self.client_id)
        self.changes.notify()

    def _on_disconnect(self) -> None:
        was_up, self.synced = self.synced, False
        self.drops += 1
        self.changes.notify()  # whoever waits on an answer from this socket stops waiting
        if self.closing:
            return
        if was_up:
            log.warning("IB gateway at %s:%s: connection lost, reconnecting", self.host, self.port)
        self.keep()

    async def close(self) -> None:
        self.closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.ib.disconnect()
        self.changes.notify()
