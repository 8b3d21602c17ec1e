"""`apex run` as a long-running service, around the dataflow it runs: the start-up report
(what a restart found), SIGHUP reload (``dataflows/reload.py``), and, with a metrics port,
the HTTP endpoint (``connectors/metrics.py``) and a sampler thread that reads what the
flow does not count itself (stream lag and pending, heartbeat ages) every few seconds.

Nothing here runs on the Bytewax worker's thread but the signal handlers, and those only
hand work to threads of their own.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors import metrics as m
from connectors import trading_state_store
from dataflows import batch_metrics, reload
from dataflows.config import Pipeline
from operators.trading_state import ACTIVE, STATES

log = logging.getLogger("apex.service")

SAMPLE_S = 5.0  # the heartbeat period: sampling faster would show nothing new
HEARTBEATS = "apex:hb:*"


def _redis_url(spec: str) -> str | None:
    return spec if spec.startswith(("redis://", "rediss://", "unix://")) else None


def pending_at_start(pipeline: Pipeline, source: str, consumers: list[str] | None = None) -> int | None:
    """Entries this process's consumers (``consumers``, default the pipeline's one) took in an
    earlier life and never acknowledged: read again before anything new. None when the source
    is not a Redis stream or cannot be asked."""
    url = _redis_url(source)
    if url is None:
        return None
    import redis

    from connectors.redis_streams import connect

    cfg = pipeline.redis
    r = connect(url)
    try:
        return sum(len(r.xpending_range(cfg.stream, cfg.group, "-", "+", 1_000_000, consumername=name))
                   for name in consumers or [cfg.consumer])
    except redis.RedisError:
        return None  # no group yet (a first start), or Redis away: the source will say
    finally:
        r.close()


def say_start(pipeline: Pipeline, source: str, shape, say: Callable[[str], None]) -> None:
    """The start line (``start_line``) for a run of ``shape`` (``dataflows.cluster.Shape``),
    `apex run` and ``bytewax.run`` alike: what its own workers' consumers left pending, and the
    crash window of the books it runs; reconciliation passed, or the gates refused the run."""
    from connectors.redis_streams import consumer_name

    first = shape.process * shape.workers
    names = [consumer_name(pipeline.redis.consumer, i, shape.total) for i in range(first, first + shape.workers)]
    say(start_line(pending_at_start(pipeline, source, names), crash_window(pipeline), "clean"))


def start_line(pending: int | None, crash_window: int, reconciliation: str) -> str:
    """One line for the operator: what this start found and did before the first decision."""
    parts = []
    if pending is not None:
        parts.append(f"recovered {pending} pending entr{'y' if pending == 1 else 'ies'}")
    parts.append(f"{crash_window} order{'' if crash_window == 1 else 's'} found in the crash window"
                 + (" (settled as the books start)" if crash_window else ""))
    parts.append(f"reconciliation {reconciliation}")
    return ", ".join(parts)


def crash_window(pipeline: Pipeline) -> int:
    from dataflows.startup import read_books

    return len(read_books(pipeline).in_flight)


def trading_states(pipeline: Pipeline) -> str:
    """/readyz's ``trading_state``: ``ok`` while every book's state is known (HALTED too: a
    halted book is a decision, not a fault), else which book's is not and why. A book with
    no ledger yet starts ACTIVE."""
    unknown = []
    for book in pipeline.each_book():
        name = book.book or "(one)"
        try:
            s = trading_state_store.read_file(book.ledger_path)
        except sqlite3.Error as err:
            unknown.append(f"{name}: its ledger cannot be read ({err})")
            continue
        if s is not None and s.state not in STATES:
            unknown.append(f"{name}: unknown state {s.state!r}")
    return "ok" if not unknown else "unknown: " + "; ".join(unknown)


@dataclass
class Service:
    pipeline: Pipeline
    source: str
    wiring: object
    endpoint: m.Endpoint | None = None
    reconciled: bool = True
    _stop: threading.Event = field(default_factory=threading.Event)

    def checks(self) -> dict[str, str]:
        """/readyz: each condition the run needs to trade, ``ok`` or why not."""
        out = {"redis": self._redis(), "audit_store": self._audit(), "reconciliation":
               "ok" if self.reconciled else "not passed", "venues": self._venues(),
               "trading_state": trading_states(self.pipeline)}
        return out

    def _redis(self) -> str:
        url = _redis_url(self.source)
        if url is None:
            return "ok"  # a recording: no Redis to reach
        import redis

        from connectors.redis_streams import connect

        r = connect(url)
        try:
            r.ping()
            return "ok"
        except redis.RedisError as err:
            return f"unreachable: {err}"
        finally:
            r.close()

    def _audit(self) -> str:
        shipper = getattr(self.wiring, "shipper", None)
        if shipper is None:
            return "ok"
        ok, why = shipper.accepting()
        return "ok" if ok else f"unavailable: {why}"

    def _venues(self) -> str:
        gateway = getattr(self.wiring, "gateway", None)
        away = gateway.away() if gateway is not None else []
        return "ok" if not away else "not connected: " + ", ".join(away)

    def sample(self) -> None:
        """Lag and pending of the streams read, and every heartbeat's age."""
        url = _redis_url(self.source)
        if url is None:
            return
        import redis

        from connectors.redis_streams import connect

        cfg = self.pipeline.redis
        r = connect(url)
        try:
            for stream in (cfg.stream, self.pipeline.prices.stream):
                for g in r.xinfo_groups(stream) if r.exists(stream) else ():
                    if g["name"] == cfg.group:
                        m.STREAM_LAG.labels(stream=stream).set(g.get("lag") or 0)
                        m.PENDING.labels(stream=stream).set(g.get("pending") or 0)
            now = time.time()
            for key in r.scan_iter(HEARTBEATS, count=100):
                try:
                    beat = json.loads(r.get(key) or "{}")
                    m.HEARTBEAT_AGE.labels(stage=key.removeprefix("apex:hb:")).set(max(0.0, now - float(beat["ts"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a heartbeat someone wrote wrong: not ours to judge here
        except redis.RedisError as err:
            log.debug("metrics sample: %s", err)
        finally:
            r.close()

    def _sampling(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample must not end the run
                log.exception("metrics sample failed")
            self._stop.wait(SAMPLE_S)

    def close(self) -> None:
        self._stop.set()
        if self.endpoint is not None:
            self.endpoint.close()
        reload.RELOADER = None
        batch_metrics.ON = False


def start(pipeline: Pipeline, source: str, wiring: object, load_again: Callable[[], Pipeline],
          metrics_port: int | None) -> Service:
    """The reload on SIGHUP and, with a port, the metrics endpoint and its sampler."""
    service = Service(pipeline, source, wiring)
    reloader = reload.Reloader(pipeline, load_again)
    reload.RELOADER = reloader
    # the handler runs on the worker's thread, between two of its Python calls: the file is
    # read and checked in a thread of its own, so no step waits on it
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reloader.request, name="apex-reload",
                                                             daemon=True).start())
    if metrics_port:
        batch_metrics.ON = True
        for book in pipeline.each_book():  # as the ledgers hold them; each change is set by the book's step
            s = trading_state_store.read_file(book.ledger_path)
            m.set_trading_state(book.book, s.state if s is not None else ACTIVE)
        service.endpoint = m.Endpoint(metrics_port, service.checks).start()
        threading.Thread(target=service._sampling, name="apex-metrics-sampler", daemon=True).start()
        log.info("metrics and health on http://127.0.0.1:%d (/metrics, /healthz, /readyz)", service.endpoint.port)
    return service


def admit_waiting(pipeline: Pipeline, say: Callable[[str], None], wait_s: float,
                  admit: Callable | None = None, sleep: Callable[[float], None] = time.sleep,
                  stopped: Callable[[], bool] = lambda: False):
    """``gates.admit``, a venue unreachable at start asked again for up to ``wait_s`` seconds
    (said once) instead of refusing the run; any other refusal, the time up, or a stop asked
    (``stopped``) refuses."""
    from dataflows import gates

    admit = admit or gates.admit
    deadline = time.monotonic() + wait_s
    delay, said = 0.5, False
    while True:
        try:
            return admit(pipeline, say)
        except gates.Refused as e:
            away = [line for line in e.lines if line.startswith("venue_unreachable:")]
            if not away or stopped() or time.monotonic() + delay > deadline:
                raise
            if not said:
                for line in away:
                    say(f"{line}; asking again for up to {wait_s:g} s (--wait-for-venues)")
                said = True
        sleep(delay)
        delay = min(delay * 2, 5.0)


class Observed:
    """The sink's observer, with one sample a batch for ``apex_stage_seconds{stage="durable"}``:
    the batch's first entry from its receipt to durable and acknowledged. One per batch keeps
    the sink's cost flat; over many batches the samples follow the entries' distribution."""

    def __init__(self, inner):
        self.inner = inner
        self._durable = m.STAGE_SECONDS.labels(stage="durable")

    def observe(self, outcomes: list, done_ns: int) -> None:
        if self.inner is not None:  # None: the metrics alone (bytewax.run prints no summary)
            self.inner.observe(outcomes, done_ns)
        for o in outcomes:
            if o.stream_id and o.received_ns and not o.late:
                self._durable.observe((done_ns - o.received_ns) / 1e9)
                break
