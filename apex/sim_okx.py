"""``apex sim okx``."""

from __future__ import annotations

from apex.refuse import refuse
from apex.app import err
from apex.sim_cli import sim


@sim.command("okx")
def okx() -> None:
    """Not built yet."""
    refuse(err, "apex sim okx is not built yet")
