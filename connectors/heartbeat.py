"""Heartbeats: every stage says it is alive, in Redis, without ever waiting on Redis.

A stage notes its own progress (``PROGRESS.beat``: a dict write, in the stage's thread);
a small thread of its own publishes what was noted every period to ``apex:hb:<stage>``,
``{"ts": the time of the stage's last progress, "state": ..., "pid": ...}`` with a TTL of
three periods. The time is the stage's, not the publisher's: a stage stuck in its step
stops moving its time even while the publisher goes on, and the watchdog sees it age. A
process that dies stops publishing, and its keys expire.

The shipper (a process of its own) and the venue connections (their senders' threads) do
not pass through the worker's loop: they are asked by the publisher at each period
(``probes``), each answering for itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

import redis

log = logging.getLogger("apex.heartbeat")

PERIOD_S = 5.0
PREFIX = "apex:hb:"
STOPPED = "stopped"  # a stage's last word when its run ends on purpose

Probe = Callable[[], Iterable[tuple[str, float, str]]]  # -> (stage, ts, state) each


def key(stage: str) -> str:
    return PREFIX + stage


def tag_of(stage: str) -> str:
    """The tag of the process that wrote a stage's heartbeat (``@process-1``, ``@CONSUMER``;
    "": a process with none, ``Publisher``'s ``tag``)."""
    return "@" + stage.partition("@")[2] if "@" in stage else ""


class Progress:
    """Each stage's last progress, noted by the stage itself."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, str]] = {}

    def beat(self, stage: str, state: str = "running") -> None:
        self._last[stage] = (time.time(), state)

    def noted(self) -> list[tuple[str, float, str]]:
        return [(stage, ts, state) for stage, (ts, state) in list(self._last.items())]

    def forget(self) -> None:
        self._last.clear()


PROGRESS = Progress()  # this process's stages


def encode(ts: float, state: str, pid: int | None = None) -> str:
    return json.dumps({"ts": round(ts, 3), "state": state, "pid": os.getpid() if pid is None else pid})


def decode(raw: str | bytes | None) -> tuple[float, str] | None:
    """(ts, state) of a heartbeat's value; None for a missing or unreadable one."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return float(doc["ts"]), str(doc.get("state", ""))
    except (ValueError, TypeError, KeyError):
        return None


class Publisher:
    """The thread that writes the heartbeats. Redis away: said once, tried again next period."""

    def __init__(self, url: str, progress: Progress = PROGRESS, probes: Iterable[Probe] = (),
                 period_s: float = PERIOD_S, tag: str = ""):
        """``tag``: added to every stage's name, so the processes of a cluster, each with its
        own source, shipper and venue connections, never write over each other's heartbeats."""
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.progress, self.probes, self.period_s, self.tag = progress, list(probes), period_s, tag
        self._stop = threading.Event()
        self._down = False
        self.published: set[str] = set()  # every stage written: each is told ``stopped`` at the end
        self._thread = threading.Thread(target=self._run, name="apex-heartbeat", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The run ends on purpose: each stage's last word is ``stopped``, so the watchdog
        stops watching it rather than taking the end for a freeze (a crash says nothing)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(2)
        try:
            pipe = self.client.pipeline(transaction=False)
            for stage in self.published | {stage for stage, _, _ in self.beats()}:
                pipe.set(key(stage), encode(time.time(), STOPPED), ex=max(1, round(3 * self.period_s)))
            pipe.execute()
        except redis.RedisError as e:
            log.warning("heartbeats: could not say the stages stopped (%s); the watchdog may take it for a freeze", e)
        self.client.close()

    def beats(self) -> list[tuple[str, float, str]]:
        out = self.progress.noted()
        for probe in self.probes:
            try:
                out.extend(probe())
            except Exception as e:  # noqa: BLE001 - a probe that fails is a stage that says nothing
                log.debug("heartbeat probe failed: %s", e)
        return [(stage + self.tag, ts, state) for stage, ts, state in out]

    def publish(self) -> None:
        ttl = max(1, round(3 * self.period_s))
        pipe = self.client.pipeline(transaction=False)
        beats = self.beats()
        for stage, ts, state in beats:
            pipe.set(key(stage), encode(ts, state), ex=ttl)
        pipe.execute()
        self.published.update(stage for stage, _, _ in beats)

    def _run(self) -> None:
        while True:
            try:
                self.publish()
                if self._down:
                    log.warning("heartbeats: Redis answers again")
                self._down = False
            except redis.RedisError as e:
                if not self._down:
                    log.warning("heartbeats: cannot reach Redis (%s); trying again every %g s", e, self.period_s)
                self._down = True
            if self._stop.wait(self.period_s):
                return


def shipper_probe(shipper) -> Probe:
    """The shipper's process, alive, and whether its audit store takes what it ships."""
    def probe() -> list[tuple[str, float, str]]:
        proc = getattr(shipper, "_proc", None)
        if proc is None or proc.poll() is not None:
            return []
        _, healthy, _ = shipper.state()
        return [("shipper", time.time(), "shipping" if healthy else "store_failing")]
    return probe


CONNECTED, RECONNECTING = "connected", "reconnecting"  # a venue connection's states


def venues_probe(gateway) -> Probe:
    """Each venue connection a sender serves: its lanes alive, and whether the venue answers
    (``connected``) or the sender is trying it again until it does (``reconnecting``)."""
    def probe() -> list[tuple[str, float, str]]:
        return [(f"venue:{name}", time.time(), RECONNECTING if down else CONNECTED)
                for name, alive, down in gateway.senders_health() if alive]
    return probe


def read(client: redis.Redis, stages: Iterable[str]) -> dict[str, float | None]:
    """What Redis holds for each stage: the time of its last heartbeat, None when gone."""
    stages = list(stages)
    raw = client.mget([key(s) for s in stages]) if stages else []
    return {s: (d[0] if (d := decode(r)) else None) for s, r in zip(stages, raw)}


def present(client: redis.Redis) -> dict[str, tuple[float, str]]:
    """Every heartbeat Redis holds now, by stage."""
    keys = sorted(client.scan_iter(match=PREFIX + "*", count=200))
    raw = client.mget(keys) if keys else []
    out = {}
    for k, r in zip(keys, raw):
        d = decode(r)
        if d is not None:
            out[(k.decode() if isinstance(k, bytes) else k).removeprefix(PREFIX)] = d
    return out
