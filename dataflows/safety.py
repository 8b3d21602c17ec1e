"""What runs beside the dataflow in the worker's process to keep it safe: the heartbeat
publisher (``connectors/heartbeat.py``) and, when any market trades on a remote venue,
reconciliation while running and the clock check (``connectors/live_reconcile.py``).
Both are threads of their own: neither is on the decision path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors import heartbeat
from connectors.execution import is_remote
from connectors.live_reconcile import CONTROL_STREAM, LiveReconciler
from connectors.venues import Venue


def control_stream(pipeline: Any) -> str:
    """The control stream's key: the pipeline's when it names one, else ``apex:control``."""
    return pipeline.redis.control_stream or CONTROL_STREAM


@dataclass
class Safety:
    parts: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()
        self.parts.clear()


def start(pipeline: Any, redis_url: str, *, gateway: Any = None, shipper: Any = None,
          venues: Callable[[], Mapping[str, Venue]] | None = None, remote: bool = False) -> Safety:
    """``venues``: the pipeline's venues by market, as the books reach them; ``remote``: some
    market trades on a remote venue (else nothing can drift from the books, nor its clock)."""
    safety = Safety()
    probes = []
    if shipper is not None:
        probes.append(heartbeat.shipper_probe(shipper))
    if gateway is not None:
        probes.append(heartbeat.venues_probe(gateway))
    from dataflows.cluster import process_tag

    tag = process_tag(pipeline)
    safety.parts.append(heartbeat.Publisher(redis_url, probes=probes, period_s=pipeline.watchdog.heartbeat_s,
                                            tag=tag).start())
    if remote and venues is not None:
        def built() -> dict[str, Venue]:
            # the gateway closes the venues as the dataflow ends, before this thread stops:
            # from then on there is nothing to ask (a look would only find them away)
            if gateway is not None and gateway.closed:
                return {}
            return {market: v for market, v in venues().items() if is_remote(v)}

        alerts = gateway.events.put if gateway is not None else None  # each book's step records them
        safety.parts.append(LiveReconciler(pipeline, built, redis_url, control_stream=control_stream(pipeline),
                                           alerts=alerts, tag=tag).start())
    return safety
