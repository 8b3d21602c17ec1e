"""Shared builders for the Apex tests: signal payloads, recordings, pipelines, runs.

Plain functions (no fixtures) so any test module can import them and
conftest.py stays free for infrastructure fixtures.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bytewax.testing import run_main

from connectors.clickhouse import AuditStore
from connectors.venues.paper import PaperVenue
from dataflows.apex import wire
from dataflows.config import Pipeline, parse
from operators.audit import Outcome
from operators.orders import Order
from operators.signal import Signal

STREAM = "argus:signals:stream"
APEX = str(Path(sys.executable).with_name("apex"))
DROP = object()  # pass as a field value to remove that field from the signal

# 2026-01-01T10:00:00.000Z is 1767261600000 ms; every default timestamp below is that instant.
BASE_SIGNAL: dict[str, Any] = {
    "version": "1.0",
    "signal_id": "sig-base",
    "timestamp": "2026-01-01T10:00:00.000Z",
    "ttl_seconds": 300,
    "source": "macro",
    "venue": "okx",
    "symbol": "BTC-USDT",
    "side": "buy",
    "confidence": 0.8,
    "regime": "trending_up",
    "reference_price": 100.0,
    "suggested_kelly": 0.01,
    "max_position_usd": 5000.0,
    "holding_period_hours": 4,
    "exit_rules": {
        "description": "Exit on a 5% adverse move or a regime change to choppy.",
        "hard_stop_pct": 0.05,
        "exit_regimes": ["choppy"],
        "max_holding_hours": 8,
    },
    "backtest_stats": {"win_rate": 0.62, "avg_win": 0.02, "avg_loss": 0.015, "trades": 500},
}


def sig(signal_id: str = "sig-base", **overrides: Any) -> dict[str, Any]:
    """A valid signal document with ``overrides`` applied (``DROP`` removes a field)."""
    doc = json.loads(json.dumps(BASE_SIGNAL))
    for k, v in {"signal_id": signal_id, **overrides}.items():
        if v is DROP:
            doc.pop(k, None)
        else:
            doc[k] = v
    return doc


def payload(doc: Any) -> str:
    return json.dumps(doc)  # allow_nan=True: float('nan') is written as the literal NaN


def model(signal_id: str = "sig-base", **overrides: Any) -> Signal:
    return Signal.model_validate(sig(signal_id, **overrides))


def entry(stream_id: str, fields: dict[str, str] | None = None, **signal_overrides: Any) -> dict:
    """One recording line. ``fields`` as given, else a payload built by ``sig``."""
    if fields is None:
        fields = {"payload": payload(sig(**signal_overrides))}
    return {"stream": STREAM, "id": stream_id, "fields": fields}


def write_recording(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))
    return path


KELLY_AND_EXECUTE = """
  - size: kelly
    vol_threshold: 0.15
    vol_haircut: 0.30
    drawdown_threshold: 0.10
    drawdown_haircut: 0.50
    tracker: {window: 20, min_trades: 5, bounds: [0.5, 1.5]}
  - execute:
      venue: paper
      initial_nav_usd: 1000000
      slippage_bps: 0
      fee_bps: 0
"""


def pipeline_yaml(state_dir: Path, filters: str) -> str:
    """A pipeline with the given filter stages (YAML list items, 2-space indented)
    followed by the seed's Kelly stage and a fee-free, slippage-free paper venue. No
    ``source``: each run passes its own recording."""
    return f"state_dir: {state_dir}\nstages:\n{filters.rstrip()}\n{KELLY_AND_EXECUTE}"


def make_pipeline(tmp_path: Path, filters: str, env: dict[str, str] | None = None) -> Pipeline:
    text = pipeline_yaml(tmp_path / "state", filters)
    return parse(text, tmp_path / "pipeline.yaml", {} if env is None else env)


@dataclass
class Collector:
    """The sink's observer: keeps every Outcome in the order it was made durable."""

    outcomes: list[Outcome] = field(default_factory=list)

    def observe(self, outcomes: list[Outcome], done_ns: int) -> None:
        self.outcomes.extend(outcomes)

    def table(self) -> list[tuple[str, str, str]]:
        return [(o.stream_id, o.outcome, o.reason) for o in self.outcomes]

    def by_signal(self, signal_id: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.signal_id == signal_id]


