"""Redis Streams as a Bytewax source, and the acknowledgements that close the loop.

At-least-once by construction: an entry stays in the consumer group's
pending list (PEL) from XREADGROUP until the audit sink has made its outcome
durable and ``RedisAcker`` XACKs it. Anything in between (a crash, Redis
going away, an ``error`` outcome) leaves it pending, and it comes back: to the
same consumer on restart (its own PEL is read first), to any live consumer
through XAUTOCLAIM once it has been idle long enough. Processing it again is
safe because the ledger resumes a stream id instead of deciding it twice.
Bytewax's own recovery is not used: the PEL is the resume state.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Callable

import redis
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors.entry import Entry
from connectors.redis_config import RedisConfig
from operators.audit import INVALID_TICK, Outcome

log = logging.getLogger("apex.redis")

# BusyLoadingError (Redis replaying its AOF after a restart) is a ConnectionError.
DOWN = (redis.ConnectionError, redis.TimeoutError)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 2.0
ACK_PATIENCE_S = 5.0  # past this the acks are dropped: the entries stay pending and come back
LOGGED_ERRORS = 20  # distinct error messages shown in a run; past it they are only counted
PAUSE = timedelta(milliseconds=200)  # how often a paused source asks again whether it may read


def connect(url: str) -> redis.Redis:
    """No client-side retries: redis-py's default retry sleeps inside a call,
    which would stall the Bytewax worker; callers back off on their own terms."""
    return redis.Redis.from_url(url, decode_responses=True, encoding_errors="replace",
                                socket_connect_timeout=1.0, socket_timeout=5.0,
                                retry=Retry(NoBackoff(), 0))


def errors_key(stream: str, group: str) -> str:
    """stream id -> last error of a non-terminal outcome, so a dead letter can say why."""
    return f"{stream}:{group}:errors"


def counters_key(cfg: RedisConfig) -> str:
    return f"{cfg.stream}:{cfg.group}:counters"


def ensure_group(r: redis.Redis, cfg: RedisConfig, stream: str | None = None) -> None:
    """Id 0, so a fresh group also sees what Argus published before Apex first started."""
    try:
        r.xgroup_create(stream or cfg.stream, cfg.group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


class Backoff:
    """Capped exponential delay with jitter (workers restarted together should
    not knock in step); an outage is logged once, and its length on recovery."""

    def __init__(self, who: str):
        self.who, self.delay, self.since = who, 0.0, None

    def failed(self, err: Exception) -> float:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: redis unavailable (%s); retrying with backoff", self.who, err)
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self.delay * 2))
        return self.delay * random.uniform(0.5, 1.0)

    def recovered(self) -> None:
        if self.since is not None:
            log.warning("%s: redis reconnected after %.2f s", self.who, time.monotonic() - self.since)
        self.since, self.delay = None, 0.0


class _RedisPartition(StatelessSourcePartition[Entry]):
    """Every stream of the source in one XREADGROUP: a blocking read on one
    stream would otherwise hold up entries arriving on another, and one call
    a poll costs less CPU than one a stream."""

    def __init__(self, cfg: RedisConfig, streams: tuple[str, ...], consumer: str, source: "RedisStreamSource"):
        self.cfg, self.streams, self.consumer, self.source = cfg, streams, consumer, source
        self.r = connect(cfg.url)
        self.backoff = Backoff(f"source {consumer}")
        self._group_ready = False
        # own pending first (a previous life's), stream by stream, then '>'
        self._history: dict[str, str] = {s: "0" for s in streams}
        self._claim_at = 0.0
        self._claim_from = {s: "0-0" for s in streams}
        self._claim_every = max(0.01, min(cfg.claim_idle_ms / 2000, 1.0))
        self._awake: datetime | None = None
        self._active_at = time.monotonic()

    def next_batch(self) -> list[Entry]:
        if self.source.stopping:
            raise StopIteration
        if not self.source.accepting():
            self.source.stats["paused"] += 1
            self._awake = datetime.now(timezone.utc) + PAUSE
            return []
        try:
            batch = self._read()
            done = not batch and self._drained()
        except DOWN as err:
            self._awake = datetime.now(timezone.utc) + timedelta(seconds=self.backoff.failed(err))
            return []
        except redis.ResponseError as err:
            if "NOGROUP" not in str(err):
                raise
            self._group_ready = False  # Redis came back without the group: create it again
            return []
        self.backoff.recovered()
        self._awake = None
        if batch:
            self._active_at = time.monotonic()
        if done:
            raise StopIteration
        return batch

    def next_awake(self) -> datetime | None:
        return self._awake

    def close(self) -> None:
        self.r.close()

    def _read(self) -> list[Entry]:
        cfg = self.cfg
        if not self._group_ready:
            for stream in self.streams:
                ensure_group(self.r, cfg, stream)
            self._group_ready = True
        if self._history:
            got = self._xread(dict(self._history), None)
            out: list[Entry] = []
            for stream in list(self._history):
                entries = got.get(stream)
                if entries:
                    out += self._admit(stream, entries)
                    self._history[stream] = entries[-1][0]
                else:
                    del self._history[stream]
            if out or not self._history:
                return out
        out = []
        if time.monotonic() >= self._claim_at:
            out = self._claim()
        now_ms = int(time.time() * 1000)
        got = self._xread({s: ">" for s in self.streams}, cfg.block_ms)
        for stream, entries in got.items():
            out += [self._entry(stream, sid, f, 1, now_ms) for sid, f in entries]
        return out

    def _xread(self, ids: dict[str, str], block: int | None) -> dict[str, list[tuple[str, dict]]]:
        res = self.r.xreadgroup(self.cfg.group, self.consumer, ids, count=self.cfg.count, block=block)
        return {stream: entries for stream, entries in res or ()}

    def _claim(self) -> list[Entry]:
        """A dead consumer's entries, and our own that failed, once idle long enough."""
        out: list[Entry] = []
        more = False
        for stream in self.streams:
            nxt, got, *_ = self.r.xautoclaim(stream, self.cfg.group, self.consumer, self.cfg.claim_idle_ms,
                                             self._claim_from[stream], count=self.cfg.count)
            self._claim_from[stream] = nxt
            more = more or (nxt != "0-0" and len(got) >= self.cfg.count)
            self.source.stats["claimed"] += len(got)
            out += self._admit(stream, got)
        self._claim_at = 0.0 if more else time.monotonic() + self._claim_every
        return out

    def _admit(self, stream: str, got: list[tuple[str, dict]]) -> list[Entry]:
        """Redelivered entries: dead-letter those past the delivery limit."""
        p = self.r.pipeline(transaction=False)
        for sid, _ in got:
            p.xpending_range(stream, self.cfg.group, sid, sid, 1)
        counts = {r[0]["message_id"]: r[0]["times_delivered"] for r in p.execute() if r}
        now_ms, out = int(time.time() * 1000), []
        for sid, fields in got:
            n = counts.get(sid)
            if n is None:
                continue  # acked meanwhile by whoever held it before
            if not fields:  # deleted from the stream (XDEL, MAXLEN): nothing left to decide
                self.r.xack(stream, self.cfg.group, sid)
            elif n > self.cfg.max_deliveries:
                self._dead_letter(stream, sid, fields, n)
            else:
                out.append(self._entry(stream, sid, fields, n, now_ms))
        return out

    def _dead_letter(self, stream: str, sid: str, fields: dict, deliveries: int) -> None:
        cfg = self.cfg
        error = self.r.hget(errors_key(stream, cfg.group), sid) or "no error recorded"
        p = self.r.pipeline(transaction=True)
        p.xadd(cfg.dead_letter_stream, {**fields, "reason": f"max_deliveries: {error}", "stream_id": sid,
                                        "stream": stream, "deliveries": str(deliveries),
                                        "cause": "max_deliveries"})
        p.xack(stream, cfg.group, sid)
        p.hdel(errors_key(stream, cfg.group), sid)
        p.hincrby(counters_key(cfg), "dead_lettered", 1)
        p.execute()
        self.source.stats["dead_lettered"] += 1
        log.warning("dead-lettered %s %s after %d deliveries: %s", stream, sid, deliveries, error)

    def _entry(self, stream: str, sid: str, fields: dict, deliveries: int, now_ms: int) -> Entry:
        return Entry(stream, sid, fields, now_ms, time.perf_counter_ns(), deliveries)

    def _drained(self) -> bool:
        """--stop-when-idle: nothing new for that long and nothing of ours pending."""
        limit = self.cfg.stop_when_idle_ms
        if limit is None or self._history:
            return False
        if (time.monotonic() - self._active_at) * 1000 < limit:
            return False
        return not any(self.r.xpending_range(s, self.cfg.group, "-", "+", 1, consumername=self.consumer)
                       for s in self.streams)


