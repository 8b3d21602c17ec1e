"""``apex watchdog``'s loop: read the heartbeats (and the producer's stream) from Redis,
judge them (``operators/watchdog.py``), and when a stage is silent too long run the kill
switch, ``apex kill`` (or ``apex reduce``), as a process of its own: it acts on the venues
itself when the worker does not answer (a frozen worker cannot). Why it acted is said on
stderr and appended to ``<state_dir>/watchdog.jsonl``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from connectors import heartbeat
from operators.watchdog import PRODUCER, Verdict, Watch

log = logging.getLogger("apex.watchdog")
APEX = str(Path(sys.executable).with_name("apex"))
ACTION_TIMEOUT_S = 120.0
CONFIRM_S = 3.0  # what a running worker is given to confirm the kill before it is done at the venues


@dataclass
class Watchdog:
    """``command``: how the kill switch is run (default: the ``apex`` beside this Python)."""

    redis_url: str
    pipeline: Path
    state_dir: Path
    stream: str = ""  # the signal stream whose last entry says the producer is alive; "": not watched
    silence_s: float = 30.0
    action: str = "kill"
    check_s: float = 1.0
    command: Sequence[str] = (APEX,)
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    # a kill switch kept loaded and waiting (``apex kill --standby``): a frozen worker's silence
    # leaves it seconds, and a fresh process spends most of them loading its modules
    standby: bool = False
    # the tag of the one process watched (``dataflows.cluster.process_tag``; "": the one with
    # none), when several `apex run` share the Redis and this watchdog's kill switch reaches only
    # its state dir's books; None: every stage (one process, or a cluster, whose kill reaches all)
    tag: str | None = None

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=2)
        self.watch = Watch(self.silence_s, since=time.time())
        self.actions: list[tuple[Verdict, int]] = []  # (why, the command's exit status)
        self.states: dict[str, str] = {}  # the state each heartbeat said at the last look
        self._ready: subprocess.Popen | None = None
        if self.standby:
            self._ready = self._start_standby()

    def _argv(self) -> list[str]:
        return [*self.command, self.action, "--pipeline", str(self.pipeline), "--state-dir", str(self.state_dir)]

    def _start_standby(self) -> subprocess.Popen | None:
        try:
            return subprocess.Popen([*self._argv(), "--standby"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as e:
            self.say(f"apex watchdog: no kill switch kept ready ({e}): one is started when needed")
            return None

    def beats(self) -> dict[str, float | None] | None:
        """What Redis says now of every stage; None when it cannot be asked. The state each
        heartbeat says is kept in ``self.states`` for the look that follows."""
        try:
            got: dict[str, float | None] = {}
            self.states = {}
            for stage, (ts, state) in heartbeat.present(self.client).items():
                if self.tag is not None and heartbeat.tag_of(stage) != self.tag and stage != PRODUCER:
                    continue  # another process's: not this watchdog's to act on
                if state == heartbeat.STOPPED:
                    self.watch.forget(stage)
                else:
                    got[stage] = ts
                    self.states[stage] = state
            if self.stream:
                last = _last_entry_s(self.client, self.stream)
                got[PRODUCER] = max(filter(None, (last, got.get(PRODUCER))), default=None)
            for stage in self.watch.heard:  # a stage heard before whose key is gone: no news of it
                got.setdefault(stage, None)
            return got
        except redis.RedisError:
            return None

    def look(self, now: float | None = None) -> Verdict:
        beats = self.beats()
        verdict = self.watch.step(time.time() if now is None else now, beats, self.states)
        if verdict.line:
            self.say(f"apex watchdog: {verdict.line}")
        if verdict.act:
            self.act(verdict)
        return verdict

    def act(self, verdict: Verdict) -> int:
        reason = verdict.reason()
        # a silent stage of Apex's means a worker that will not carry the command out: the kill
        # acts at the venues at once; a silent producer alone leaves a live worker, which confirms
        confirm_s = 0.0 if verdict.worker_silent() else CONFIRM_S
        argv = [*self._argv(), "--reason", reason, "--confirm-within", f"{confirm_s:g}", "--by", "watchdog"]
        self.say(f"apex watchdog: {reason}: running apex {self.action}")
        # why is on record before acting: a kill that hangs or is killed leaves its reason behind
        self._record(verdict, reason, None, "")
        ready, self._ready = self._ready, None
        if ready is not None and ready.poll() is None:
            told = json.dumps({"reason": reason, "confirm_within": confirm_s, "by": "watchdog"}) + "\n"
            status, said = self._finish(ready, told)
        else:
            if ready is not None:
                ready.communicate()  # a standby that ended on its own: reaped, a fresh one acts
            try:
                status, said = self._finish(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                             stderr=subprocess.PIPE, text=True), None)
            except OSError as e:
                status, said = -1, f"{type(e).__name__}: {e}"
        if self.standby:
            self._ready = self._start_standby()
        self.say(f"apex watchdog: apex {self.action} exited {status}" + (f": {said}" if said else ""))
        self._record(verdict, reason, status, said)
        self.actions.append((verdict, status))
        return status

    def _finish(self, proc: subprocess.Popen, told: str | None) -> tuple[int, str]:
        """The kill switch's exit status and what it said; ``told``: a standby's order."""
        try:
            out, err = proc.communicate(told, timeout=ACTION_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.communicate()
            return -1, f"{type(e).__name__}: {e}"
        except OSError as e:  # a standby that went away as it was told
            proc.kill()
            proc.communicate()
            return -1, f"{type(e).__name__}: {e}"
        return proc.returncode, (out + err).strip()

    def _record(self, verdict: Verdict, reason: str, status: int | None, said: str) -> None:
        doc = {"ts": round(time.time(), 3), "action": self.action, "reason": reason, "exit": status,
               "silent": {s.stage: round(s.seconds, 1) for s in verdict.act},
               "states": {s.stage: s.state for s in verdict.act if s.state}, "output": said[-2000:]}
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.state_dir / "watchdog.jsonl", "a") as f:
                f.write(json.dumps(doc) + "\n")
        except OSError as e:
            self.say(f"apex watchdog: could not record to {self.state_dir / 'watchdog.jsonl'}: {e}")

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        self.say(f"apex watchdog: watching {self.redis_url} (silence {self.silence_s:g} s: apex {self.action})")
        while not stop.is_set():
            self.look()
            stop.wait(self.check_s)

    def close(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            try:
                ready.communicate("", timeout=10)  # end of input: a standby leaves without acting
            except (OSError, subprocess.TimeoutExpired):
                ready.kill()
                ready.communicate()
        self.client.close()


def _last_entry_s(client: redis.Redis, stream: str) -> float | None:
    """The time of the stream's last entry (its id's milliseconds); None for no stream."""
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:  # no such stream yet
        return None
    if not info.get("length"):
        return None
    last = info.get("last-generated-id") or info.get(b"last-generated-id")
    last = last.decode() if isinstance(last, bytes) else str(last)
    return int(last.split("-")[0]) / 1000