def run_flow(pipeline: Pipeline, recording: Path, venues: Any = None) -> Collector:
    """Run the real dataflow in-process over a recording and collect its outcomes.
    ``venues``: as ``wire`` takes them (a fake venue); None: the pipeline's."""
    obs = Collector()
    flow, _ = wire(pipeline, source=f"recording:{recording.resolve()}", observer=obs, venues=venues)
    run_main(flow)
    return obs


def run_entries(tmp_path: Path, pipeline: Pipeline, entries: list[dict], name: str = "rec.jsonl",
                venues: Any = None) -> Collector:
    return run_flow(pipeline, write_recording(tmp_path / name, entries), venues)


Place = Callable[[list[Order]], list]


class FakeVenue:
    """The pipeline's paper venue behind a hook, passed into the wiring: each batch sent
    goes to ``on_send(orders, place)``, which may place it (``place``: the paper venue's
    own), place part of it, refuse orders, or raise as a dying connection would.
    ``calls``: the client order ids of every batch sent, in order."""

    name = "paper"

    def __init__(self, pipeline: Pipeline, on_send: Callable[[list[Order], Place], list] | None = None):
        self.paper = PaperVenue(Path(pipeline.state_dir) / "paper-venue.sqlite",
                                slippage_bps=pipeline.execute.slippage_bps, fee_bps=pipeline.execute.fee_bps)
        self.on_send = on_send or (lambda orders, place: place(orders))
        self.calls: list[list[str]] = []

    def place_many(self, orders: list[Order]) -> list:
        self.calls.append([o.client_order_id for o in orders])
        return self.on_send(orders, self.paper.place_many)

    def __getattr__(self, name: str) -> Any:  # the rest of the interface: the paper venue's
        return getattr(self.paper, name)

    def sent(self) -> list[str]:
        return [cid for batch in self.calls for cid in batch]


def dies_on_send(pipeline: Pipeline, first: int = 1, accept: bool = True) -> FakeVenue:
    """A venue whose first ``first`` sends die, after taking the orders (``accept``) or before."""
    def on_send(orders: list[Order], place: Place) -> list:
        if len(venue.calls) <= first:
            if accept:
                place(orders)
            raise RuntimeError("killed while sending")
        return place(orders)

    venue = FakeVenue(pipeline, on_send)
    return venue


def paper_orders(pipeline: Pipeline) -> tuple[int, int]:
    venue = PaperVenue(Path(pipeline.state_dir) / "paper-venue.sqlite")
    try:
        return venue.orders_sent()
    finally:
        venue.db.close()


def audit_query(pipeline: Pipeline, sql: str, parameters: dict | None = None) -> list[tuple]:
    store = AuditStore(pipeline.clickhouse_dsn)
    try:
        return store.query(sql, parameters)
    finally:
        store.close()


def until(condition: Callable[[], Any], timeout: float = 60) -> bool:
    """Poll ``condition`` until it holds; False if it never did. The deadline only bounds
    a failure: a test waits on the condition, never on the time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def record_until(out: Path, lines: int, *args: str, timeout: float = 60) -> list[dict]:
    """`apex record` in a process of its own until ``out`` holds ``lines`` entries, then
    stopped (SIGINT): a capture window fixed in seconds starts before the recorder's first
    connection and, on a loaded machine, could close before its first read."""
    proc = subprocess.Popen([APEX, "record", "--out", str(out), "--duration", "3600", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout  # bounds a failure only
        while not (out.exists() and out.read_bytes().count(b"\n") >= lines):
            assert proc.poll() is None, f"apex record exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, f"apex record did not capture {lines} entries"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    # Ctrl-C ends a capture cleanly, the file whole, with what it recorded said
    assert code == 0 and "recorded " in proc.stderr.read(), f"apex record stopped with {code}"
    return [json.loads(line) for line in out.read_text().splitlines()]


def messages(text: str) -> list[str]:
    """The messages of the JSON log lines in a run's output (`apex run` logs JSON when its
    stderr is not a terminal)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line)["msg"])
            except (ValueError, KeyError):
                continue
    return out


def outbox_events(ledger) -> list[dict]:
    """The audit events waiting in a ledger's outbox, each as a dict of its columns."""
    import sqlite3

    from connectors import outbox
    from operators.audit import EVENT_COLUMNS

    db = sqlite3.connect(ledger)
    try:
        blobs = [b for (b,) in db.execute("SELECT rows FROM outbox ORDER BY seq")]
    finally:
        db.close()
    return [dict(zip(EVENT_COLUMNS, row)) for blob in blobs for row in outbox.decode(blob)["audit_events"]]
