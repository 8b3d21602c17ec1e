"""OKX's USDT perpetual swaps as the venue interface sees them (``venues.okx.market: swap``).
Pure functions: nothing here talks to OKX.

Naming: a signal and its book name the instrument as on spot (``BTC-USDT``); the order goes
to its perpetual swap, whose instId is that name and ``-SWAP`` (``BTC-USDT-SWAP``). Books,
ledgers, exits and reconciliation lines keep the signal's name.

Sizing: the book sizes in coins, as it does on spot, so its notional (coins × price) is what
sizing and concentration weigh. The instrument it is shown is the swap's in coins: a lot of
``lotSz × ctVal`` coins, at least ``minSz × ctVal``. An order leaves in contracts: its coins
over ``ctVal``, rounded down to ``lotSz``; what OKX reports in contracts comes back in coins."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation

SUFFIX = "-SWAP"
TD_MODE = "isolated"
POS_SIDE = "net"  # net position mode: one signed position per instrument
FUNDING_BILL = "8"  # OKX's bill type for a funding fee
# how near a whole number of lots a quotient may fall short and still count as it: the book
# works in floats, so 0.03 / 0.01 may come out a hair below 3
_SLACK = Decimal("1e-9")


@dataclass(frozen=True)
class Contract:
    """A swap's terms, as OKX lists them."""

    ct_val: Decimal  # coins per contract
    lot: Decimal  # contracts come in whole multiples of it
    min_sz: Decimal  # the fewest contracts an order may be

    @property
    def lot_coins(self) -> float:
        return float(self.lot * self.ct_val)

    @property
    def min_coins(self) -> float:
        return float(self.min_sz * self.ct_val)


def inst_of(symbol: str) -> str:
    """A signal names the underlying; a name that is a swap's own (BTC-USDT-SWAP) is listed
    under none, so one position has one name in the books and in reconciliation."""
    return symbol + SUFFIX


def symbol_of(inst: str) -> str:
    return inst[: -len(SUFFIX)] if inst.endswith(SUFFIX) else inst


def tradable(market: dict, quote: str) -> bool:
    """A linear perpetual settled in the quote currency, live."""
    return bool(market.get("swap") and market.get("linear") and market.get("settle") == quote
                and market.get("active") is not False)


def contract_of(market: dict) -> Contract:
    info = market.get("info") or {}
    return Contract(_dec(info.get("ctVal") or market.get("contractSize") or 1),
                    _dec(info.get("lotSz") or market["precision"]["amount"]),
                    _dec(info.get("minSz") or market["limits"]["amount"]["min"] or 0))


def contracts(coins: float, c: Contract) -> Decimal:
    """Coins as contracts, rounded down to the lot."""
    lots = (_dec(coins) / c.ct_val / c.lot + _SLACK).to_integral_value(ROUND_DOWN)
    return max(lots, Decimal(0)) * c.lot


def in_coins(o: dict, c: Contract) -> dict:
    """A ccxt order record (amounts in contracts) with its amounts in coins."""
    out = dict(o)
    for key in ("amount", "filled", "remaining"):
        if out.get(key) is not None:
            out[key] = float(_dec(out[key]) * c.ct_val)
    return out


def position(p: dict, c: Contract) -> float:
    """A ccxt position's signed size in coins (net mode: OKX's ``pos`` carries the sign)."""
    info = p.get("info") or {}
    pos = info.get("pos")
    if pos in (None, ""):
        n = _dec(p.get("contracts") or 0)
        pos = -n if p.get("side") == "short" else n
    return float(_dec(pos) * c.ct_val)


@dataclass(frozen=True)
class FundingPayment:
    """One funding bill: what the account received (paid: below zero), in USD."""

    bill_id: str
    symbol: str  # the signal's name (BTC-USDT)
    amount_usd: float
    ts_ms: int
    mark: float = 0.0  # the mark price it was charged at (the bill's px)


def funding_payments(history: list[dict]) -> list[FundingPayment]:
    """ccxt's ``fetch_funding_history`` as payments, oldest first; bills of other types or
    in a currency other than a dollar stand-in are left out."""
    out = []
    for h in history:
        info = h.get("info") or {}
        if str(info.get("type", FUNDING_BILL)) != FUNDING_BILL or h.get("code") not in ("USDT", "USDC", "USD"):
            continue
        out.append(FundingPayment(str(h.get("id") or info.get("billId")), symbol_of(str(info.get("instId", ""))),
                                  float(h.get("amount") or 0), int(h.get("timestamp") or 0),
                                  float(info.get("px") or 0)))
    return sorted(out, key=lambda f: (f.ts_ms, int(f.bill_id) if f.bill_id.isdigit() else 0))


def _dec(value: object) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
