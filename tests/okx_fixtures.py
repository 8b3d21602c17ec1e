"""The OKX simulator in a thread on a free loopback port, an ``OkxVenue`` pointed at it,
and the small helpers the OKX tests share (raw requests, the simulator's order log)."""

from __future__ import annotations

import json
import socket
import urllib.request
from decimal import Decimal
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.sims.okx import Credentials, SimServer, running
from connectors.sims.okx.auth import sign
from connectors.sims.okx.matching import Depth, book_side, tick_for
from connectors.sims.okx.state import LOT, TAKER_FEE
from connectors.venues.okx import OkxVenue
from operators.orders import Order, client_order_id

# ten instruments, so that a burst spreads over several per-instrument limits
PRICES = {f"{c}-USDT": p for c, p in [("BTC", 100.0), ("ETH", 50.0), ("SOL", 20.0), ("XRP", 2.0), ("ADA", 1.0),
                                      ("DOT", 5.0), ("LTC", 80.0), ("LINK", 10.0), ("AVAX", 30.0), ("TRX", 0.5)]}
KEY, SECRET, PASSPHRASE = "sim-key-never-shown", "sim-secret-never-shown", "sim-pass-never-shown"
CREDENTIALS = Credentials(KEY, SECRET, PASSPHRASE)  # what the simulators of these tests check every request against
# the same, where `apex` reads them, as a user sets them
CREDENTIAL_ENV = {"OKX_API_KEY": KEY, "OKX_API_SECRET": SECRET, "OKX_API_PASSPHRASE": PASSPHRASE}


def held(bought: float) -> float:
    """What the account holds of a buy: OKX keeps its taker fee in the coin bought."""
    return bought * (1 - float(TAKER_FEE))


def ask(symbol: str) -> float:
    """Where a small market buy of ``symbol`` fills at the simulator's default book: the ask."""
    px = Decimal(str(PRICES[symbol]))
    return float(book_side(px, "buy", Depth(), tick_for(px), LOT)[0].px)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def okx_venue(url: str, **options) -> OkxVenue:
    """A venue pointed at ``url``; ``options`` may name other credentials."""
    opts = {"timeout_ms": 1000, "fill_wait_s": 0.5, "stream_retry_s": 1.0, "api_key": KEY, "secret": SECRET,
            "passphrase": PASSPHRASE, **options}
    return OkxVenue(url=url, **opts)


def order(signal_id: str, symbol: str = "BTC-USDT", side: str = "buy", quantity: float = 0.5) -> Order:
    return Order(client_order_id(signal_id), signal_id, "open", "okx", symbol, side, quantity, 100.0, 1)


def logged(path: Path) -> list[dict]:
    """The orders the simulator accepted, from its order log."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def signed(method: str, path: str, data: str, credentials: Credentials = CREDENTIALS) -> dict[str, str]:
    """OKX's OK-ACCESS headers for a request, as ccxt makes them."""
    ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"OK-ACCESS-KEY": credentials.api_key, "OK-ACCESS-PASSPHRASE": credentials.passphrase,
            "OK-ACCESS-TIMESTAMP": ts, "OK-ACCESS-SIGN": sign(credentials.secret, ts, method, path, data)}


def raw(url: str, method: str, path: str, body: object = None, *,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request as any HTTP client would send it, signed with the tests' credentials unless
    ``headers`` says otherwise: (HTTP status, the JSON answer)."""
    data = json.dumps(body) if body is not None else ""
    chosen = signed(method, path, data) if headers is None else headers
    req = urllib.request.Request(url + path, data=data.encode() if body is not None else None, method=method,
                                 headers={"Content-Type": "application/json", **chosen})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, _json(res.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())


def _json(body: bytes) -> dict:
    try:
        return json.loads(body)
    except ValueError:
        return {"text": body.decode()}  # an HTTP error page, not OKX's envelope


class Sim:
    """A running simulator, its order log and a venue pointed at it."""

    def __init__(self, server: SimServer, orders_log: Path):
        self.server, self.orders_log, self.url = server, orders_log, server.url
        self.venue = okx_venue(server.url)

    def logged(self) -> list[dict]:
        return logged(self.orders_log)


@pytest.fixture
def okx_sim(tmp_path):
    log = tmp_path / "okx-orders.jsonl"
    with running(orders_log=log, prices=PRICES, credentials=CREDENTIALS) as server:
        sim = Sim(server, log)
        yield sim
        sim.venue.close()
