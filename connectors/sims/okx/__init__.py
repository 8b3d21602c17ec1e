"""A loopback OKX: the unmodified ccxt okx client places, queries and cancels spot orders
against it over HTTP, with OKX's envelope, error codes and rate limits, and faults on demand.

``state`` keeps the book (instruments, balances, orders, fills, last prices), ``limits``
OKX's documented request limits, ``faults`` the failures a test arms, ``server`` the
``/api/v5`` routes, ``ws`` the private WebSocket, ``control`` the ``/sim`` routes, and
``run`` starts it (blocking, or in a thread for tests)."""

from connectors.sims.okx.run import SimServer, running, serve
from connectors.sims.okx.ws import Credentials

__all__ = ["Credentials", "SimServer", "running", "serve"]
