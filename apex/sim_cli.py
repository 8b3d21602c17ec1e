"""``apex sim``: the loopback venue simulators, one command per venue, each in its own module
(``apex/sim_okx.py``, ``apex/sim_ibkr.py``) registered on this sub-app."""

from __future__ import annotations

import typer

from apex.app import app

sim = typer.Typer(no_args_is_help=True, help="Loopback simulators of the venues, for tests, demos and benches.")
app.add_typer(sim, name="sim")
