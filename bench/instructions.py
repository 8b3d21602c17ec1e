"""Worker instructions per entry, the paper path's guard that machine noise cannot hide.

    valgrind --tool=callgrind --callgrind-out-file=OUT python -m bench.instructions N KIND DIR

runs the dataflow in-process on N entries (KIND ``replay``: the generator's recording as
the replay bench uses it, invalid and duplicate entries included; ``saturation``: the
bench's shaped signals, as a recording) through ``pipeline.yaml`` on the paper venue.
Instructions per entry are (total at 20,000 − total at 2,000) / 18,000: the start-up's
fixed cost cancels out. The audit shipper runs in a child process, not counted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bytewax.testing import run_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _entries(n: int, kind: str):
    from bench.signals import START_MS, TS, iso_us, recording, templates

    if kind == "replay":
        yield from recording(n)
        return
    for i, (_, text) in enumerate(templates(n)):  # one a millisecond, each stamped as it is "published"
        ms = START_MS + i
        yield {"stream": "argus:signals:stream", "id": f"{ms}-0",
               "fields": {"payload": text.replace(TS, iso_us(ms * 1000), 1)}}


def main() -> None:
    n, kind, d = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    d.mkdir(parents=True, exist_ok=True)
    rec = d / f"{kind}-{n}.jsonl"
    if not rec.exists():
        with rec.open("w") as fh:
            for e in _entries(n, kind):
                fh.write(json.dumps(e, separators=(",", ":")) + "\n")
    from dataflows.apex import wire
    from dataflows.config import load

    pipeline = load(str(ROOT / "pipeline.yaml"))
    pipeline.state_dir = d / f"state-{kind}-{n}"
    flow, wiring = wire(pipeline, source=f"recording:{rec}")
    run_main(flow)


if __name__ == "__main__":
    main()
