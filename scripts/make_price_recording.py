"""Write a seeded recording with prices and regimes interleaved with signals.

The signal-only sample never closes a trade: its few minutes are far shorter
than any holding period. This one spans eight hours of stream time, with a
price tick per symbol every minute on ``argus:prices:stream`` (a random walk
volatile enough to hit hard stops), regime updates every hour or so, and
signals whose holding periods are short enough to expire, so a replay
exercises every exit kind: hard stop, regime exit and maximum holding.

    python scripts/make_price_recording.py            # recordings/argus-prices.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_recording import PRICES, REGIMES, STREAM, iso, make_signal  # noqa: E402

PRICE_STREAM = "argus:prices:stream"
TICK_MS = 60_000
MINUTE_VOL = 0.002  # ~7.6% a day: enough for 1-8% stops to be hit within hours


def generate(hours: float, signals: int, seed: int, start_ms: int):
    rng = random.Random(seed)
    end_ms = start_ms + int(hours * 3_600_000)
    prices = {s: float(p) for venue in PRICES.values() for s, p in venue.items()}
    signal_times = sorted(rng.randrange(start_ms + 60_000, end_ms) for _ in range(signals))
    regime_times = []
    t = start_ms + rng.randrange(1_800_000, 5_400_000)
    while t < end_ms:
        regime_times.append(t)
        t += rng.randrange(2_400_000, 5_400_000)
    events = [(ms, "signal") for ms in signal_times] + [(ms, "regime") for ms in regime_times]
    events += [(ms, "ticks") for ms in range(start_ms, end_ms, TICK_MS)]
    events.sort()
    last_ms, seq, n = None, 0, 0
    regime = "trending_up"
    for ms, kind in events:
        if kind == "ticks":
            for symbol in sorted(prices):
                prices[symbol] *= math.exp(rng.gauss(0, MINUTE_VOL) + (rng.gauss(0, 0.02) if rng.random() < 0.002 else 0))
                seq, last_ms = (seq + 1 if ms == last_ms else 0), ms
                yield {"stream": PRICE_STREAM, "id": f"{ms}-{seq}",
                       "fields": {"symbol": symbol, "price": f"{prices[symbol]:.6g}", "ts": iso(ms, rng)}}
            continue
        seq, last_ms = (seq + 1 if ms == last_ms else 0), ms
        if kind == "regime":
            regime = rng.choice([r for r in REGIMES if r != regime])
            yield {"stream": PRICE_STREAM, "id": f"{ms}-{seq}", "fields": {"regime": regime, "ts": iso(ms, rng)}}
            continue
        sig = make_signal(n, ms, rng, {})
        n += 1
        sig["reference_price"] = float(f"{prices[sig['symbol']]:.6g}") if sig["symbol"] in prices else sig["reference_price"]
        sig["regime"] = regime
        sig["holding_period_hours"] = rng.choice([0.5, 1, 1.5, 2, 3])
        sig["exit_rules"].pop("max_holding_hours", None)
        if rng.random() < 0.5:
            sig["exit_rules"]["max_holding_hours"] = sig["holding_period_hours"] * rng.choice([1, 1.5])
        yield {"stream": STREAM, "id": f"{ms}-{seq}", "fields": {"payload": json.dumps(sig)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--hours", type=float, default=8)
    ap.add_argument("--signals", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("recordings/argus-prices.jsonl"))
    ap.add_argument("--start-ms", type=int, default=1767312000000, help="2026-01-02T00:00:00Z")
    args = ap.parse_args()
    with args.out.open("w") as fh:
        for entry in generate(args.hours, args.signals, args.seed, args.start_ms):
            fh.write(json.dumps(entry, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
