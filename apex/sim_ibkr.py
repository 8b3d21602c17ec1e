"""``apex sim ibkr``: a loopback TWS / IB Gateway (TWS API, server version 178) that the
unmodified ib_async client connects to, for tests, demos and benches. Numbers are read
as text and checked here, so a mistyped one is one clear line rather than a usage box."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer

from apex.app import err, out
from apex.refuse import refuse
from apex.sim_cli import sim


def _number(option: str, text: str, low: float, high: float, whole: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (low <= value <= high) or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        refuse(err, f"{option} must be {kind} from {low:g} to {high:.15g}, not {text!r}")
    return value


def _prices(path: Optional[Path]) -> dict[str, float] | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as e:
        refuse(err, f"--prices {path}: {e.strerror}")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not raw:
            raise ValueError("not an object")
        prices = {str(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError) as e:
        refuse(err, f"--prices {path}: a JSON object of symbol to last price is needed ({type(e).__name__})")
    if any(not p > 0 for p in prices.values()):
        refuse(err, f"--prices {path}: every price must be above 0")
    return prices


def _writable(option: str, path: Optional[Path]) -> None:
    if path is not None and not path.resolve().parent.is_dir():
        refuse(err, f"{option} {path}: its folder does not exist")


@sim.command("ibkr")
def ibkr(
    port: str = typer.Option("4002", metavar="PORT",
                             help="TCP port (4002: IB Gateway's paper port; 0: any free one, printed)"),
    host: str = typer.Option("127.0.0.1", metavar="ADDRESS", help="address to listen on"),
    latency_ms: str = typer.Option("0", "--latency-ms", metavar="MS", help="delay before answering each request"),
    orders_log: Optional[Path] = typer.Option(None, "--orders-log", metavar="FILE",
                                              help="one JSON line per order accepted"),
    state_file: Optional[Path] = typer.Option(None, "--state-file", metavar="FILE",
                                              help="orders and fills kept across restarts"),
    prices: Optional[Path] = typer.Option(None, "--prices", metavar="FILE",
                                          help='JSON {"AAPL": 100.0, …}: fill prices'),
    redis_url: Optional[str] = typer.Option(None, "--redis", metavar="URL",
                                            help="follow last prices on the Redis price stream (redis://HOST:PORT/DB)"),
    prices_stream: str = typer.Option("argus:prices:stream", "--prices-stream", metavar="STREAM",
                                      help="the price stream's key"),
    account: str = typer.Option("DU1234567", metavar="ACCOUNT", help="the account the gateway manages"),
    cash: str = typer.Option("1000000", metavar="USD", help="USD cash before any order"),
    partial: str = typer.Option("1", metavar="FRACTION",
                                help="fraction of each order filled at once; the rest works until cancelled"),
    drop_orders: str = typer.Option("0", "--drop-orders", metavar="N",
                                    help="drop the socket after filling the next N orders"),
    refuse_first: str = typer.Option("0", "--refuse-first", metavar="N", help="close the first N connections at once"),
    error_103: str = typer.Option("0", "--error-103", metavar="N",
                                  help="fill the next N orders but answer each with error 103 (duplicate order id)"),
    reject: list[str] = typer.Option([], "--reject", metavar="SYMBOL", help="refuse orders for SYMBOL (error 201)"),
    clock_skew_s: str = typer.Option("0", "--clock-skew-s", metavar="SECONDS",
                                     help="reqCurrentTime answers this far from this machine's clock"),
) -> None:
    """Serve a simulated IB Gateway until Ctrl-C or SIGTERM."""
    from connectors.sims.ibkr.faults import Faults
    from connectors.sims.ibkr.server import serve

    port_n = int(_number("--port", port, 0, 65535, whole=True))
    latency = _number("--latency-ms", latency_ms, 0, 600_000)
    fraction = _number("--partial", partial, 0, 1)
    faults = Faults(partial=None if fraction == 1 else fraction,
                    drop_orders=int(_number("--drop-orders", drop_orders, 0, 1e9, whole=True)),
                    refuse_first=int(_number("--refuse-first", refuse_first, 0, 1e9, whole=True)),
                    error_103=int(_number("--error-103", error_103, 0, 1e9, whole=True)), reject=set(reject))
    if not account.isalnum():
        refuse(err, f"--account must be letters and digits (like DU1234567), not {account!r}")
    _writable("--orders-log", orders_log)
    _writable("--state-file", state_file)
    price_map = _prices(prices)
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        refuse(err, f"--redis must be a redis:// URL, not {redis_url!r}")
    if not price_map and redis_url is None:
        from connectors.sims import NO_PRICES
        err.print(NO_PRICES, highlight=False, soft_wrap=True)
    try:
        serve(host, port_n, latency_ms=latency, orders_log=orders_log, state_file=state_file, prices=price_map,
              account=account, cash=_number("--cash", cash, 0, 1e15), faults=faults, redis_url=redis_url,
              prices_stream=prices_stream, stop_signals=(signal.SIGINT, signal.SIGTERM),
              clock_skew_s=_number("--clock-skew-s", clock_skew_s, -1e9, 1e9),
              on_ready=lambda p: out.print(f"IBKR simulator listening on {host}:{p} (server version 178, "
                                           f"account {account})", highlight=False, soft_wrap=True))
    except KeyboardInterrupt:  # before the loop's own handlers were in place
        pass
    except OSError as e:
        refuse(err, f"cannot listen on {host}:{port_n}: {e.strerror or e}")
    except json.JSONDecodeError:
        refuse(err, f"--state-file {state_file}: not a state file this simulator wrote")
    out.print("IBKR simulator stopped", highlight=False, soft_wrap=True)

