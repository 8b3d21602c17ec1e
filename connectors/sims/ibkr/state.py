"""What the simulated gateway remembers: the contracts it defines, every order it
accepted, its executions, the positions and the cash they move. Kept while it runs, and
in a JSON state file when given one, so a client restarted against a restarted
simulator still finds its earlier orders, as it would at IB."""

from __future__ import annotations

import json
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

# defined whatever prices it is given; it trades a stock only once it has a price for it
DEFAULT_SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "JPM", "SPY", "QQQ")
NO_PRICE = "the simulator has no price for {symbol}: start it with --prices or --redis"
FIRST_PERM_ID = 1_000_000


def con_id(symbol: str) -> int:
    """The same conId for a symbol in every run, as IB's never change."""
    return 100_000 + zlib.crc32(symbol.encode()) % 900_000


def commission(shares: float) -> float:
    """IB's fixed pricing for US stocks: half a cent a share, at least a dollar."""
    return round(max(1.0, 0.005 * shares), 2)


@dataclass
class SimOrder:
    order_id: int
    client_id: int
    perm_id: int
    symbol: str
    action: str  # BUY | SELL
    quantity: float
    order_type: str
    account: str
    order_ref: str
    status: str = "Submitted"  # Submitted | Filled | Cancelled
    filled: float = 0.0
    avg_price: float = 0.0
    completed_time: str = ""

    @property
    def remaining(self) -> float:
        return self.quantity - self.filled

    @property
    def done(self) -> bool:
        return self.status in ("Filled", "Cancelled")


@dataclass
class SimExecution:
    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    symbol: str
    side: str  # BOT | SLD
    shares: float
    price: float
    time: str
    account: str
    order_ref: str
    cum_qty: float
    avg_price: float
    commission: float


@dataclass
class Book:
    cash: float
    orders: dict[int, SimOrder] = field(default_factory=dict)  # by permId
    executions: list[SimExecution] = field(default_factory=list)
    positions: dict[str, list[float]] = field(default_factory=dict)  # symbol -> [qty, avg cost]
    next_perm_id: int = FIRST_PERM_ID
    next_order_id: int = 1  # the lowest order id a new session may use


class SimState:
    """One lock over the book: sessions run on one loop, but tests read it from theirs."""

    def __init__(self, *, cash: float, prices: dict[str, float] | None = None,
                 state_file: str | Path | None = None, orders_log: str | Path | None = None):
        self.lock = threading.RLock()
        self.prices = dict(prices or {})
        self.symbols = set(DEFAULT_SYMBOLS) | set(self.prices)
        self.state_file = Path(state_file) if state_file else None
        self.orders_log = Path(orders_log) if orders_log else None
        self.book = self._load() or Book(cash=cash)

    def _load(self) -> Book | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        raw = json.loads(self.state_file.read_text())
        book = Book(cash=raw["cash"], next_perm_id=raw["next_perm_id"], next_order_id=raw["next_order_id"],
                    positions={k: list(v) for k, v in raw["positions"].items()})
        book.orders = {o["perm_id"]: SimOrder(**o) for o in raw["orders"]}
        book.executions = [SimExecution(**e) for e in raw["executions"]]
        return book

    def save(self) -> None:
        if self.state_file is None:
            return
        b = self.book
        raw = {"cash": b.cash, "next_perm_id": b.next_perm_id, "next_order_id": b.next_order_id,
               "positions": b.positions, "orders": [asdict(o) for o in b.orders.values()],
               "executions": [asdict(e) for e in b.executions]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(self.state_file)  # a crash mid-write leaves the previous state whole

    def price(self, symbol: str) -> float | None:
        with self.lock:
            return self.prices.get(symbol)

    def set_price(self, symbol: str, price: float) -> None:
        with self.lock:
            self.prices[symbol] = price
            self.symbols.add(symbol)

    def defines(self, symbol: str) -> bool:
        with self.lock:
            return symbol in self.symbols

    def accept(self, order_id: int, client_id: int, symbol: str, action: str, quantity: float,
               order_type: str, account: str, order_ref: str) -> SimOrder:
        with self.lock:
            b = self.book
            o = SimOrder(order_id, client_id, b.next_perm_id, symbol, action, quantity, order_type, account,
                         order_ref)
            b.next_perm_id += 1
            b.next_order_id = max(b.next_order_id, order_id + 1)
            b.orders[o.perm_id] = o
            self.save()
            return o

    def log_accepted(self, o: SimOrder, price: float) -> None:
        """One line per order taken, so a test counts what really reached the venue."""
        if self.orders_log is None:
            return
        line = {"orderRef": o.order_ref, "orderId": o.order_id, "permId": o.perm_id, "clientId": o.client_id,
                "symbol": o.symbol, "action": o.action, "totalQuantity": o.quantity, "price": price,
                "received_us": time.time_ns() // 1000}  # wall clock, for emit → accepted at the venue
        with self.lock, self.orders_log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def execute(self, o: SimOrder, shares: float, price: float) -> SimExecution:
        with self.lock:
            b = self.book
            cost = o.avg_price * o.filled + shares * price
            o.filled += shares
            o.avg_price = cost / o.filled
            if o.remaining <= 0:
                o.status, o.completed_time = "Filled", _now()
            sign = 1 if o.action == "BUY" else -1
            fee = commission(shares)
            b.cash -= sign * shares * price + fee
            qty, avg = b.positions.get(o.symbol, [0.0, 0.0])
            new_qty = qty + sign * shares
            if new_qty == 0:
                b.positions.pop(o.symbol, None)
            else:
                grows = qty == 0 or (qty > 0) == (sign > 0)
                b.positions[o.symbol] = [new_qty, (avg * abs(qty) + price * shares) / abs(new_qty) if grows else avg]
            ex = SimExecution(f"0000e{o.perm_id:x}.{len(b.executions) + 1:04d}.01", o.order_id, o.client_id,
                              o.perm_id, o.symbol, "BOT" if sign > 0 else "SLD", shares, price, _now(), o.account,
                              o.order_ref, o.filled, o.avg_price, fee)
            b.executions.append(ex)
            self.save()
            return ex

    def cancel(self, o: SimOrder) -> None:
        with self.lock:
            if not o.done:
                o.status, o.completed_time = "Cancelled", _now()
                self.save()

    def find(self, client_id: int, order_id: int) -> SimOrder | None:
        with self.lock:
            for o in self.book.orders.values():
                if o.client_id == client_id and o.order_id == order_id:
                    return o
        return None

    def snapshot(self) -> tuple[list[SimOrder], list[SimExecution], dict[str, list[float]], float]:
        with self.lock:
            b = self.book
            return list(b.orders.values()), list(b.executions), {k: list(v) for k, v in b.positions.items()}, b.cash


def _now() -> str:
    return time.strftime("%Y%m%d %H:%M:%S UTC", time.gmtime())
