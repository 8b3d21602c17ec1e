"""``apex sim ibkr``."""

from __future__ import annotations

from apex.refuse import refuse
from apex.app import err
from apex.sim_cli import sim


@sim.command("ibkr")
def ibkr() -> None:
    """Not built yet."""
    refuse(err, "apex sim ibkr is not built yet")
