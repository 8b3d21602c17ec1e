"""Fixtures for the IBKR tests: the loopback gateway on a thread and a free port, and
``IbkrVenue`` clients of it that are closed after the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connectors.sims.ibkr import running
from connectors.venues.ibkr import IbkrVenue
from operators.orders import Order, client_order_id


# what the simulator trades at: it has no prices of its own (a user passes --prices or --redis)
PRICES = {"AAPL": 100.0, "MSFT": 300.0, "NVDA": 120.0, "AMZN": 180.0, "GOOGL": 150.0, "META": 500.0,
          "TSLA": 250.0, "JPM": 200.0, "SPY": 450.0, "QQQ": 400.0}


@pytest.fixture
def gateway(tmp_path):
    with running(orders_log=tmp_path / "orders.jsonl", cash=100_000.0, prices=PRICES) as control:
        yield control


@pytest.fixture
def connect(gateway):
    """Make an ``IbkrVenue`` on the gateway (short bounds: it answers at once)."""
    made: list[IbkrVenue] = []

    def make(client_id: int = 7, fill_timeout: float = 2.0, port: int | None = None,
             request_timeout: float = 2.0) -> IbkrVenue:
        venue = IbkrVenue("127.0.0.1", port or gateway.port, client_id, "DU1234567", connect_timeout=2.0,
                          request_timeout=request_timeout, fill_timeout=fill_timeout, backoff=(0.02, 0.2))
        made.append(venue)
        return venue

    yield make
    for venue in made:
        venue.close()


def accepted(tmp_path: Path) -> list[dict]:
    """The gateway's order log: every order that really reached it."""
    log = tmp_path / "orders.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def order(signal_id: str, symbol: str = "AAPL", quantity: float = 10, side: str = "buy") -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "ibkr", symbol, side, quantity, 100.0, 1)
