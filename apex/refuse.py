"""One line for a user's mistake, then the exit code that names its kind: 2 for a
command line that cannot work, 1 for a configuration or state that is refused."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console


def refuse(err: Console, message: str, code: int = 2) -> NoReturn:
    # soft_wrap: a message longer than the terminal (or than 80 columns when piped)
    # stays one line, so it can be grepped and read as the single line it is
    err.print(message, soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(code)
