"""A stop asked of `apex run` (SIGTERM, SIGINT), caught from the command's first line.

The command loads its modules, passes the gates and wires the flow before there is a flow to
stop, and a signal in that time must not end the process where it stands: the handler is
installed first (``apex/entry.py``), notes the stop, and hands it to what can carry it out
once there is one (``then``). A stop asked before the flow runs stops it as it starts: nothing
is read, what the consumer held is still pending for its next start, and the run exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

ASKED = threading.Event()
_then: list[Callable[[], None]] = []  # what carries a stop out now: at most one, the running flow's


def _on_signal(signum, frame) -> None:
    ASKED.set()
    for stop in list(_then):
        stop()


def catch() -> None:
    """Install the handler (again: harmless)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


def then(stop: Callable[[], None] | None) -> None:
    """``stop`` carries out a stop from now on, one already asked at once; None: nothing does."""
    _then[:] = [stop] if stop is not None else []
    if stop is not None and ASKED.is_set():
        stop()


def pause(seconds: float) -> None:
    """A wait that a stop cuts short."""
    ASKED.wait(seconds)
