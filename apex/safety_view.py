"""What ``apex status`` says of the watchdog's side: each stage's heartbeat and each venue's
last comparison with the books (reconciliation while running), each process's own when
several write them (``@process-I``, ``@CONSUMER``: ``dataflows.cluster.process_tag``)."""

from __future__ import annotations

import json
import time

import redis

from connectors import heartbeat
from connectors.live_reconcile import STATUS_KEY


def safety_status(r: redis.Redis, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    beats = {stage: {"age_s": round(now - ts, 1), "state": state}
             for stage, (ts, state) in heartbeat.present(r).items()}
    checks = {}
    for venue, raw in r.hgetall(STATUS_KEY).items():
        try:
            checks[venue.decode() if isinstance(venue, bytes) else venue] = json.loads(raw)
        except ValueError:
            continue
    return {"heartbeats": beats, "reconciliation": checks}


def safety_lines(s: dict, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    lines = [f"heartbeat {stage}: {b['state']}, {b['age_s']:.1f} s ago" for stage, b in sorted(s["heartbeats"].items())]
    for venue, c in sorted(s["reconciliation"].items()):
        ago = now - float(c.get("ts", now))
        process = venue.partition("@")[2]  # the process that compared (several write here), if named
        lines.append(f"{c.get('line', '')} ({c.get('level', '?')}, {ago:.0f} s ago{', ' + process if process else ''})")
    return lines
