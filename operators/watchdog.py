"""The watchdog's rule, pure: which stages have been silent too long, and whether to act.

A stage is watched once it has been heard from (a heartbeat, or the producer's last
entry): a worker not started yet is not a frozen one. Silence is measured from the last
time a stage was heard, and never from before the watchdog started: a stream whose last
entry is a day old gives its producer the full allowance from the watchdog's start.
Apex's stages run the kill switch on every book when any of them is silent: a stage stuck
in its worker holds every book of that worker. A stage that says it stopped (its run ended
on purpose) is no longer watched: only a crash or a freeze falls silent without a word.

A watchdog that cannot reach Redis hears nothing, and that silence is its own, not the
stages': it never acts on it, and once Redis answers again every stage gets a full
allowance before its silence counts (the stages could not publish while Redis was away
either).

Each heartbeat also carries its stage's state (a book's trading state, a venue
connection's ``connected`` or ``reconnecting``): the watchdog says when one changes, and a
silence names the last state its stage said, so the operator reads what a frozen stage was
doing when it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SOURCE = "source"
SHIPPER = "shipper"
PRODUCER = "producer"
# states worth saying the first time a stage is heard in them: a book that starts, or is
# first seen, already not trading, and a venue connection first seen trying to come back
TOLD_AT_FIRST = ("HALTED", "REDUCING", "reconnecting")


def book_stage(name: str) -> str:
    return f"book:{name}"


def venue_stage(name: str) -> str:
    return f"venue:{name}"


@dataclass(frozen=True, slots=True)
class Silence:
    stage: str
    seconds: float
    state: str = ""  # the last state the stage said ("": none heard)

    def line(self) -> str:
        return f"{self.stage} silent for {self.seconds:.0f} s" + (f" (last {self.state})" if self.state else "")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``act``: the silences to act on now (empty: nothing to do); ``line``: what to say, if anything."""

    act: tuple[Silence, ...] = ()
    line: str = ""

    def reason(self) -> str:
        return "watchdog: " + ", ".join(s.line() for s in self.act)

    def worker_silent(self) -> bool:
        """Whether a stage of Apex's own is among the silent (not only the producer): then the
        worker cannot be counted on to carry a command out."""
        return any(s.stage != PRODUCER for s in self.act)


@dataclass
class Watch:
    """What the watchdog has heard, and whether it already acted on the present silence
    (it acts once per episode: running the kill switch again would change nothing)."""

    silence_s: float
    since: float = float("-inf")  # when the watchdog started: nothing is silent for longer than it watched
    heard: dict[str, float] = field(default_factory=dict)  # stage -> last time heard (unix s)
    acted: bool = False
    reachable: bool = True
    states: dict[str, str] = field(default_factory=dict)  # stage -> the last state it said

    def hear(self, beats: Mapping[str, float | None]) -> None:
        for stage, ts in beats.items():
            if ts is not None:
                ts = max(ts, self.since)
                if ts > self.heard.get(stage, float("-inf")):
                    self.heard[stage] = ts

    def note(self, states: Mapping[str, str]) -> list[str]:
        """The states heard now; what changed since the last look, said as lines (a stage's
        first state is news too, except the plain alive of a stage with no states)."""
        changed = []
        for stage, state in sorted(states.items()):
            was = self.states.get(stage)
            if state and state != was:
                if was is not None:
                    changed.append(f"{stage} now {state} (was {was})")
                elif state in TOLD_AT_FIRST:
                    changed.append(f"{stage} is {state}")
                self.states[stage] = state
        return changed

    def forget(self, stage: str) -> None:
        """A stage that said it stopped on purpose: not watched until it is heard again."""
        self.heard.pop(stage, None)
        self.states.pop(stage, None)

    def silences(self, now: float) -> list[Silence]:
        return [Silence(stage, now - ts, self.states.get(stage, "")) for stage, ts in sorted(self.heard.items())
                if now - ts > self.silence_s]

    def step(self, now: float, beats: Mapping[str, float | None] | None,
             states: Mapping[str, str] | None = None) -> Verdict:
        """One look. ``beats``: what Redis holds now (stage -> the time of its heartbeat, None
        when its key is gone); None when Redis could not be reached. ``states``: the state
        each heartbeat says (stage -> state)."""
        if beats is None:
            first = self.reachable
            self.reachable = False
            return Verdict(line="cannot reach Redis: the stages' heartbeats cannot be read; not acting on "
                                "this silence alone" if first else "")
        line = ""
        if not self.reachable:
            self.reachable = True
            self.heard = {stage: now for stage in self.heard}  # a full allowance from now
            line = "Redis answers again: watching the heartbeats"
        self.hear(beats)
        line = "; ".join(filter(None, [line, *self.note(states or {})]))
        silent = self.silences(now)
        if not silent:
            self.acted = False
            return Verdict(line=line)
        if self.acted:
            return Verdict(line=line)
        self.acted = True
        return Verdict(tuple(silent), line)
