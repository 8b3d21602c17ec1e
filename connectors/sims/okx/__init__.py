"""A loopback OKX: the unmodified ccxt okx client places, queries and cancels spot orders
against it over HTTP, with OKX's envelope, error codes and rate limits, and faults on demand.

``state`` keeps the book (instruments, balances, orders, fills, last prices), ``limits``
OKX's documented request limits, ``faults`` the failures a test arms, ``server`` the
``/api/v5`` routes, ``ws`` the private WebSocket, ``control`` the ``/sim`` routes, and
``run`` starts it (blocking, or in a thread for tests)."""

from __future__ import annotations

from typing import Any

__all__ = ["Credentials", "SimServer", "running", "serve"]


def __getattr__(name: str) -> Any:
    """The server's names, imported when first asked for: ``apex sim okx --help`` reads the
    light modules (``faults``, ``sim_routes``) of this package without loading aiohttp."""
    if name == "Credentials":
        from connectors.sims.okx.ws import Credentials

        return Credentials
    if name in ("SimServer", "running", "serve"):
        from connectors.sims.okx import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
