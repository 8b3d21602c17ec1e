"""A recorded stream as a Bytewax source: one line per Redis stream entry.

A replay runs on the recording's own timeline (each entry is decided at the
time its stream id records), so TTLs and holding periods behave as they did
live, while the replay itself runs as fast as the machine allows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.entry import Entry, id_ms

# Entries a batch. Bytewax hands a batch through each step whole before the next step, so a
# batch's objects (~5 KB an entry: the pydantic models, the chain, the audit rows) are walked
# once a step: 512 of them no longer fit the core's cache, and a 100,000-entry replay ran
# 15-20% slower than with 128 (64 was no faster, 32 slower: each batch has its commit).
BATCH = 128


def read_lines(path: Path) -> Iterator[dict]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


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
