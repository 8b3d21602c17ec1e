"""OKX's dead man's switch (``cancel-all-after``) kept armed while the worker is alive.

A thread of its own (never the decision path) calls ``cancel-all-after`` about once a
second (OKX takes one a second) with the configured ``timeOut``, as long as the dataflow
shows signs of life: its control source is polled by Bytewax many times a second
(``Pulse.beat``). A worker that freezes (its loop stuck, the process stopped) stops
beating, the refreshes stop, and OKX cancels every working order ``timeOut`` seconds
after the last one: a frozen Apex leaves no working order behind. When the pulse comes
back, so do the refreshes.
"""

from __future__ import annotations

import logging
import threading
import time

from connectors.venues import VenueDown

log = logging.getLogger("apex.okx")
EVERY_S = 1.0  # OKX's own limit: one request a second


class Pulse:
    """When the dataflow last showed it is alive (monotonic seconds)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last


class DeadMansSwitch:
    def __init__(self, venue, timeout_s: int, pulse: Pulse, every_s: float = EVERY_S):
        """``venue``: an ``OkxVenue``; ``timeout_s``: 10 to 120."""
        self.venue, self.timeout_s, self.pulse, self.every_s = venue, timeout_s, pulse, every_s
        self.refreshed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apex-okx-dead-man", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.every_s):
            # stale past a third of the countdown: the worker is not healthy, let OKX's run out
            if self.pulse.age() > self.timeout_s / 3:
                continue
            try:
                self.venue.cancel_all_after(self.timeout_s)
                self.refreshed += 1
                if failing:
                    log.warning("OKX cancel-all-after armed again")
                failing = False
            except (VenueDown, OSError) as e:
                if not failing:
                    log.warning("OKX cancel-all-after could not be refreshed: %s (tried every second)", e)
                failing = True

    def stop(self) -> None:
        self._stop.set()
