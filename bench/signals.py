"""The bench's signals and its publisher (Argus's side of the stream).

Signals come from ``scripts/make_recording.py`` (the seeded generator behind
the bundled recording), kept to valid, unique ones and adjusted so that most
of them become orders: 90% pass every filter (confidence, regime, universe;
the side is picked to bring the symbol's position back towards flat and the
size is capped by ``max_position_usd``, so concentration and margin stay
clear however many are published) and 10% are dropped by the confidence
filter. The timestamp is stamped at publish time with microseconds, and that
instant is the emit time every latency is measured from.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import redis

from operators.signal import parse_signal

TS = "__EMIT_TS__"
DROP_SHARE = 0.10
POOL = 10_000
START_MS = 1767261600000  # the generator's timeline; timestamps are replaced at publish time anyway


def make_recording():
    """The seeded generator behind the bundled recordings, imported from the checkout."""
    from scripts import make_recording as mod

    return mod


def recording(count: int, seed: int = 7) -> Iterator[dict]:
    """The generator's entries as they are (invalid, expired and duplicate ones included): for the replay."""
    return make_recording().generate(count, seed, START_MS)


def templates(count: int, seed: int = 7, max_holding_hours: float | None = None) -> Iterator[tuple[str, str]]:
    """(signal_id, payload with the timestamp left as ``TS``), ``count`` of them, unique signal_ids.

    The generator costs ~100 µs a signal, so past ``POOL`` the pool is cycled with the
    signal_id suffixed by the lap (the side choice keeps positions bounded lap after lap)."""
    pool = list(_shaped(min(count, POOL), seed, max_holding_hours))
    for i in range(count):
        sid, text = pool[i % len(pool)]
        lap = i // len(pool)
        if lap:
            new = f"{sid}.{lap}"
            text = text.replace(f'"signal_id": "{sid}"', f'"signal_id": "{new}"', 1)
            sid = new
        yield sid, text


def _shaped(count: int, seed: int, max_holding_hours: float | None = None) -> Iterator[tuple[str, str]]:
    mr = make_recording()
    rng = random.Random(seed + 1)
    exposure: dict[tuple[str, str], float] = {}
    seen: set[str] = set()
    made, batch = 0, 0
    while made < count:
        for entry in mr.generate(max(1000, int((count - made) * 1.15)), seed + 1000 * batch, START_MS):
            payload = entry["fields"].get("payload")
            try:
                parse_signal(payload)
            except Exception:  # noqa: BLE001 - the generator's deliberately bad entries
                continue
            doc = json.loads(payload)
            sid = doc["signal_id"] if batch == 0 else f"{doc['signal_id']}-{batch}"
            if sid in seen:
                continue  # the generator's re-publishes
            seen.add(sid)
            doc["signal_id"] = sid
            _shape(doc, rng, mr, exposure)
            if max_holding_hours:
                doc["exit_rules"]["max_holding_hours"] = max_holding_hours
            doc["timestamp"] = TS
            yield sid, json.dumps(doc)
            made += 1
            if made == count:
                return
        batch += 1


def _shape(doc: dict, rng: random.Random, mr, exposure: dict) -> None:
    doc["ttl_seconds"] = 300  # a saturation backlog must not expire before it is drained
    if rng.random() < DROP_SHARE:
        doc["confidence"] = round(rng.uniform(0.30, 0.60), 3)
        return
    if doc["confidence"] < 0.65:
        doc["confidence"] = round(rng.uniform(0.66, 0.97), 3)
    if doc["source"] == "trend_following" and doc["regime"] == "choppy":
        doc["regime"] = rng.choice(["trending_up", "trending_down"])
    elif doc["source"] == "mean_reversion" and doc["regime"] != "choppy":
        doc["regime"] = "choppy"
    venue = doc["venue"]
    if doc["symbol"] not in mr.PRICES[venue]:
        doc["symbol"] = rng.choice(sorted(mr.PRICES[venue]))
        doc["reference_price"] = float(mr.PRICES[venue][doc["symbol"]])
    # Kelly × NAV well above the cap, so the size is the cap whatever the haircuts
    doc["suggested_kelly"] = max(doc["suggested_kelly"], 0.02)
    doc["max_position_usd"] = min(doc["max_position_usd"], 5000.0)
    price = doc["reference_price"]
    usd = math.floor(doc["max_position_usd"] / price) * price if venue == "ibkr" else doc["max_position_usd"]
    key = (venue, doc["symbol"])
    doc["side"] = "sell" if exposure.get(key, 0.0) > 0 else "buy"
    exposure[key] = exposure.get(key, 0.0) + (usd if doc["side"] == "buy" else -usd)


def iso_us(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Published:
    """What the publisher sent: per stream id and per signal id, the emit time (µs since the epoch)."""

    by_stream_id: dict[str, int] = field(default_factory=dict)
    by_signal_id: dict[str, int] = field(default_factory=dict)
    signal_of: dict[str, str] = field(default_factory=dict)  # stream id -> signal_id
    first_us: int = 0
    last_us: int = 0
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.by_stream_id)


def publish(r: redis.Redis, stream: str, items: Iterable[tuple[str, str]], rate: float,
            out: Published | None = None, until: float | None = None) -> Published:
    """XADD each signal, stamped the moment it is sent. ``rate`` > 0: one XADD per signal on
    schedule; 0: as fast as Redis takes them, pipelined 500 at a time. ``until`` (monotonic)
    stops early (the soak)."""
    out = out or Published()
    started = time.perf_counter()
    n = 0
    pending: list[tuple[str, int]] = []
    pipe = r.pipeline(transaction=False)
    for sig_id, text in items:
        if until is not None and time.monotonic() >= until:
            break
        if rate > 0:
            wait = started + n / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        us = time.time_ns() // 1000
        payload = text.replace(TS, iso_us(us), 1)
        if rate > 0:
            entry_id = r.xadd(stream, {"payload": payload})
            out.by_stream_id[entry_id] = us
            out.signal_of[entry_id] = sig_id
        else:
            pipe.xadd(stream, {"payload": payload})
            pending.append((sig_id, us))
            if len(pending) >= 500:
                _flush(pipe, pending, out)
        out.by_signal_id[sig_id] = us
        out.first_us = out.first_us or us
        out.last_us = us
        n += 1
    if pending:
        _flush(pipe, pending, out)
    out.seconds = time.perf_counter() - started
    return out


def _flush(pipe, pending: list[tuple[str, int]], out: Published) -> None:
    for entry_id, (sig_id, us) in zip(pipe.execute(), pending):
        out.by_stream_id[entry_id] = us
        out.signal_of[entry_id] = sig_id
    pending.clear()
