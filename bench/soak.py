"""The soak of ``apex bench`` (``--soak MINUTES``): RSS and latency over time at 200/s.

Apex and the floor consume the one stream at once, each in its own group (at
200/s they barely touch each other, and a 30-minute soak run twice would be an
hour). Per window: emit → XACK p50/p99 and the RSS of the Apex tree and of its
worker; growth is RSS at the end against RSS after the warm-up. A system still
behind after a drain allowance is stopped, and how far behind is reported.
"""

from __future__ import annotations

import itertools
import math
import time

from bench.proc import Usage, percentiles
from bench.scenarios import (CONSUMER, FLOOR_CONSUMER, FLOOR_GROUP, GROUP, RATE, STREAM, Ctx, _ack_stats,
                                  acks_of, apex, errors_of, floor, group_state, ready, run_row, target)
from bench.signals import publish, templates

HOLDING_H = 0.01  # 36 s: well inside the warm-up (at least 60 s)


def soak(ctx: Ctx, minutes: float) -> dict:
    secs = minutes * 60
    n = int(secs * RATE) + 1
    r = ctx.r
    r.flushall()
    # Trades close after HOLDING_H, as a live book's do: the book then holds a steady number
    # of open trades, and what is left to grow is what must not (the duplicate check, caches).
    items = templates(n, max_holding_hours=HOLDING_H)
    items = itertools.chain([next(items)], items)  # the signal pool is built before anyone waits on it
    state = ctx.dir("soak-apex") / "state"
    a = apex(ctx, "soak-apex", state, idle_ms=ctx.sizes.idle_ms)
    ready(ctx, GROUP, CONSUMER, a)
    r.xgroup_create(STREAM, FLOOR_GROUP, id="0", mkstream=True)
    f = floor(ctx, "soak-floor", idle_ms=ctx.sizes.idle_ms)
    ready(ctx, FLOOR_GROUP, FLOOR_CONSUMER, f)
    ctx.say(f"soak: {minutes:g} min at {RATE:.0f}/s, apex and floor each in its own group")
    t0 = time.monotonic()
    pub = publish(r, STREAM, items, RATE, until=t0 + secs)
    behind = {}
    drain_until = time.monotonic() + max(60.0, 0.2 * secs)  # one that fell behind is not waited for forever
    for name, c, group in (("apex", a, GROUP), ("floor", f, FLOOR_GROUP)):
        while c.alive() and time.monotonic() < drain_until:
            time.sleep(0.1)
        if c.alive():
            behind[name] = group_state(r, group)
            ctx.say(f"soak: {name} still {behind[name]['lag']} entries behind after the drain allowance: stopping it")
            c.term()
    ua, uf = a.wait(600), f.wait(600)
    a.check("soak apex")
    f.check("soak floor")
    acks_a, acks_f = acks_of(a.log.parent / "acks.txt"), acks_of(f.log.parent / "acks.txt")
    lat_a, tput_a = _ack_stats(pub, acks_a)
    lat_f, tput_f = _ack_stats(pub, acks_f)
    offset_a, offset_f = a.started - t0, f.started - t0  # child clock → publish clock
    window = 60.0 if secs >= 300 else max(5.0, secs / 10)
    warm = min(max(60.0, 0.2 * secs), 0.5 * secs)
    windows = _windows(pub, acks_a, ua, offset_a, window, secs)
    growth = {"apex_total": _growth(ua, offset_a, warm, secs, None),
              "apex_worker": _growth(ua, offset_a, warm, secs, "bench.worker"),
              "apex_shipper": _growth(ua, offset_a, warm, secs, "connectors.outbox"),
              "floor": _growth(uf, offset_f, warm, secs, None)}
    runs = [run_row("apex", "emit → XACK", ua, per_s=tput_a, lat_us=lat_a),
            run_row("floor", "emit → XACK", uf, per_s=tput_f, lat_us=lat_f)]
    errors = errors_of(a.log.parent / "acks.txt")
    return {"scenario": "soak", "title": f"6 soak {minutes:g} min @{RATE:.0f}/s",
            "params": {"minutes": minutes, "rate": RATE, "warm_up_s": warm, "window_s": window,
                       "published": pub.count},
            "runs": runs, "ratio": [0, 1], "checks": {"rss_growth_after_warm_up": growth, "windows": windows,
                                                     "apex_left_pending_for_retry": errors, "stopped_behind": behind},
            # judged on the dataflow process: the shipper's embedded ClickHouse (large, with its
            # own caches coming and going) would hide a leak in the worker
            "targets": [target("worker RSS growth after warm-up", growth["apex_worker"], "≤", 0.05, "×"),
                        target("apex tree RSS growth (info)", growth["apex_total"], "≤", 0.05, "×")]}


def _rss_at(u: Usage, t: float, name: str | None) -> float | None:
    near = [sum(v for k, v in s.items() if name is None or k == name) for ts, s in u.rss_samples
            if abs(ts - t) <= 5]
    return sorted(near)[len(near) // 2] / 1024 if near else None


def _growth(u: Usage, offset: float, warm: float, secs: float, name: str | None) -> float | None:
    a, b = _rss_at(u, warm - offset, name), _rss_at(u, secs - 5 - offset, name)
    return round((b - a) / a, 4) if a and b else None


def _windows(pub, acks: dict[str, int], u: Usage, offset: float, window: float, secs: float) -> list[dict]:
    base = pub.first_us
    last = max(0, math.ceil(secs / window) - 1)
    buckets: dict[int, list[float]] = {}
    for sid, us in pub.by_stream_id.items():
        if sid in acks:
            buckets.setdefault(min(last, int((us - base) / 1e6 // window)), []).append(acks[sid] - us)
    out = []
    for i in sorted(buckets):
        p = percentiles(buckets[i])
        end = min((i + 1) * window, secs)
        out.append({"t_s": round(end, 1), "p50_us": p["p50"], "p99_us": p["p99"], "n": p["n"],
                    "apex_rss_mb": _rss_at(u, end - offset, None),
                    "worker_rss_mb": _rss_at(u, end - offset, "bench.worker")})
    return out
