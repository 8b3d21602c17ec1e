"""``apex sim okx``: a loopback OKX for the unmodified ccxt client, until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rich.markup import escape

from apex.app import err, out
from apex.refuse import refuse
from apex.sim_cli import sim


def _number(option: str, text: str, *, whole: bool, low: float, high: float | None = None) -> float:
    """Numbers are read here rather than by Typer so that a mistake is one line, not a usage box."""
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or value != value or value < low or (high is not None and value > high):
        span = f"from {low:g} to {high:g}" if high is not None else f"{low:g} or more"
        refuse(err, f"{option} must be a {'whole ' if whole else ''}number {span}, not {text!r}")
    return value


def _credentials():
    """What a WebSocket login and a private REST request must show: the OKX credentials in the
    environment when all three are set (read there, never from the command line, where any
    process can see them); otherwise None, and any key is taken (every header still wanted)."""
    import os

    from connectors.sims.okx import Credentials

    values = [os.environ.get(name, "") for name in ("OKX_API_KEY", "OKX_API_SECRET", "OKX_API_PASSPHRASE")]
    return Credentials(*values) if all(values) else None


def _controls_help() -> str:
    """The faults and controls a running simulator takes over HTTP, as the epilog of its
    help: IBKR's are options, OKX's are armed while it runs, so they are listed here."""
    from connectors.sims.okx.faults import KIND_HELP
    from connectors.sims.okx.sim_routes import CONTROLS

    lines = ["Controls while it runs (JSON bodies, at http://HOST:PORT):", ""]
    lines += [f"{route}  {what}" for route, what in CONTROLS]
    lines += ["", "Fault kinds (POST /sim/fault):", ""]
    lines += [f"{kind}  {what}" for kind, what in KIND_HELP.items()]
    lines += ["", "Example: curl -d '{\"kind\": \"http_5xx\", \"times\": 2}' http://127.0.0.1:PORT/sim/fault"]
    # rich markup reads [..] as style tags, and a single newline as a space: both kept literal
    return "\n\n".join(escape(line) for line in lines if line)


@sim.command("okx", epilog=_controls_help())
def okx(
    port: str = typer.Option(..., metavar="PORT", help="port to listen on (0: any free one)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    latency_ms: str = typer.Option("0", "--latency-ms", metavar="MS", help="added to every /api/v5 answer"),
    orders_log: Optional[Path] = typer.Option(None, help="append one JSON line per order the venue accepts"),
    state_file: Optional[Path] = typer.Option(None, help="keep orders and balances here across restarts"),
    prices: Optional[Path] = typer.Option(None, metavar="FILE",
                                          help='JSON object of instId to last price, like {"BTC-USDT": 100.0}'),
    redis_url: Optional[str] = typer.Option(None, "--redis", metavar="URL",
                                            help="follow last prices on this Redis's price stream"),
    price_stream: str = typer.Option("argus:prices:stream", "--prices-stream", metavar="STREAM",
                                     help="the stream of {symbol, price, ts} ticks (as `apex sim ibkr`'s)"),
) -> None:
    """A loopback OKX: point ccxt at it with ex.urls['api']['rest'] = 'http://HOST:PORT' (and
    ccxt pro's ex.urls['api']['ws'] = 'ws://HOST:PORT/ws/v5'). Private requests and WebSocket
    logins are checked against OKX_API_KEY, OKX_API_SECRET and OKX_API_PASSPHRASE when all
    three are set. See docs/okx-simulator.md."""
    from connectors.sims.okx.run import load_prices, serve
    from connectors.sims import NO_PRICES

    number = int(_number("--port", port, whole=True, low=0, high=65535))
    latency = _number("--latency-ms", latency_ms, whole=False, low=0)
    for option, path in (("--orders-log", orders_log), ("--state-file", state_file)):
        if path is not None and not path.parent.is_dir():
            refuse(err, f"{option} {path}: No such file or directory")
    try:
        table = load_prices(prices)
    except ValueError as e:
        refuse(err, f"--prices {e}")
    import redis

    if redis_url is not None:
        try:
            redis.Redis.from_url(redis_url)
        except ValueError as e:
            refuse(err, f"--redis {redis_url!r}: {e}")
    if not table and redis_url is None:
        err.print(NO_PRICES, highlight=False, soft_wrap=True)
    try:
        serve(host, number, latency_ms=latency, orders_log=orders_log, state_file=state_file, prices=table,
              redis_url=redis_url, price_stream=price_stream, credentials=_credentials(),
              ready=lambda url: out.print(f"okx simulator listening on {url}", highlight=False))
    except KeyboardInterrupt:  # before the simulator's own handler is in place: the same clean stop
        raise typer.Exit(0) from None
    except redis.RedisError as e:
        refuse(err, f"--redis {redis_url}: {e}", 1)
    except OSError as e:
        refuse(err, f"cannot listen on {host}:{number}: {e.strerror or e}", 1)
    except ValueError as e:  # a state file that is not the simulator's
        refuse(err, f"--state-file {state_file}: {e}", 1)
