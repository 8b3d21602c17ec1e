"""The Typer app every command module registers on, the two consoles they print
to, and the pipeline loader they share: command modules import this module, never
each other."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from dataflows.config import ConfigError, Pipeline, load
from operators.trading_mode import mode_refusals

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Apex: risk gate, Kelly sizing, idempotent execution and audit for trading signals.")
out = Console()
err = Console(stderr=True)


def load_pipeline(path: Path, state_dir: Optional[Path] = None, mode_check: bool = False,
                  source: Optional[str] = None) -> Pipeline:
    """``mode_check``: a refused file also says what APEX_ENV would refuse in its venues
    (`apex validate`, `apex run`), so every mistake comes at once, not one layer a time.
    ``source``: `--source`, which replaces the file's before the file is checked."""
    try:
        p = load(path, source=source)
    except ConfigError as e:
        for line in e.errors + (mode_refusals(e.venues) if mode_check else []):
            err.print(f"[red]error[/red] {path}: {escape(line)}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if state_dir is not None:
        from dataflows.gates import set_state_dir

        set_state_dir(p, state_dir)  # a command-line path is relative to where it was typed
    return p
