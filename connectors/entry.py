"""The item every source emits: one stream entry and the clock it is decided on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    stream: str
    stream_id: str
    fields: dict[str, str]
    clock_ms: int  # decision clock: the stream id's ms on replay, the wall clock live
    received_ns: int  # time.perf_counter_ns() when read, for processing latency
    deliveries: int = 1  # times Redis has handed this entry out (1 for recordings)


def id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])
