"""Exit rules and the arithmetic of a closed trade.

The signal carries its own exits (hard stop, regimes to leave on, a maximum
holding time); these functions only read them. Everything runs on the
stream's clock, so a replay closes trades at the same moments as live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from operators.fill import Fill

if TYPE_CHECKING:
    from operators.signal import Signal

HARD_STOP = "hard_stop"
REGIME_EXIT = "regime_exit"
REGIME_ALERT = "regime_change_alert"
MAX_HOLDING = "max_holding"


@dataclass(slots=True)
class TradeTerms:
    """An open trade with what it needs to close itself."""

    signal_id: str
    source: str
    venue: str
    symbol: str
    side: str
    quantity: float
    entry_price: float
    entry_ms: int
    entry_fee_usd: float
    regime: str
    hard_stop_pct: float | None
    exit_regimes: tuple[str, ...]
    deadline_ms: int
    regime_change_alert: bool
    expected_win_rate: float
    avg_win: float | None = None
    avg_loss: float | None = None

    @property
    def long(self) -> bool:
        return self.side == "buy"

    @property
    def exit_side(self) -> str:
        return "sell" if self.long else "buy"


def stop_hit(t: TradeTerms, price: float) -> bool:
    """The price has moved against the entry by ``hard_stop_pct`` or more."""
    if not t.hard_stop_pct:
        return False
    move = (price - t.entry_price) / t.entry_price
    return -move >= t.hard_stop_pct if t.long else move >= t.hard_stop_pct


def regime_exit(t: TradeTerms, regime: str, on_alert: bool) -> str | None:
    if regime in t.exit_regimes:
        return REGIME_EXIT
    if on_alert and t.regime_change_alert and regime != t.regime:
        return REGIME_ALERT
    return None


# what a close may leave of its trade and still be whole: a venue rounds a sell down to its
# lot (OKX's smallest, 1e-8 of a coin), and the book then holds dust no venue would take
DUST, DUST_SHARE = 1e-8, 1e-6


def close_leaves_rest(t: TradeTerms, filled: float) -> bool:
    """Whether a close that filled ``filled`` left a real part of the trade held."""
    return t.quantity - filled > max(DUST, DUST_SHARE * t.quantity)


def holding_expired(t: TradeTerms, clock_ms: int) -> bool:
    return clock_ms >= t.deadline_ms


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    terms: TradeTerms
    exit_price: float
    exit_ms: int
    exit_fee_usd: float
    exit_reason: str

    @property
    def fees_usd(self) -> float:
        return self.terms.entry_fee_usd + self.exit_fee_usd

    @property
    def pnl_usd(self) -> float:
        t = self.terms
        gross = (self.exit_price - t.entry_price) * t.quantity
        return (gross if t.long else -gross) - self.fees_usd

    @property
    def return_pct(self) -> float:
        """Net PnL over the entry notional."""
        notional = self.terms.entry_price * self.terms.quantity
        return self.pnl_usd / notional if notional else 0.0

    @property
    def won(self) -> bool:
        return self.pnl_usd > 0

    def row(self) -> dict:
        t = self.terms
        return {
            "signal_id": t.signal_id, "source": t.source, "venue": t.venue, "symbol": t.symbol,
            "side": t.side, "entry_ms": t.entry_ms, "exit_ms": self.exit_ms,
            "entry_price": t.entry_price, "exit_price": self.exit_price, "quantity": t.quantity,
            "fees_usd": self.fees_usd, "pnl_usd": self.pnl_usd, "return_pct": self.return_pct,
            "exit_reason": self.exit_reason, "expected_win_rate": t.expected_win_rate,
            "avg_win": t.avg_win, "avg_loss": t.avg_loss,
        }


def booked(expected: TradeTerms, fill: Fill) -> TradeTerms:
    """The trade an order was expected to open, as the venue actually filled it. Spelled out:
    ``dataclasses.replace`` reads every field through getattr, slow for something done every order."""
    e = expected
    return TradeTerms(
        signal_id=e.signal_id, source=e.source, venue=e.venue, symbol=e.symbol, side=e.side,
        quantity=fill.quantity, entry_price=fill.price, entry_ms=fill.ts_ms, entry_fee_usd=fill.fee_usd,
        regime=e.regime, hard_stop_pct=e.hard_stop_pct, exit_regimes=e.exit_regimes,
        deadline_ms=fill.ts_ms + e.deadline_ms - e.entry_ms, regime_change_alert=e.regime_change_alert,
        expected_win_rate=e.expected_win_rate, avg_win=e.avg_win, avg_loss=e.avg_loss,
    )


def terms_for(signal: Signal, fill: Fill) -> TradeTerms:
    """The open trade a filled signal leaves behind: its own exits, on the stream clock."""
    hours = signal.max_holding_hours
    return TradeTerms(
        signal_id=signal.signal_id, source=signal.source, venue=fill.venue, symbol=fill.symbol,
        side=fill.side, quantity=fill.quantity, entry_price=fill.price, entry_ms=fill.ts_ms,
        entry_fee_usd=fill.fee_usd, regime=signal.regime,
        hard_stop_pct=signal.exit_rules.hard_stop_pct,
        exit_regimes=tuple(signal.exit_rules.exit_regimes),
        deadline_ms=fill.ts_ms + int(hours * 3_600_000),
        regime_change_alert=signal.regime_change_alert,
        expected_win_rate=signal.backtest_stats.win_rate,
        avg_win=signal.backtest_stats.avg_win, avg_loss=signal.backtest_stats.avg_loss,
    )
