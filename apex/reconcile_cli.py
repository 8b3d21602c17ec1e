"""``apex reconcile``: start-up reconciliation on demand, and ``--adopt`` (dataflows/adopt.py).

It holds the state dir while it runs, as a run does: a ledger it adopts into must not be
written by a worker at the same time, and a report taken while a worker trades would
compare the venues with a book that is moving."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from apex.app import app, err, load_pipeline, out


def _say(line: str) -> None:
    out.print(line, soft_wrap=True, highlight=False, markup=False)


def _confirmed(question: str) -> bool:
    """y/N on the terminal; no answer (stdin closed) is no."""
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


@app.command()
def reconcile(
    pipeline: Path = typer.Option(Path("pipeline.yaml"), help="the pipeline whose venues and books to compare"),
    state_dir: Optional[Path] = typer.Option(None, help="where the books' ledgers are (default: the pipeline's)"),
    adopt: bool = typer.Option(False, "--adopt", help="take the holdings the books cannot explain into a book, "
                                           "bought at the venue's price out of its cash"),
    book: Optional[str] = typer.Option(None, help="the book that adopts, when several trade the venue"),
    yes: bool = typer.Option(False, "--yes", help="adopt without asking"),
) -> None:
    """Compare every venue with the books as start-up does: what differs, what is left alone,
    what --adopt would take. Exits 1 while anything differs."""
    from connectors import state_lock
    from dataflows import adopt as adoption
    from dataflows.gates import close_venues
    from dataflows.startup import adopted_line, survey
    from operators.reconcile import format_aside, format_report

    from dataflows import cluster

    p = load_pipeline(pipeline, state_dir and cluster.cluster_root(state_dir))
    try:
        lock = state_lock.acquire(p.state_dir)
        # a running cluster holds its processes' dirs under this one, not this one: its books'
        # ledgers and venue connections are as taken as a one-process worker's
        for held, holder in cluster.running(p.state_dir)[:1]:
            lock.release()
            raise state_lock.StateDirInUse(held, holder)
    except state_lock.StateDirInUse as e:
        err.print(str(e), soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)
    except OSError as e:
        err.print(f"state dir {p.state_dir}: {e.strerror or e}", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)
    shared: dict = {}
    try:
        try:
            report, books = survey(p, shared)
        except ValueError as e:  # a venue that cannot be set up as configured
            err.print(str(e), soft_wrap=True, highlight=False, markup=False)
            raise typer.Exit(2)
        for line in format_aside(report) + [adopted_line(name, fill) for name, fill in books.adopted]:
            _say(line)
        if report.ok:
            _say("the venues agree with the books: nothing to adopt")
            return
        for line in format_report(report)[:-1]:  # the differences, without "trading did not start"
            _say(line)
        # the real venues start-up opened give the prices; a paper market's price is the book's mark
        plans, refused = adoption.plan(p, report, shared, book, int(time.time() * 1000))
        for line in refused:
            _say(line)
        verb = "adopting" if adopt else "would adopt"
        for a in plans:
            _say(f"{verb}: {a.line()}")
        left = len(report.differences) - len(plans)
        if not adopt:
            if plans:
                _say(f"`apex reconcile --adopt` takes the {len(plans)} holding(s) above into the books")
            raise typer.Exit(1)
        if not plans:
            _say("nothing to adopt")
            raise typer.Exit(1)
        if not yes and not _confirmed(f"Adopt {len(plans)} holding(s) as above?"):
            _say("nothing adopted")
            raise typer.Exit(1)
        for a in plans:
            adoption.record(a)
            _say(f"adopted: {a.line()}")
        if left:
            _say(f"{left} difference(s) remain: trading will not start until they are settled")
            raise typer.Exit(1)
    finally:
        close_venues(shared)
        lock.release()

