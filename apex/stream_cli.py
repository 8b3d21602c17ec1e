"""Stream commands of the ``apex`` CLI: play a recording into Redis as Argus
would, capture the live stream as a recording, show the consumer group.

``publish`` re-stamps each signal so that its age when published equals its
age when it was recorded: expired entries stay expired and fresh ones fresh,
so a live replay through Redis reaches the offline replay's outcomes.
"""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import redis
import typer
from rich.table import Table

from apex import price_alerts_view
from apex.app import app, err, load_pipeline, out
from apex.refuse import refuse
from connectors.entry import id_ms
from connectors.recording import NotARecording, check, read_lines
from connectors.redis_streams import DOWN, Backoff, connect, counters_key, errors_key
from connectors.redis_config import RedisConfig
from operators.signal import Invalid, parse_signal

DEFAULTS = RedisConfig()
REDIS_OPT = typer.Option(DEFAULTS.url, "--redis", envvar="APEX_REDIS_URL", help="redis://HOST:PORT/DB")


def restamp(fields: dict, entry_id: str, now_ms: int) -> dict:
    """The payload with ``timestamp`` moved to now minus the entry's recorded
    age. Only the timestamp's text changes, so a payload's size and every
    other byte stay as recorded; anything that is not a valid signal is left
    exactly as it was, since its outcome must not depend on the clock."""
    payload = fields.get("payload")
    try:
        sig = parse_signal(payload)
    except Invalid:
        return fields
    old = json.loads(payload)["timestamp"]  # type: ignore[arg-type]
    emitted = datetime.fromisoformat(old)
    age_ms = id_ms(entry_id) - sig.emitted_ms
    new = datetime.fromtimestamp((now_ms - age_ms) / 1000, tz=emitted.tzinfo).isoformat(timespec="milliseconds")
    if old.endswith("Z") and new.endswith("+00:00"):
        new = new[:-6] + "Z"
    pattern = r'("timestamp"\s*:\s*)' + re.escape(json.dumps(old))
    text, n = re.subn(pattern, lambda m: m.group(1) + json.dumps(new), payload, count=1)  # type: ignore[arg-type]
    return {**fields, "payload": text} if n else fields


def client(url: str) -> redis.Redis:
    try:
        return connect(url)
    except ValueError as e:  # not a URL redis-py knows
        refuse(err, f"--redis {url!r}: {e}")


@app.command()
def publish(
    recording: Path = typer.Argument(..., help="a recording (.jsonl)"),
    rate: float = typer.Option(200.0, help="entries per second; 0 = as fast as Redis takes them"),
    redis_url: str = REDIS_OPT,
    stream: Optional[str] = typer.Option(None, help="target stream (default: each entry's recorded stream)"),
) -> None:
    """Act as Argus: XADD each recorded entry, timestamps re-stamped to now (age kept)."""
    if not rate >= 0:
        refuse(err, f"--rate must be 0 (as fast as Redis takes them) or more entries per second, not {rate:g}")
    try:
        check(recording)
    except NotARecording as e:
        refuse(err, str(e))
    pipe = client(redis_url).pipeline(transaction=False)
    started, n = time.perf_counter(), 0
    try:
        for rec in read_lines(recording):
            if rate > 0:
                wait = started + n / rate - time.perf_counter()
                if wait > 0:
                    pipe.execute()  # what is due goes out before we wait
                    time.sleep(wait)
            fields = restamp(rec.get("fields", {}), rec["id"], int(time.time() * 1000))
            pipe.xadd(stream or rec.get("stream") or DEFAULTS.stream, fields)
            n += 1
            if len(pipe) >= 500:
                pipe.execute()
        pipe.execute()
    except DOWN as e:
        err.print(f"redis unavailable at {redis_url} (entry {n} of the recording): {e}")
        raise typer.Exit(1)
    secs = time.perf_counter() - started
    err.print(f"published {n} entries in {secs:.2f} s ({n / secs if secs else 0:.0f}/s)", highlight=False)


@app.command()
def record(
    out_path: Path = typer.Option(..., "--out", help="recording to write (.jsonl)"),
    duration: float = typer.Option(..., help="seconds to capture"),
    redis_url: str = REDIS_OPT,
    stream: list[str] = typer.Option([DEFAULTS.stream, "argus:prices:stream"],
                                     help="streams to capture (repeat); default: signals and prices"),
    since: str = typer.Option("$", help="'$' = only entries added from now on; '0' = the whole stream too"),
) -> None:
    """Capture the live streams to a recording (same format as recordings/).

    Reads with XREAD, outside any consumer group, so it takes nothing from Apex.
    Entries of several streams are written in stream-id order within each read,
    so a replay sees prices and signals on one timeline."""
    if not duration > 0:
        refuse(err, f"--duration must be more than 0 seconds, not {duration:g}")
    r, backoff = client(redis_url), Backoff("record")
    try:
        fh = out_path.open("w")
    except OSError as e:
        refuse(err, f"--out {out_path}: {e.strerror}")
    last, n, reached, down = {name: since for name in stream}, 0, False, ""
    deadline = time.monotonic() + duration
    stopped: list[int] = []
    # Ctrl-C or SIGTERM ends the capture at the next read (within a second), the file whole:
    # an interrupt raised wherever the loop happened to be could land mid-write
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    with fh:
        while not stopped and (left := deadline - time.monotonic()) > 0:
            try:
                for name, pos in last.items():  # pin '$' to an id, or entries between two reads would be missed
                    if pos == "$":
                        last[name] = r.xinfo_stream(name)["last-generated-id"] if r.exists(name) else "0-0"
                got = r.xread(last, count=1000, block=max(1, int(min(left, 1.0) * 1000)))
                backoff.recovered()
                reached = True
            except DOWN as e:
                down = str(e)
                time.sleep(min(backoff.failed(e), max(0.0, deadline - time.monotonic())))
                continue
            batch = [(name, sid, fields) for name, entries in got or [] for sid, fields in entries]
            for name, sid, fields in sorted(batch, key=lambda e: tuple(map(int, e[1].split("-")))):
                fh.write(json.dumps({"stream": name, "id": sid, "fields": fields}, separators=(",", ":")) + "\n")
                last[name], n = sid, n + 1
            fh.flush()
    if not reached:  # an empty recording must not look like a quiet stream
        err.print(f"redis unavailable at {redis_url} for the whole capture: {down}", highlight=False)
        raise typer.Exit(1)
    err.print(f"recorded {n} entries from {', '.join(stream)} to {out_path}", highlight=False)


