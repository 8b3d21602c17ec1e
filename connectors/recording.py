"""A recorded stream as a Bytewax source: one line per Redis stream entry.

A replay runs on the recording's own timeline (each entry is decided at the
time its stream id records), so TTLs and holding periods behave as they did
live, while the replay itself runs as fast as the machine allows.
"""

from __future__ import annotations

import time
from pathlib import Path
import re
from typing import Iterator

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.entry import Entry, id_ms

# Entries a batch. Bytewax hands a batch through each step whole before the next step, so a
# batch's objects (the pydantic models, the chain, the audit rows) are walked once a step:
# much larger batches no longer fit the core's cache, and much smaller ones pay more
# commits (each batch has its own). BENCHMARKS.md has the sizes tried.
BATCH = 128
_STREAM_ID = re.compile(r"\d+-\d+")


def read_lines(path: Path) -> Iterator[dict]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


class NotARecording(ValueError):
    """A file (or one of its lines) that is not a recording: ``str`` is the one line to show."""


def _problem(rec: object) -> str:
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    sid = rec.get("id")
    if not isinstance(sid, str) or not _STREAM_ID.fullmatch(sid):
        return "no stream id: \"id\" must be like \"1767261600000-0\""
    if not isinstance(rec.get("fields", {}), dict):
        return "\"fields\" must be an object"
    if not isinstance(rec.get("stream", ""), str):
        return "\"stream\" must be a string"
    return ""


def check(path: Path) -> int:
    """Every line of ``path`` a recording entry (as ``apex record`` writes them); returns
    how many. Raises NotARecording naming the first line that is not, before any of the
    file is used, so nothing is published from a file that turns out to be something else."""
    n = 0
    try:
        with path.open("rb") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    why = _problem(orjson.loads(line))
                except orjson.JSONDecodeError:
                    why = "not JSON"
                if why:
                    raise NotARecording(f"{path} line {i}: not a recording entry ({why})")
                n += 1
    except OSError as err:
        raise NotARecording(f"{path}: {err.strerror}") from None
    return n


def count_entries(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


class _RecordingPartition(StatefulSourcePartition[Entry, int]):
    def __init__(self, path: Path, skip: int, source: "RecordingSource"):
        self.source = source
        self._it = read_lines(path)
        self._pos = 0
        for _ in range(skip):
            next(self._it, None)
            self._pos += 1

    def next_batch(self) -> list[Entry]:
        if self.source.stopping:
            raise StopIteration
        out = []
        now = time.perf_counter_ns()
        for rec in self._it:
            sid = rec["id"]
            out.append(Entry(rec.get("stream", ""), sid, rec.get("fields", {}), id_ms(sid), now))
            if len(out) >= BATCH:
                break
        if not out:
            raise StopIteration
        self._pos += len(out)
        return out

    def snapshot(self) -> int:
        return self._pos


class RecordingSource(FixedPartitionedSource[Entry, int]):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.stopping = False

    def stop(self) -> None:
        """From a signal handler (Ctrl-C): the replay ends at its next batch, as a live run
        does, and what is in flight is decided and recorded."""
        self.stopping = True

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RecordingPartition:
        return _RecordingPartition(self.path, resume_state or 0, self)
