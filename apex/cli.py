"""The ``apex`` command."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.markup import escape
from rich.table import Table

from apex.app import app, err, load_pipeline, out
from apex.refuse import refuse
from dataflows.config import Pipeline
from operators.trading_mode import refusals


def _trail(state_dir: Optional[Path], pipeline: Optional[Path], clickhouse: Optional[str]) -> str:
    """The audit store `apex run` wrote: a --state-dir names it (relative to the current folder),
    else the pipeline's state_dir and clickhouse (--pipeline, or pipeline.yaml here if present),
    else .apex here."""
    if pipeline is None and state_dir is None and Path("pipeline.yaml").is_file():
        pipeline = Path("pipeline.yaml")
    from connectors.audit_query import absolute

    if pipeline is not None:
        p = load_pipeline(pipeline, state_dir)
        root, dsn = p.state_dir, absolute(clickhouse or p.clickhouse_dsn)
    else:
        root = (state_dir or Path(".apex")).resolve()
        dsn = absolute(clickhouse or f"chdb://{root / 'clickhouse'}")
    if dsn.startswith("chdb://") and not Path(dsn.removeprefix("chdb://")).exists():
        err.print(f"no audit trail under {root} (run `apex run` first, or pass --state-dir, --pipeline "
                  "or --clickhouse)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    return dsn


def _env() -> str:
    env = os.environ.get("APEX_ENV", "paper")
    if env not in ("paper", "live"):
        err.print(f"APEX_ENV must be paper or live, not {env!r}")
        raise typer.Exit(2)
    return env


@app.command()
def validate(pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="the pipeline file")) -> None:
    """Check pipeline.yaml; print every error with its YAML path, exit 1 if any."""
    p = load_pipeline(pipeline, mode_check=True)
    # the same venue checks as `apex run`, in this APEX_ENV: a pipeline that validates starts
    reasons = refusals(os.environ, p.venues)
    for reason in reasons:
        err.print(f"[red]error[/red] {pipeline}: {escape(reason)}", markup=True, highlight=False, soft_wrap=True)
    if reasons:
        raise typer.Exit(1)
    books = f" · books: {', '.join(b.book for b in p.books)}" if p.books else ""
    out.print(f"ok: {pipeline}: " + " → ".join(p.stages) + books, highlight=False)


@app.command()
def run(
    pipeline: Path = typer.Argument(Path("pipeline.yaml")),
    source: Optional[str] = typer.Option(None, help="recording:PATH or redis://HOST:PORT/DB (default: pipeline.yaml's)"),
    state_dir: Optional[Path] = typer.Option(None, help="ledger, paper venue and embedded ClickHouse"),
    consumer: Optional[str] = typer.Option(None, help="consumer name in the group (Redis sources)"),
    stop_when_idle: Optional[int] = typer.Option(
        None, metavar="MS", help="Redis sources: end after MS ms with nothing new and nothing of ours pending"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the summary as JSON"),
    progress: bool = typer.Option(True, help="show progress in a terminal"),
    metrics_port: Optional[int] = typer.Option(
        None, min=0, max=65535, help="serve /metrics, /healthz, /readyz here (default: pipeline.yaml's "
        "metrics_port; 0: off)"),
    log_format: Optional[str] = typer.Option(None, help="json or human (default: human in a terminal, else json)"),
    wait_for_venues: float = typer.Option(
        0, metavar="S", min=0, help="a venue unreachable at start is asked again for up to S seconds"),
    workers: Optional[int] = typer.Option(None, "-w", "--workers-per-process", help="workers in this process"),
    process_id: Optional[int] = typer.Option(None, "-i", "--process-id", help="this process's index in a cluster"),
    addresses: Optional[str] = typer.Option(
        None, "-a", "--addresses", help="every cluster process's host:port, separated by ';', or a file of "
        "them one a line (docs/cluster.md)"),
) -> None:
    """Run the pipeline until the source ends (a recording) or SIGTERM (a stream)."""
    from apex import stopping

    stopping.catch()  # installed already by the entry point; here too for `python -m apex.cli`
    from connectors import logs
    from dataflows.gates import Refused
    from dataflows.service import admit_waiting

    try:
        logs.setup(log_format)
    except ValueError as e:
        refuse(err, str(e))
    env = _env()
    p = load_pipeline(pipeline, state_dir, mode_check=True, source=source)
    said = logging.getLogger("apex.run")
    from dataflows import cluster

    try:
        shape = cluster.shape_of(workers, process_id, cluster.addresses_arg(addresses))
    except ValueError as e:
        refuse(err, f"apex run: {e}")
    try:
        # the gates `bytewax.run` passes too (one function, dataflows/gates.py): paper or live,
        # one worker per state dir, the venues agreeing with the books; in a cluster, on the
        # books this process runs (dataflows/cluster.py)
        books = cluster.place(p, shape)
        admitted = admit_waiting(p, said.info, wait_for_venues, admit=cluster.admitter(shape, books),
                                 sleep=stopping.pause, stopped=stopping.ASKED.is_set)
    except Refused as e:
        if stopping.ASKED.is_set():  # the wait for a venue ended by a stop: nothing was read
            said.info("stopped while waiting for the venues: nothing read", extra={"stage": "start"})
            raise typer.Exit(0)
        for line in e.lines:
            err.print(line, soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(e.code)
    overrides = {k: v for k, v in (("consumer", consumer), ("stop_when_idle_ms", stop_when_idle)) if v} or None
    port = p.metrics_port if metrics_port is None else metrics_port

    def load_again() -> Pipeline:  # SIGHUP: the file again, with this command line's overrides
        from dataflows.config import load

        again = load(pipeline, source=source)
        if state_dir is not None:
            from dataflows.gates import set_state_dir

            set_state_dir(again, state_dir)
        if overrides:
            again.redis = again.redis.model_copy(update=overrides)
        cluster.localize(again, shape)  # this process's state dir, audit store and IBKR client id
        return again

    try:
        _run(p, env, source, overrides, admitted.venues, json_out, progress, port, load_again,
             shape, getattr(admitted, "shipper", None))
    finally:
        # the state dir is free again for the next run, in this process too (a restart)
        admitted.release()


def _run(p: Pipeline, env: str, source: Optional[str], overrides: Optional[dict], shared: dict,
         json_out: Optional[Path], progress: bool, metrics_port: Optional[int] = None,
         load_again: Optional[Callable[[], Pipeline]] = None, shape=None, shipper=None) -> None:
    """The run itself, once every gate has let it in (``shared``: the venues they checked;
    ``shape``: the cluster this process is part of, ``shipper``: its books' in a cluster)."""
    from bytewax.testing import cluster_main
    from bytewax.testing import run_main as one_worker

    def run_main(flow):
        if shape is None or shape == cluster.Shape():
            return one_worker(flow)
        cluster_main(flow, list(shape.addresses), shape.process, worker_count_per_proc=shape.workers)

    from apex.gc_policy import quiet_gc
    from apex.summary import RunStats
    from dataflows import cluster
    from connectors.recording import RecordingSource, count_entries
    from dataflows import service
    from dataflows.apex import wire
    from operators import masking

    stats = RunStats()
    spec = source or p.source
    said = logging.getLogger("apex.run")
    try:
        flow, wiring = wire(p, source=source, observer=service.Observed(stats) if metrics_port else stats,
                            redis_overrides=overrides, shared_venues=shared, shipper=shipper)
    except ValueError as e:
        refuse(err, str(e))
    # its consumers', as the command line may have named them
    service.say_start(p, spec, shape or cluster.Shape(), lambda line: said.info(line, extra={"stage": "start"}))
    try:
        running = service.start(p, spec, wiring, load_again or (lambda: p), metrics_port)
    except OSError as e:  # the port taken, or not ours to bind
        refuse(err, f"apex run: cannot serve metrics on 127.0.0.1:{metrics_port}: {e.strerror or e} "
                    "(choose another --metrics-port, or 0 for none)")
    show = progress and sys.stderr.isatty()
    total = count_entries(wiring.source.path) if show and isinstance(wiring.source, RecordingSource) else None
    # a replay stops as a live run does: no more reading, in-flight work decided and recorded;
    # a stop asked while the run was starting stops the flow as it starts
    from apex import stopping

    stopping.then(wiring.stop)
    said.info(f"env={env} source={spec} state_dir={p.state_dir} clickhouse={masking.url(p.clickhouse_dsn)}",
              extra={"stage": "start"})
    quiet_gc()
    started = time.perf_counter()
    try:
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("decided"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=err, transient=True) as bar:
                task = bar.add_task("run", total=total)
                stats.on_batch = lambda n: bar.advance(task, n)
                run_main(flow)
        else:
            run_main(flow)
    finally:
        stopping.then(None)
        running.close()
    wiring.close()
    elapsed = time.perf_counter() - started
    summary = stats.as_dict() | {"seconds": round(elapsed, 3),
                                  "entries_per_second": round(stats.entries / elapsed, 1) if elapsed else 0}
    redis_stats = {k: v for part in (wiring.source, wiring.acker) for k, v in getattr(part, "stats", {}).items()}
    if redis_stats:
        summary["redis"] = redis_stats
    _print_summary(summary)
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))
    incomplete = wiring.shipper is not None and wiring.shipper.problem
    if incomplete:
        err.print(f"apex run: the audit trail is incomplete: {wiring.shipper.problem}", highlight=False,
                  soft_wrap=True)
    # a replay that could not decide everything failed, whatever it printed
    if incomplete or (summary["errors"] and isinstance(wiring.source, RecordingSource)):
        raise typer.Exit(1)


