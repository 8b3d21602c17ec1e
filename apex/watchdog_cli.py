"""``apex watchdog``: a process of its own that runs the kill switch when Apex or the signal
producer falls silent (connectors/watchdog.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from apex.app import app, load_pipeline


@app.command()
def watchdog(
    pipeline: Path = typer.Option(Path("pipeline.yaml"), help="the pipeline whose stages to watch"),
    state_dir: Optional[Path] = typer.Option(None, help="where the books' ledgers are (default: the pipeline's); a cluster's root, its processes found in it"),
    redis_url: Optional[str] = typer.Option(None, help="where the heartbeats are (default: the pipeline's source "
                                                       "when it is Redis, else its redis.url)"),
    consumer: Optional[str] = typer.Option(
        None, help="watch only the `apex run --consumer NAME` of several sharing the stream (give its --state-dir "
        "too): another's silence is not this kill switch's to act on (default: every stage)"),
) -> None:
    """Watch every stage's heartbeat; one silent for watchdog.silence_s runs `apex kill` (or
    `apex reduce`, watchdog.action), and says why. Runs until stopped."""
    import signal
    import threading

    from connectors.watchdog import Watchdog

    from dataflows.cluster import cluster_root

    # a cluster process's own dir names its cluster: the kill switch finds every process there
    p = load_pipeline(pipeline, state_dir and cluster_root(state_dir))
    cfg = p.watchdog
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    live = p.source if p.source.startswith(("redis://", "rediss://", "unix://")) else p.redis.url
    tag = None
    if consumer is not None:
        from dataflows.cluster import process_tag

        p.redis = p.redis.model_copy(update={"consumer": consumer})
        tag = process_tag(p)
    dog = Watchdog(redis_url or live, pipeline.resolve(), p.state_dir,
                   stream=p.redis.stream if cfg.producer else "", silence_s=cfg.silence_s, action=cfg.action,
                   check_s=cfg.check_s, standby=True, tag=tag)
    try:
        dog.run(stop)
    finally:
        dog.close()