def consumer_name(consumer: str, worker_index: int, worker_count: int) -> str:
    """Worker ``worker_index``'s consumer in the group: the configured name, with the worker's
    index after it when there are several workers (across a cluster's processes)."""
    return consumer if worker_count == 1 else f"{consumer}-{worker_index}"


class RedisStreamSource(DynamicSource[Entry]):
    """One consumer per Bytewax worker, all in one group: Redis hands each
    entry to exactly one of them, which is what a DynamicSource asks for.
    ``also`` are further streams read in the same call (prices and regimes)."""

    def __init__(self, cfg: RedisConfig, also: tuple[str, ...] = (), accepting: Callable[[], bool] | None = None):
        """``accepting``: asked before each read; while it answers False nothing is read or
        claimed. Entries already taken stay pending, unclaimed, so their delivery count
        does not climb towards the dead-letter limit while the outage lasts."""
        self.cfg = cfg
        self.streams = (cfg.stream, *(s for s in also if s != cfg.stream))
        self.stopping = False
        self.stats: Counter = Counter()
        self.accepting = accepting or (lambda: True)

    def stop(self) -> None:
        """From a signal handler: every partition ends at its next poll and the
        dataflow finishes what is already in flight."""
        self.stopping = True

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.cfg, self.streams, consumer_name(self.cfg.consumer, worker_index, worker_count),
                               self)


