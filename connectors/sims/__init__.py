"""Loopback simulators of the venues' protocols, and what starting one beside Apex needs:
whether it listens yet, and fill prices taken from a recording."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


# said at start by a simulator given no prices: it invents none, and refuses every order until it has one
NO_PRICES = "no prices given: every order is refused until --prices FILE or --redis URL gives its instrument one"


def prices_from_recording(path: Path) -> dict[str, dict[str, float]]:
    """By venue, each symbol's first reference price in a recording: what a simulator fills
    at, so that fills land near the prices the signals were sized on. Entries that are not
    valid signals are passed over, as the recording's invalid ones are meant to be."""
    prices: dict[str, dict[str, float]] = {"okx": {}, "ibkr": {}}
    for line in Path(path).read_text().splitlines():
        try:
            doc = json.loads(json.loads(line)["fields"]["payload"])
            price = float(doc["reference_price"])
        except (KeyError, TypeError, ValueError):
            continue
        if doc.get("venue") in prices and isinstance(doc.get("symbol"), str) and 0 < price < 1e9:
            prices[doc["venue"]].setdefault(doc["symbol"], price)
    return prices


def stop_all(procs: list[subprocess.Popen], wait_s: float = 30) -> None:
    """SIGTERM each child still running (the last started first), killed if it outlives
    ``wait_s``: simulators, redis-server and Apex itself, as a demo or a test leaves them."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(wait_s)
            except subprocess.TimeoutExpired:
                p.kill()
