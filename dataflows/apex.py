"""pipeline.yaml → Bytewax Dataflow.

    python -m bytewax.run "dataflows.apex:build('pipeline.yaml')"

Topology: source → validate → one step per portfolio-free filter, in YAML
order → the portfolio step (keyed on one portfolio key: portfolio filters,
Kelly sizing, execution, the book) → the audit sink, which writes ClickHouse
and only then acknowledges. Orders for venues across a network leave the portfolio
step as commands, after its commit, to the order sink (each venue's sender); the
venues' answers come back through the venue-event source, merged in front of the
portfolio step and keyed by book, so no step ever waits on a network.

With ``books:``, each book is its own key, so ``-w N`` spreads books over workers
while each book decides strictly in sequence: source → validate → route (a signal
to the one book that takes it, a market entry to every book) → each book's
portfolio-free filters → the portfolio step, keyed by book → gather (a market
entry's outcome waits for every book it reached) → the audit sink.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from operators.audit import Outcome

from connectors.audit_sink import Acker, AuditSink, Observer
from connectors.execution import is_remote
from connectors.order_flow import OrderSink, VenueEventSource, watched
from connectors.outbox import Shipper
from connectors.sender import Command, Gateway, SenderSettings
from connectors.recording import RecordingSource
from connectors.venues import Venue, Venues, VenueFactory
from connectors.venues.factory import build_venues
from dataflows.funding_step import start_reader
from dataflows.slicing_step import start_candles
from dataflows import cluster, gates
from dataflows.config import Pipeline, read_venue_lists
from dataflows.portfolio_step import PortfolioStep
from dataflows.portfolio_logic import PortfolioLogic
from dataflows.steps import book_filters, ignored_assets, router, stateless_filter, validator
from operators.signal import VENUES

PORTFOLIO_KEY = "portfolio"
_BUILDING = threading.Lock()  # books in worker threads open their venues at the same time


@dataclass
class Wiring:
    """What ``build`` made besides the flow: the parts a caller may inspect."""

    pipeline: Pipeline
    source: Any
    acker: Acker | None = None
    shipper: Shipper | None = None
    gateway: Gateway | None = None
    safety: Any = None  # the heartbeats and reconciliation while running (dataflows/safety.py)
    candles: Any = None  # slicing's volume from the venues' candles (connectors/candle_volume.py)

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGINT): the source stops reading; in-flight work finishes,
        and orders still working at a venue get a short grace (``order_flow.STOP_WAIT_S``)."""
        if self.gateway is not None:
            self.gateway.stopping = True
        getattr(self.source, "stop", lambda: None)()

    def close(self) -> None:
        """After the run: the threads beside it stop (heartbeats, reconciliation while running,
        the candle reader)."""
        if self.safety is not None:
            self.safety.stop()
        if self.candles is not None:
            self.candles.stop()


def make_source(spec: str, pipeline: Pipeline, relative_to: Path,
                accepting: Callable[[], bool] | None = None) -> tuple[Any, Acker | None]:
    """``accepting``: asked by a live source before each read; while it says no, nothing
    new is taken (the audit store is down and the outbox past its bound)."""
    if spec.startswith("recording:"):
        p = Path(spec.split(":", 1)[1])
        p = p if p.is_absolute() else relative_to / p
        if not p.is_file():  # the Rust side would panic on it
            raise ValueError(f"recording {p} does not exist")
        return RecordingSource(p), None
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from connectors.redis_streams import RedisAcker, RedisStreamSource

        cfg = pipeline.redis.model_copy(update={"url": spec})
        # prices and regimes come on their own stream, read in the same call
        return RedisStreamSource(cfg, also=(pipeline.prices.stream,), accepting=accepting), RedisAcker(cfg)
    raise ValueError(f"unknown source {spec!r}: use recording:PATH or redis://HOST:PORT/DB")


def make_venues(pipeline: Pipeline, env: Mapping[str, str] | None = None,
                shared: dict[str, Venue] | None = None) -> Venues:
    """The venues ``venues:`` names, by the market each serves; every other market on
    ``execute``'s paper venue (one simulator for all of them). ``env``: where credentials
    are read (default: this process's environment)."""
    paper = {"slippage_bps": pipeline.execute.slippage_bps, "fee_bps": pipeline.execute.fee_bps,
             "cash_usd": pipeline.execute.initial_nav_usd}
    return build_venues(pipeline.venues, state_dir=pipeline.state_dir, paper_options=paper,
                        env=os.environ if env is None else env, shared=shared)


def venue_factory(pipeline: Pipeline, venues: Venue | Venues | VenueFactory | None,
                  shared: dict[str, Venue] | None = None) -> VenueFactory:
    """A venue, venues by market, or a factory of them; None: the pipeline's, built in
    the worker that sends (its SQLite handle opened there), its real venues ``shared``
    with the other books'."""
    if venues is None:
        def build() -> Venues:
            with _BUILDING:
                return make_venues(pipeline, shared=shared)

        return build
    if isinstance(venues, Mapping):
        return lambda: venues
    if callable(venues):
        return venues
    return lambda: {market: venues for market in VENUES}


