"""Write a reproducible stand-in for a day of Argus output, as a stream recording.

Apex reads signals from the Redis stream ``argus:signals:stream``. Real Argus
output cannot be shared or replayed bit-for-bit, so this script fabricates a
recording with the same shape and the same kinds of trouble: low-confidence
signals, strategy/regime mismatches, out-of-universe symbols, expired signals,
exact re-publishes and malformed payloads. The same ``--seed`` always yields
the same file, so tests and benchmarks can replay it and compare results.

One JSON object per line::

    {"stream": "argus:signals:stream", "id": "<ms>-<seq>", "fields": {"payload": "<signal JSON>"}}

Stdlib only. ``--check`` re-reads the file through ``operators.signal.parse_signal``
(needs the project venv) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

STREAM = "argus:signals:stream"
SOURCES = ["mean_reversion", "novelty_anomaly", "regime_caution", "trend_following", "macro", "smart_money"]
REGIMES = ["trending_up", "trending_down", "choppy"]
PRICES = {  # starting reference prices; each then follows a small random walk
    "okx": {"BTC-USDT": 95000, "ETH-USDT": 3400, "SOL-USDT": 190, "XRP-USDT": 2.3, "DOGE-USDT": 0.35,
            "ADA-USDT": 0.95, "AVAX-USDT": 38, "LINK-USDT": 23, "DOT-USDT": 7.5, "LTC-USDT": 105},
    "ibkr": {"AAPL": 230, "MSFT": 430, "NVDA": 140, "AMZN": 220, "GOOGL": 190, "META": 600,
             "TSLA": 420, "JPM": 245, "SPY": 600, "QQQ": 520},
}
OUTSIDE = {"okx": {"PEPE-USDT": 0.000018, "WIF-USDT": 2.1}, "ibkr": {"GME": 28, "AMC": 4.5}}
BAD_KINDS = ["not_json", "array", "conf_string", "conf_true", "conf_nan", "version_2", "naive_ts",
             "no_signal_id", "ttl_zero", "venue_binance", "oversize", "no_payload"]


def iso(ms: int, rng: random.Random) -> str:
    text = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def make_signal(n: int, stream_ms: int, rng: random.Random, prices: dict) -> dict:
    venue = "okx" if rng.random() < 0.6 else "ibkr"
    pool = OUTSIDE[venue] if rng.random() < 0.02 else PRICES[venue]
    symbol = rng.choice(sorted(pool))
    price = prices.setdefault(symbol, float(pool[symbol])) * math.exp(rng.gauss(0, 0.0005))
    prices[symbol] = price
    source = rng.choice(SOURCES)
    mismatch = rng.random() < 0.45  # 45% of the 2 affected sources ~ 15% of all signals
    if source == "trend_following":
        regime = "choppy" if mismatch else rng.choice(["trending_up", "trending_down"])
    elif source == "mean_reversion":
        regime = rng.choice(["trending_up", "trending_down"]) if mismatch else "choppy"
    else:
        regime = rng.choice(REGIMES)
    roll = rng.random()
    confidence = 0.65 if roll < 0.005 else round(
        rng.uniform(0.30, 0.649) if roll < 0.385 else rng.uniform(0.651, 0.97), 3)
    side = rng.choice(["buy", "sell"])
    hours = rng.choice([1, 2, 4, 6, 8, 12, 24, 48, 72])
    stop = round(rng.uniform(0.01, 0.08), 3)
    exit_regimes = sorted(rng.sample([r for r in REGIMES if r != regime], rng.randint(1, 2)))
    max_hold = None if rng.random() < 0.3 else hours * rng.choice([1, 1.5, 2])
    description = (f"Exit on a {stop:.1%} adverse move, on a regime change to {' or '.join(exit_regimes)}"
                   + (f", or after {max_hold:g} hours." if max_hold else "."))
    exit_rules = {"description": description, "hard_stop_pct": stop, "exit_regimes": exit_regimes}
    exit_rules.update({"max_holding_hours": max_hold} if max_hold else {})
    version = "1.1" if rng.random() < 0.2 else "1.0"
    sig = {
        "version": version,
        "signal_id": f"sig-{n:06d}-{rng.getrandbits(24):06x}",
        "timestamp": iso(stream_ms - rng.randint(0, 300), rng),
        "ttl_seconds": rng.choice([30, 60, 90, 120, 180, 300]),
        "source": source, "venue": venue, "symbol": symbol, "side": side,
        "confidence": confidence, "regime": regime,
        "reference_price": float(f"{price:.6g}"),
        "suggested_kelly": round(rng.uniform(0.002, 0.03), 4),
        "max_position_usd": float(rng.randrange(1000, 10001, 250)),
        "holding_period_hours": hours,
        "exit_rules": exit_rules,
        "backtest_stats": {"win_rate": round(rng.uniform(0.5, 0.7), 3), "avg_win": round(rng.uniform(0.01, 0.06), 4),
                           "avg_loss": round(rng.uniform(0.008, 0.04), 4), "trades": rng.randint(40, 2000)},
    }
    if version == "1.1" and rng.random() < 0.7:
        sig["regime_change_alert"] = rng.random() < 0.3
    if rng.random() < 0.03:
        sig["argus_build"] = "1.84.2"
    return sig


def corrupt(kind: str, sig: dict, stream_ms: int) -> dict:
    """Fields for a bad entry of the given kind, built from an otherwise valid signal."""
    text, bad = json.dumps(sig), dict(sig)
    if kind in ("not_json", "array", "no_payload"):
        return {"not_json": {"payload": text[: len(text) // 2]}, "array": {"payload": json.dumps([sig])},
                "no_payload": {"data": text}}[kind]
    naive = datetime.fromtimestamp(stream_ms / 1000, tz=timezone.utc).replace(tzinfo=None).isoformat()
    key, value = {"conf_string": ("confidence", "0.8"), "conf_true": ("confidence", True),
                  "conf_nan": ("confidence", float("nan")), "version_2": ("version", "2.0"),
                  "ttl_zero": ("ttl_seconds", 0), "venue_binance": ("venue", "binance"),
                  "naive_ts": ("timestamp", naive), "no_signal_id": ("signal_id", None),
                  "oversize": ("debug_blob", "x" * (65 * 1024))}[kind]
    bad[key] = value
    if value is None:
        del bad[key]
    return {"payload": json.dumps(bad)}  # allow_nan=True writes the literal NaN


def generate(count: int, seed: int, start_ms: int):
    rng = random.Random(seed)
    n_bad, n_expired, n_dup = round(count * 0.04), round(count * 0.03), round(count * 0.02)
    others = BAD_KINDS[:-2] + BAD_KINDS[-1:]  # oversize only 5 times: each one is 64 KiB of file
    plan = ["oversize"] * 5 + [others[i % len(others)] for i in range(n_bad - 5)]
    plan += ["expired"] * n_expired + ["dup"] * n_dup
    plan = (plan + ["ok"] * count)[:count]
    rng.shuffle(plan)
    prices: dict = {}
    recent: list[str] = []  # payloads of recent good signals, candidates for re-publish
    ms, seq, last_ms = start_ms, 0, None
    burst_left, mean_gap = 0.0, 10.0
    for n, kind in enumerate(plan):
        # Bursts of 0.5-3 s at 20-200 entries/s, separated by quiet spells of a few seconds.
        if burst_left <= 0:
            ms += int(rng.expovariate(1 / 6000)) if n else 0
            burst_left, mean_gap = rng.uniform(500, 3000), 1000 / math.exp(rng.uniform(math.log(20), math.log(200)))
        step = int(rng.expovariate(1 / mean_gap))
        ms, burst_left = ms + step, burst_left - step
        seq, last_ms = (seq + 1 if ms == last_ms else 0), ms
        if kind == "dup" and recent:
            fields = {"payload": rng.choice(recent[-50:])}
        else:
            sig = make_signal(n, ms, rng, prices)
            if kind == "expired":
                sig["timestamp"] = iso(ms - sig["ttl_seconds"] * 1000 - rng.randint(1000, 600000), rng)
            fields = corrupt(kind, sig, ms) if kind in BAD_KINDS else {"payload": json.dumps(sig)}
            if kind in ("ok", "dup"):
                recent.append(fields["payload"])
        yield {"stream": STREAM, "id": f"{ms}-{seq}", "fields": fields}


def check(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from operators.signal import Invalid, parse_signal

    total = invalid = expired = dups = low = 0
    seen: set[str] = set()
    venues, sources, reasons = Counter(), Counter(), Counter()
    first, last = None, (0, -1)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        total += 1
        sid = tuple(int(p) for p in entry["id"].split("-"))
        assert sid > last, f"stream ids not increasing at {entry['id']}"
        last, first = sid, first or sid
        try:
            sig = parse_signal(entry["fields"].get("payload"))
        except Invalid as err:
            invalid += 1
            kind = err.reason.split(":")[0]
            reasons[kind + (":" + err.reason.split()[1].rstrip(":") if kind == "schema" else "")] += 1
            continue
        if sig.signal_id in seen:
            dups += 1
            continue
        seen.add(sig.signal_id)
        expired += sig.emitted_ms + sig.ttl_seconds * 1000 < sid[0]
        venues[sig.venue] += 1
        sources[sig.source] += 1
        low += sig.confidence < 0.65
    span = (last[0] - first[0]) / 1000 if first else 0
    print(f"{path}: lines={total} invalid={invalid} expired={expired} duplicates={dups} distinct_ids={len(seen)} "
          f"span_s={span:.0f} venues={dict(venues)} sources={dict(sorted(sources.items()))} "
          f"conf<0.65={low / max(1, len(seen)):.3f} reasons={dict(sorted(reasons.items()))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=Path("recordings/argus-sample.jsonl"))
    ap.add_argument("--start-ms", type=int, default=1767261600000, help="2026-01-01T10:00:00Z")
    ap.add_argument("--check", action="store_true", help="after writing, validate the file and print a summary")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as fh:
        for entry in generate(args.count, args.seed, args.start_ms):
            fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
    if args.check:
        check(args.out)


if __name__ == "__main__":
    main()