def _print_summary(s: dict) -> None:
    already = s["already_decided"]
    t = Table(title="apex run: entries by outcome", show_header=True)
    t.add_column("outcome")
    t.add_column("this run", justify="right")
    t.add_column("already decided", justify="right")
    for k, v in sorted(s["outcomes"].items(), key=lambda kv: -kv[1]):
        t.add_row(k, str(v - already.get(k, 0)), str(already.get(k, 0)))
    t.add_row("[b]total[/b]", str(s["entries"] - sum(already.values())), str(sum(already.values())))
    out.print(t)
    out.print(f"decided now {s['decided_now']} · already decided {sum(already.values())}", highlight=False)
    f = Table(title="drops per filter (share of received signals)")
    f.add_column("filter")
    f.add_column("drop rate", justify="right")
    for k, v in sorted(s["filter_drop_rate"].items(), key=lambda kv: -kv[1]):
        f.add_row(k, f"{v:.1%}")
    f.add_row("[b]before sizing[/b]", f"{s['dropped_before_sizing']:.1%} (target 40–60%)")
    out.print(f)
    lat = Table(title="processing latency (µs)")
    for c in ("", "p50", "p99", "p999", "max"):
        lat.add_column(c, justify="right")
    for name, key in (("portfolio step (decide, ledger, venue)", "step_latency_us"),
                      ("receipt → decided", "decision_latency_us"),
                      ("receipt → durable (audited, acked)", "durable_latency_us")):
        v = s[key]
        lat.add_row(name, *(f"{v[q]:,.0f}" for q in ("p50", "p99", "p999", "max")))
    out.print(lat)
    if "redis" in s:
        out.print("redis: " + "  ".join(f"{k} {v}" for k, v in sorted(s["redis"].items())), highlight=False)
    closes = ", ".join(f"{k} {v}" for k, v in sorted(s["closes"].items())) or "none"
    out.print(f"fills: {s['fills']}   closes: {closes}   realized PnL: {s['realized_pnl_usd']:,.2f} USD   "
              f"market entries: {s['market_entries']} ({s['invalid_market_entries']} refused)", highlight=False)
    out.print(f"{s['entries']} entries in {s['seconds']} s = {s['entries_per_second']:.0f} entries/s",
              highlight=False)
    if s["errors"]:
        err.print(f"error: {s['errors']} entries left undecided (a redelivery or a rerun decides them once fixed); the first: "
                  f"{s['first_error']}", highlight=False, markup=False, soft_wrap=True)


