"""What ``apex status`` says of price protection: the fills booked beyond their order's band,
read from each book's ledger (``connectors/price_alerts.py``)."""

from __future__ import annotations

from datetime import datetime, timezone

from connectors import price_alerts
from dataflows.config import Pipeline
from operators.protection import num


def alerts(p: Pipeline) -> list[dict]:
    """Every book's latest alerts, newest first, each with its book's name."""
    got = [{"book": b.book, **a} for b in p.each_book() for a in price_alerts.read(b.ledger_path)]
    return sorted(got, key=lambda a: a["ts_ms"], reverse=True)


def lines(found: list[dict]) -> list[str]:
    if not found:
        return ["price alerts: none (no fill booked beyond its band)"]
    out = [f"PRICE ALERTS: {len(found)} fill(s) booked beyond their band (latest first)"]
    for a in found:
        when = datetime.fromtimestamp(a["ts_ms"] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        off = (a["price"] - a["reference"]) / a["reference"] * 10_000
        book = f"{a['book']}: " if a["book"] else ""
        out.append(f"  {when} {book}{a['venue']} {a['symbol']} {a['side']} filled at {num(a['price'])}, reference "
                   f"{num(a['reference'])} ({off:+.0f} bps, band {a['band_bps']:g}) order {a['client_order_id']}")
    return out
