"""Keep the cyclic garbage collector's pauses out of the decision path.

A long-running worker accumulates long-lived objects (the book, open trades,
caches). CPython's full collection walks all of them: 20 ms and growing in a
worker a few thousand fills old, which is the whole latency budget many times
over. Moving what has survived into the permanent generation every few seconds
(``gc.freeze``) leaves each collection only the objects made since. Reference
counting still frees everything as usual; only cyclic garbage that is alive at
a freeze is never reclaimed, and the pipeline's per-entry objects hold no cycles.
"""

from __future__ import annotations

import gc
import threading

INTERVAL_S = 5.0


def quiet_gc(interval_s: float = INTERVAL_S) -> threading.Event:
    """Freeze now and every ``interval_s``; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            gc.collect(1)  # the young generations first: their garbage is not carried into the freeze
            gc.freeze()
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="apex-gc", daemon=True).start()
    return stop