class RedisAcker:
    """Called by the audit sink once the batch's outcomes are durable; never before."""

    def __init__(self, cfg: RedisConfig):
        self.cfg = cfg
        self.r = connect(cfg.url)
        self.backoff = Backoff("acker")
        self.stats: Counter = Counter()
        self.logged: set[str] = set()  # the error messages shown so far

    def settle(self, outcomes: list[Outcome]) -> None:
        """One MULTI: dead letters for invalid payloads, XACK for every terminal
        outcome, the error of each non-terminal one (it stays pending). If Redis
        stays away past ACK_PATIENCE_S the batch is left pending instead of
        raising: redelivery and the ledger make that safe, a dead worker does not."""
        if not outcomes:
            return
        give_up = time.monotonic() + ACK_PATIENCE_S
        while True:
            try:
                self._pipeline(outcomes).execute()
                self.backoff.recovered()
                self.stats["acked"] += sum(bool(o.terminal and o.stream_id and not o.late) for o in outcomes)
                self._report([o for o in outcomes if o.stream_id and not o.terminal])
                return
            except DOWN as err:
                delay = self.backoff.failed(err)
                if time.monotonic() + delay > give_up:
                    self.stats["ack_deferred"] += len(outcomes)
                    log.warning("acker: %d outcomes left pending for redelivery", len(outcomes))
                    return
                time.sleep(delay)

    def _report(self, failed: list[Outcome]) -> None:
        """Each distinct error once, with the entry it first stopped; the rest are counted
        (``left_pending``): a broken filter fails every batch, and its message once a batch
        would bury everything else in the log."""
        self.stats["left_pending"] += len(failed)
        for o in failed:
            if o.reason in self.logged or len(self.logged) > LOGGED_ERRORS:
                continue
            self.logged.add(o.reason)
            if len(self.logged) > LOGGED_ERRORS:
                log.warning("more than %d distinct errors: further ones are only counted (left_pending)",
                            LOGGED_ERRORS)
            else:
                log.warning("entry %s left pending for a retry: %s (further entries failing the same way "
                            "are only counted: left_pending)", o.stream_id, o.reason)

    def _pipeline(self, outcomes: list[Outcome]):
        """Outcomes without a stream id (a trade closed on the clock) own no entry: nothing to ack."""
        cfg = self.cfg
        p = self.r.pipeline(transaction=True)
        done: dict[str, list[str]] = {}
        failed: dict[str, dict[str, str]] = {}
        refused_ticks = 0
        for o in outcomes:
            if not o.stream_id or o.late:
                continue
            stream = o.stream or cfg.stream
            if not o.terminal:
                failed.setdefault(stream, {})[o.stream_id] = o.reason or o.outcome
                continue
            if o.outcome == "invalid":
                p.xadd(cfg.dead_letter_stream, {**o.fields, "reason": o.reason, "stream_id": o.stream_id,
                                                "cause": "invalid"})
            elif o.outcome == INVALID_TICK:  # in the audit trail with its reason; counted for `apex status`
                refused_ticks += 1
            done.setdefault(stream, []).append(o.stream_id)
        if refused_ticks:
            p.hincrby(counters_key(cfg), "invalid_market_entries", refused_ticks)
        for stream, ids in done.items():
            p.xack(stream, cfg.group, *ids)
            p.hdel(errors_key(stream, cfg.group), *ids)
        for stream, errors in failed.items():
            p.hset(errors_key(stream, cfg.group), mapping=errors)
        return p

    def close(self) -> None:
        self.r.close()