@contextmanager
def _reading(dsn: str) -> Iterator:
    """The audit store at ``dsn`` to read (through a running worker's shipper if it holds it);
    a store that cannot be read now is one line and exit 1."""
    from connectors.audit_query import TrailUnavailable, open_store

    try:
        store = open_store(dsn)
        try:
            yield store
        finally:
            store.close()
    except TrailUnavailable as e:
        err.print(f"apex: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


STATE_DIR_HELP = "where the run kept its state (default: the pipeline's state_dir, else .apex)"
PIPELINE_HELP = "the pipeline whose state_dir and clickhouse to read (default: pipeline.yaml here, if any)"


@app.command()
def audit(
    signal_id: Optional[str] = typer.Argument(None, help="one signal's decision chain; omit for all"),
    state_dir: Optional[Path] = typer.Option(None, help=STATE_DIR_HELP),
    pipeline: Optional[Path] = typer.Option(None, help=PIPELINE_HELP),
    clickhouse: Optional[str] = typer.Option(None, help="DSN (default: the pipeline's, or embedded chdb under state_dir)"),
    format: str = typer.Option("table", help="table or jsonl"),
) -> None:
    """Rebuild decision chains from the audit trail in ClickHouse."""
    from apex.audit_view import print_jsonl, print_table

    if format not in ("table", "jsonl"):
        err.print("--format must be table or jsonl")
        raise typer.Exit(2)
    where = "WHERE signal_id = {sid:String}" if signal_id else ""
    with _reading(_trail(state_dir, pipeline, clickhouse)) as store:
        rows = list(store.query_dicts(
            "SELECT signal_id, stream_id, seq, stage, outcome, reason, ts, source, venue, symbol, size_usd,"
            f" details, latency_us, book FROM audit_events FINAL {where} ORDER BY ts, stream_id, seq",
            {"sid": signal_id} if signal_id else None,
        ))
    if signal_id and not rows:
        err.print(f"no audit events for signal_id {signal_id!r}")
        raise typer.Exit(1)
    if format == "jsonl":
        print_jsonl(rows)
        return
    print_table(rows, signal_id, out)


@app.command()
def report(
    state_dir: Optional[Path] = typer.Option(None, help=STATE_DIR_HELP),
    pipeline: Optional[Path] = typer.Option(None, help=PIPELINE_HELP),
    clickhouse: Optional[str] = typer.Option(None, help="DSN (default: the pipeline's, or embedded chdb under state_dir)"),
    html: Optional[Path] = typer.Option(None, "--html", help="also write a self-contained HTML page with charts"),
    initial_nav: float = typer.Option(1_000_000.0, help="NAV the equity curve starts from"),
) -> None:
    """Kelly efficiency, win rates, PnL, drop rates, latency and open positions from ClickHouse."""
    from apex.report import command

    dsn = _trail(state_dir, pipeline, clickhouse)
    with _reading(dsn) as store:
        command(store, dsn, html, initial_nav, out, err)


def _checkout_on_path() -> None:
    """The bench ships with the repository, not with the package: find the checkout
    this apex was installed from (editable), or else the current folder."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "bench" / "command.py").is_file() and (root / "scripts" / "make_recording.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return
    refuse(err, "apex bench runs from a checkout of the Apex repository (git clone, make install, then apex bench)")


@app.command()
def bench(
    quick: bool = typer.Option(False, help="every scenario at a small size (a smoke run, well under a minute)"),
    soak: Optional[float] = typer.Option(None, metavar="MINUTES", help="also run the soak for MINUTES at 200/s"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every measurement as JSON"),
    only: Optional[list[str]] = typer.Option(
        None, help="run only this scenario (repeatable): latency saturation recovery replay lookup venues soak"),
    keep: bool = typer.Option(False, help="keep the work dir (logs, ledgers, ack times) for a look"),
) -> None:
    """Measure Apex against the floor (a bare XREADGROUP → json.loads → XACK consumer) on a private redis-server."""
    _checkout_on_path()
    from bench.command import command

    raise typer.Exit(command(quick=quick, soak_minutes=soak, json_out=json_out, only=only, keep=keep,
                             out=out, err=err))


def register_all() -> None:
    """Every command module registers on the app as it is imported."""
    import apex.stream_cli  # noqa: F401  (registers publish, record, status)
    import apex.sim_ibkr  # noqa: F401  (registers sim ibkr)
    import apex.sim_okx  # noqa: F401  (registers sim okx)
    import apex.reconcile_cli  # noqa: F401  (registers reconcile)
    import apex.watchdog_cli  # noqa: F401  (registers watchdog)
    import apex.kill_cli  # noqa: F401  (registers kill, reduce, resume)
    import apex.config_cli  # noqa: F401  (registers config show)


def main() -> None:
    from apex.pipe_safe import PipeSafe

    register_all()
    sys.stdout = PipeSafe(sys.stdout)  # type: ignore[assignment]
    app()


if __name__ == "__main__":
    main()