def wire(pipeline: Pipeline, *, source: str | None = None, observer: Observer | None = None,
         redis_overrides: dict[str, Any] | None = None, acker: Acker | None = None,
         shipper: Shipper | None = None,
         venues: Venue | Venues | VenueFactory | None = None,
         shared_venues: dict[str, Venue] | None = None) -> tuple[Dataflow, Wiring]:
    """``acker``: settles what the sink hands it, instead of the source's own (a test's
    stand-in, to see what is durable at the moment an entry would be acknowledged).
    ``shipper``: moves the outbox to the audit store, instead of one made from the pipeline.
    ``venues``: where orders go, instead of the pipeline's (``venue_factory``).
    ``shared_venues``: the pipeline's real venues already open (start-up reconciliation's)."""
    if redis_overrides:
        pipeline.redis = pipeline.redis.model_copy(update=redis_overrides)
    unread = read_venue_lists(pipeline)  # `venue` universes: the cached lists, as start-up left them
    if unread:
        raise ValueError("; ".join(unread))
    if source is None:
        spec, base = pipeline.source, pipeline.path.parent
    else:
        spec, base = source, Path.cwd()
    books = pipeline.each_book()
    shipper = shipper or Shipper({b.book: b.ledger_path for b in books}, pipeline.clickhouse_dsn)
    src, own_acker = make_source(spec, pipeline, base, lambda: shipper.accepting()[0])
    acker = acker or own_acker
    gateway = Gateway(sender_settings(pipeline))

    flow = Dataflow("apex")
    s = op.input("source", flow, watched(src, gateway))
    s = op.map("validate", s, validator(frozenset({pipeline.prices.stream}), pipeline.limits))
    ignored = {market: pipeline.venues.ignored(market) for market in VENUES}
    if any(ignored.values()):
        s = op.map("ignored_assets", s, ignored_assets(ignored))
    if pipeline.books:
        s = op.flat_map("route", s, router(books))
        s = op.map("book_filters", s, book_filters(books))
    else:
        s = _filter_steps(pipeline, s)
    remote = may_be_remote(pipeline, venues)
    if remote:  # the venues' answers, merged in front of the books (each book woken at the start)
        here = [b.book for b in books if cluster.here(b.book)]  # in a cluster, this process's books
        answers = op.input("venue_events", flow, VenueEventSource(gateway, here))
        s = op.merge("entries_and_answers", s, answers)
    control = control_source(pipeline, spec, [b.book for b in books], gateway, shared_venues or {})
    if control is not None:  # apex kill / reduce / resume, each to its book (connectors/control.py)
        s = op.merge("entries_and_controls", s, op.input("control", flow, control))
    keyed = op.key_on("portfolio_key", s, lambda item: item.book or PORTFOLIO_KEY)
    shared = {} if shared_venues is None else shared_venues
    candles = None
    if remote:  # funding on swaps, read off the decision path, reaches the books with the venues' answers
        start_reader(pipeline, books, shared, gateway)
        if spec.startswith(("redis://", "rediss://", "unix://")):  # live: a replay's clock is not the candles'
            candles = start_candles([b for b in books if cluster.here(b.book)], shared, gateway)
    steps = {b.book: PortfolioStep(b, venue_factory(b, venues, shared), shipper, gateway) for b in books}
    # a book trades only in the process whose gates admitted it (dataflows/cluster.py)
    decided = op.stateful_batch("portfolio", keyed, lambda book: PortfolioLogic(cluster.guarded(steps), book))
    outcomes = op.map("unkey", decided, lambda kv: kv[1])
    if remote:  # orders to remote venues leave through their sink
        split = op.branch("orders_or_outcomes", outcomes, lambda item: isinstance(item, Command))
        op.output("orders", split.trues, OrderSink(gateway))
        outcomes = split.falses
    if pipeline.books:
        outcomes = _gather(outcomes)
    op.output("audit", outcomes, AuditSink(shipper, acker, observer))
    wiring = Wiring(pipeline, src, acker, shipper, gateway)
    wiring.candles = candles
    if spec.startswith(("redis://", "rediss://", "unix://")):  # a live run: the watchdog may watch it
        from dataflows import safety

        # the real venues start-up opened (the books share them), or the ones the caller gave
        checked = (lambda: dict(shared)) if venues is None else venue_factory(pipeline, venues, shared)
        wiring.safety = safety.start(pipeline, spec, gateway=gateway, shipper=shipper, venues=checked, remote=remote)
    return flow, wiring


def control_source(pipeline: Pipeline, spec: str, books: list[str], gateway: Gateway,
                   shared: Mapping[str, Venue]) -> Any:
    """The control stream's source, on the Redis the signals come from (none for a
    recording); where it is is written in the state dir, for `apex kill` to find. With it,
    OKX's dead man's switch, armed while the source shows the dataflow alive."""
    if not spec.startswith(("redis://", "rediss://", "unix://")):
        return None
    from connectors.control import ControlSource
    from connectors.venues.okx_dead_man import DeadMansSwitch, Pulse
    from dataflows.kill import write_control_target

    stream = pipeline.redis.control_stream
    write_control_target(pipeline.state_dir, spec, stream)
    pulse, stops = Pulse(), []
    okx = pipeline.venues.okx
    if okx is not None and okx.kind == "okx" and okx.cancel_all_after_s and "okx" in shared:
        stops.append(DeadMansSwitch(shared["okx"], okx.cancel_all_after_s, pulse).stop)
    return ControlSource(spec, stream, books, gateway, pulse, stops)


