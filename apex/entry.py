"""The `apex` command's entry point. `apex run` catches a stop (``apex/stopping.py``) before
anything else is loaded: loading the command's modules alone takes a noticeable part of a
second, in which a SIGTERM would otherwise end the process with no graceful stop. The other
commands keep the default handling."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        from apex import stopping

        stopping.catch()
    from apex.cli import main as cli_main

    cli_main()
