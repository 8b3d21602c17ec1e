"""Keep the cyclic garbage collector's pauses out of the decision path.

A long-running worker accumulates long-lived objects (the book, open trades,
caches). CPython's full collection walks all of them, taking longer the older
the worker, and soon longer than the whole latency budget. Moving what has survived into the permanent generation every few seconds
(``gc.freeze``) leaves each collection only the objects made since. Reference
counting still frees everything as usual; only cyclic garbage that is alive at
a freeze is never reclaimed, and the pipeline's per-entry objects hold no cycles.

The young generation is collected every ``YOUNG_THRESHOLD`` net allocations instead
of CPython's 700. An entry's objects live until its batch is committed, so a collection
inside a batch walks the whole batch so far, its growing lists of audit rows included,
and at CPython's threshold that happens thousands of times in a long replay. The
threshold is set above what a batch leaves alive, so a batch's objects are freed
before a collection is due. The collection every ``interval_s`` still reclaims any cycle.
"""

from __future__ import annotations

import gc
import threading

INTERVAL_S = 5.0
YOUNG_THRESHOLD = 100_000  # above what a batch leaves alive until its commit


def quiet_gc(interval_s: float = INTERVAL_S) -> threading.Event:
    """Freeze now and every ``interval_s``; set the returned event to stop."""
    stop = threading.Event()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    def loop() -> None:
        while True:
            gc.collect(1)  # the young generations first: their garbage is not carried into the freeze
            gc.freeze()
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="apex-gc", daemon=True).start()
    return stop