def group_status(r: redis.Redis, cfg: RedisConfig) -> dict:
    """Everything ``apex status`` shows, as data (tests and scripts read it with --json)."""
    now_ms = int(time.time() * 1000)
    s: dict = {"stream": cfg.stream, "group": cfg.group, "group_exists": False, "length": r.xlen(cfg.stream),
               "lag": None, "pending": 0, "consumers": [], "oldest_pending": None,
               "dead_letter_stream": cfg.dead_letter_stream, "dead_letters": r.xlen(cfg.dead_letter_stream),
               "failing": r.hlen(errors_key(cfg.stream, cfg.group)),
               "dead_lettered_max_deliveries": int(r.hget(counters_key(cfg), "dead_lettered") or 0),
               "invalid_market_entries": int(r.hget(counters_key(cfg), "invalid_market_entries") or 0)}
    groups = {g["name"]: g for g in r.xinfo_groups(cfg.stream)} if r.exists(cfg.stream) else {}
    g = groups.get(cfg.group)
    if g is None:
        return s
    s.update(group_exists=True, lag=g.get("lag"), pending=g["pending"], last_delivered_id=g["last-delivered-id"])
    s["consumers"] = [{"name": c["name"], "pending": c["pending"], "idle_ms": c["idle"]}
                      for c in r.xinfo_consumers(cfg.stream, cfg.group)]
    oldest = r.xpending_range(cfg.stream, cfg.group, "-", "+", 1)
    if oldest:
        o = oldest[0]
        s["oldest_pending"] = {"id": o["message_id"], "consumer": o["consumer"],
                               "age_ms": now_ms - id_ms(o["message_id"]), "idle_ms": o["time_since_delivered"],
                               "deliveries": o["times_delivered"]}
    return s


@app.command()
def status(
    redis_url: str = REDIS_OPT,
    pipeline: Optional[Path] = typer.Option(
        None, help="take stream, group and dead-letter names from this file, and show its books' price alerts"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Stream length, group lag, pending entries per consumer with idle time, oldest pending age;
    with --pipeline, fills booked beyond their price band (docs/price-protection.md)."""
    cfg, loaded = DEFAULTS, None
    if pipeline is not None:
        loaded = load_pipeline(pipeline)
        cfg = loaded.redis
    from apex.safety_view import safety_lines, safety_status

    try:
        r = client(redis_url)
        s = group_status(r, cfg) | safety_status(r)
    except DOWN as e:
        err.print(f"redis unavailable at {redis_url}: {e}")
        raise typer.Exit(1)
    if loaded is not None:  # its books' ledgers say what price protection saw
        s["price_alerts"] = price_alerts_view.alerts(loaded)
    if as_json:
        print(json.dumps(s))
        return
    lag = "unknown (entries deleted or trimmed)" if s["lag"] is None else s["lag"]
    group = (f"lag {lag}, {s['pending']} pending" if s["group_exists"]
             else "not created yet (the first `apex run` creates it)")
    out.print(f"stream {s['stream']}: {s['length']} entries   group {s['group']}: {group}", highlight=False)
    t = Table(title="pending per consumer")
    for c in ("consumer", "pending", "idle"):
        t.add_column(c, justify="left" if c == "consumer" else "right")
    for c in s["consumers"]:
        t.add_row(c["name"], str(c["pending"]), f"{c['idle_ms'] / 1000:.1f} s")
    out.print(t)
    o = s["oldest_pending"]
    if o:
        out.print(f"oldest pending: {o['id']} ({o['consumer']}) age {o['age_ms'] / 1000:.1f} s, "
                  f"idle {o['idle_ms'] / 1000:.1f} s, delivered {o['deliveries']}x", highlight=False)
    out.print(f"dead letters: {s['dead_letters']} in {s['dead_letter_stream']} "
              f"({s['dead_lettered_max_deliveries']} past max deliveries); failing now: {s['failing']}",
              highlight=False)
    out.print(f"invalid market entries: {s['invalid_market_entries']} (refused ticks, in the audit trail "
              "with their reasons)", highlight=False)
    for line in safety_lines(s):
        out.print(line, highlight=False, soft_wrap=True)
    for line in price_alerts_view.lines(s["price_alerts"]) if "price_alerts" in s else ():
        out.print(line, highlight=False)
