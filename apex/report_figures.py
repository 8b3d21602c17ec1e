"""How ``apex report`` writes its figures, shared by the terminal tables and the
HTML page so that both say the same thing in the same words."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit

from connectors.report_queries import Report


def usd(v: float) -> str:
    return f"{v:,.2f}"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, since the page may travel further than the credentials should."""
    u = urlsplit(dsn)
    return dsn if u.password is None else dsn.replace(f":{u.password}@", ":***@", 1)


def headline(rep: Report) -> list[tuple[str, str, str]]:
    """(label, value, note) for the figures a reader wants first."""
    eq = rep.equity[-1].equity if rep.equity else rep.initial_nav
    dd = rep.max_drawdown
    eff = rep.efficiency_now
    trades = sum(g.trades for g in rep.by_source)
    wins = sum(g.wins for g in rep.by_source)
    f = rep.funnel
    return [
        ("realized PnL", usd(rep.realized_pnl), f"{trades} closed trades, win rate {pct(wins / trades if trades else None)}"),
        ("equity (realized)", usd(eq), f"from {usd(rep.initial_nav)}"),
        ("max drawdown", pct(dd.drawdown_pct if dd else None), f"{usd(dd.drawdown_usd)} below peak" if dd else "no closes yet"),
        ("Kelly multiplier now", ratio(rep.kelly_now), "KellyTracker, as used by the last sizing"),
        ("efficiency, trailing 20", ratio(eff.ratio if eff else None),
         f"realized {pct(eff.realized_win_rate)} ÷ expected {pct(eff.expected_win_rate)}" if eff else "no closes yet"),
        ("dropped before sizing", pct(f.rate_before_sizing),
         f"{f.dropped_before_sizing} of {f.received} received; target {f.target[0]:.0%}–{f.target[1]:.0%}"),
        ("refused entries", str(f.invalid_signals + f.invalid_market_entries),
         f"{f.invalid_signals} invalid signals, {f.invalid_market_entries} invalid market entries"),
        ("open positions", str(len(rep.open_positions)),
         f"{usd(sum(p.quantity * p.entry_price for p in rep.open_positions))} at entry"),
    ]
