"""Failures a test arms on demand, each for the next few requests to a path: the ways a
real venue leaves the outcome of an order unknown or the venue unreachable.

``drop``: take the request, then close the connection without answering. ``hang``: take
it, then answer only long after the client has given up. ``http_5xx``: answer an HTTP
error, taking nothing. ``code_50004``: take it and answer OKX's "timed out, outcome
unknown". ``reject``: refuse every order of the request with ``code`` (an OKX sCode, 51008
insufficient balance unless told). ``rate_limit``: refuse the request for its rate (50011),
as OKX does when another client of the account has used the window up. ``accept`` False makes drop, hang and 50004 refuse the
request unprocessed."""

from __future__ import annotations

import threading
from dataclasses import dataclass

# each kind and what it does, for `apex sim okx --help` (KINDS: the names alone)
KIND_HELP = {
    "drop": "take the request, then close the connection without answering",
    "hang": "take it, then answer only long after the client has given up",
    "http_5xx": "answer an HTTP error (status, 503 unless told), taking nothing",
    "code_50004": 'take it and answer OKX\'s 50004, "timed out, outcome unknown"',
    "reject": "refuse every order of the request with code (an OKX sCode, 51008 unless told)",
    "rate_limit": "refuse the request for its rate (50011, HTTP 429), taking nothing",
}
KINDS = tuple(KIND_HELP)
ORDER_PATHS = ("trade/order", "trade/batch-orders")


@dataclass
class Fault:
    kind: str
    times: int = 1
    paths: tuple[str, ...] = ORDER_PATHS
    accept: bool = True
    status: int = 503
    code: str = "51008"
    msg: str = "Order failed. Insufficient balance"


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed: list[Fault] = []

    def arm(self, kind: str, *, times: int = 1, paths: tuple[str, ...] | list[str] | str = ORDER_PATHS,
            accept: bool = True, status: int = 503, code: str = "51008",
            msg: str = "Order failed. Insufficient balance") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(KINDS)}")
        if not 500 <= status <= 599:
            raise ValueError(f"status must be 5xx, not {status}")
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        with self.lock:
            self.armed.append(Fault(kind, times, paths, accept, status, str(code), msg))

    def take(self, path: str) -> Fault | None:
        """The fault this request meets, if one is armed for its path (used up once met)."""
        with self.lock:
            for f in self.armed:
                if path in f.paths:
                    f.times -= 1
                    if f.times <= 0:
                        self.armed.remove(f)
                    return f
        return None

    def clear(self) -> None:
        with self.lock:
            self.armed.clear()