def may_be_remote(pipeline: Pipeline, venues: Venue | Venues | VenueFactory | None) -> bool:
    """Whether any order may go to a venue across a network. A pipeline whose every market
    is on the paper venue gets no venue-event path: the paper venue answers in the step."""
    if venues is None:
        return any(b.venues.kind(m) != "paper" for b in (pipeline, *pipeline.each_book()) for m in VENUES)
    if isinstance(venues, Mapping):
        return any(is_remote(v) for v in venues.values())
    if callable(venues) and not hasattr(venues, "place_many"):
        return True  # a factory: what it makes is known only in the worker
    return is_remote(venues)  # type: ignore[arg-type]


def sender_settings(pipeline: Pipeline) -> dict[str, SenderSettings]:
    """Each real venue's sender, as ``venues.<name>`` sets it."""
    out = {}
    for market in VENUES:
        chosen = getattr(pipeline.venues, market, None)
        if chosen is not None and chosen.kind != "paper":
            out[chosen.kind] = SenderSettings(lanes=chosen.requests_in_flight, ask_after_s=chosen.ask_after_s)
    return out


def _filter_steps(pipeline: Pipeline, s: Stream) -> Stream:
    """One step per portfolio-free filter, in YAML order, named after it."""
    used: set[str] = set()
    for i, f in enumerate(pipeline.filters):
        if f.needs_portfolio:
            continue
        step_id = f"filter_{f.name}".replace(".", "_")
        if step_id in used:
            step_id = f"{step_id}_{i}"
        used.add(step_id)
        s = op.map(step_id, s, stateless_filter(i, f))
    return s


def _gather(outcomes: Stream) -> Stream:
    """A market entry reached every book: its outcome goes on to be acknowledged only
    once every book's is in (each already durable in its own ledger), and as terminal only
    if every book's was. Everything else passes straight through."""
    split = op.branch("fanned_out", outcomes, lambda o: o.copies > 1)
    keyed = op.key_on("entry_key", split.trues, lambda o: f"{o.stream}\x00{o.stream_id}")

    def gather(seen: tuple[int, bool] | None, o: Outcome) -> tuple[tuple[int, bool] | None, Outcome | None]:
        n, terminal = seen or (0, True)
        n, terminal = n + 1, terminal and o.terminal
        if n < o.copies:
            return (n, terminal), None
        o.terminal = terminal
        return None, o

    gathered = op.stateful_map("gather", keyed, gather)
    done = op.filter_map("gathered", gathered, lambda kv: kv[1])
    return op.merge("outcomes", split.falses, done)


def build(path: str = "pipeline.yaml", source: str | None = None, state_dir: str | None = None) -> Dataflow:
    """Entry point for ``python -m bytewax.run``. It passes the gates `apex run` passes (paper
    or live, one worker per state dir, start-up reconciliation: dataflows/gates.py), so no way
    of starting trades around them; a refusal ends it with its lines, never a traceback. The
    state dir stays held until the process ends: bytewax.run keeps nothing else of ours.
    Under bytewax.run it also serves what `apex run` serves a supervisor: its log lines,
    SIGHUP's reload and, with ``metrics_port:`` in the file, the metrics and health endpoint."""
    service_too = cluster.under_bytewax_run()
    if service_too:
        from connectors import logs

        logs.setup(None)  # as `apex run` without --log-format: human in a terminal, else JSON
    with gates.refused_in_lines():
        shape = cluster.bytewax_shape()  # -w, -i, -a as bytewax.run was given them
        pipeline = gates.load_pipeline(path, state_dir, source)
        books = cluster.place(pipeline, shape)
        admitted = cluster.admitter(shape, books)(pipeline, gates.say_on_stderr("apex: "))
        try:
            port = pipeline.metrics_port if service_too else None
            from dataflows import service

            flow, wiring = wire(pipeline, source=source, shared_venues=admitted.venues,
                                shipper=getattr(admitted, "shipper", None),
                                observer=service.Observed(None) if port else None)
            if service_too:
                service.say_start(pipeline, source or pipeline.source, shape,
                                  lambda line: logging.getLogger("apex.run").info(line, extra={"stage": "start"}))

                def load_again() -> Pipeline:  # SIGHUP: the file again, as this process runs it
                    again = gates.load_pipeline(path, state_dir, source)
                    cluster.localize(again, shape)
                    return again

                try:
                    service.start(pipeline, source or pipeline.source, wiring, load_again, port)
                except OSError as e:  # the port taken, or not ours to bind
                    raise gates.Refused([f"cannot serve metrics on 127.0.0.1:{port}: {e.strerror or e} "
                                         "(choose another metrics_port, or 0 for none)"]) from None
        except BaseException:
            admitted.release()
            raise
    return flow
