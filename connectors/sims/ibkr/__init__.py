"""A loopback TWS / IB Gateway speaking the TWS API wire protocol at server version 178,
enough of it for the unmodified ``ib_async`` client to connect, qualify stocks and trade
market orders, with the faults a real gateway shows (drops, delays, refusals) on demand."""

from connectors.sims.ibkr.server import Control, running, serve

__all__ = ["Control", "running", "serve"]
