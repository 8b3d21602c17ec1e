"""The faults a test or a demo asks of the simulated gateway, and the knobs of its
behaviour (latency, partial fills, refusals). Plain counters and flags: the sessions
read them as each request arrives, so a change takes effect on the next one."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    latency_ms: float = 0.0  # before answering each request
    partial: float | None = None  # fill this fraction of each order, the rest stays working
    reject: set[str] = field(default_factory=set)  # symbols whose orders are refused (error 201)
    drop_orders: int = 0  # the next N orders: accepted and filled, then the socket drops before any answer
    error_103: int = 0  # the next N orders: accepted and filled, then answered only by error 103
    refuse_first: int = 0  # the next N connections are closed at once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str) -> bool:
        """Use up one of a counted fault; True if it applies to this occasion."""
        with self.lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False
