"""Paper or live: whether the venues a pipeline names may be traded in the mode asked for.

Live trading must never start by accident. ``APEX_ENV`` says which mode is meant
(``paper`` unless it says ``live``), and every venue must agree with it: in paper, a
venue is the built-in paper venue or the venue's own paper environment (OKX demo
trading or a simulator on this machine, IBKR away from its live ports); in live, no
market may be left on the built-in paper venue, none may sit on a demo or paper
environment, every credential must be present, and the operator must also say
``APEX_LIVE_CONFIRM=yes``, so one mistyped variable alone can never send real orders.
IB's ports are paper or live only by convention (a gateway may be given any port): live
refuses IB's paper ports and takes a port of the operator's own, since the account, named
and not a paper one, is what says which money a run trades.

Pure: the environment comes in as a mapping and each reason to refuse goes out as a
sentence naming what to change. A credential is only ever named by its variable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from operators.signal import VENUES

if TYPE_CHECKING:  # the settings are read, never built, here
    from connectors.venues.settings import IbkrSettings, OkxSettings, VenueSettings

PAPER, LIVE = "paper", "live"
IB_PAPER_PORTS = {4002: "IB Gateway", 7497: "TWS"}  # IB's conventions, which a gateway may change
IB_LIVE_PORTS = {4001: "IB Gateway", 7496: "TWS"}
_IB_LIVE_ACCOUNT = re.compile(r"U\d+")  # an individual live account; paper ones start with DU


def mode(env: Mapping[str, str]) -> str | None:
    """``paper`` or ``live``; None for anything else."""
    value = env.get("APEX_ENV", PAPER)
    return value if value in (PAPER, LIVE) else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_simulator(url: str) -> bool:
    """An OKX URL on this machine: a simulator (``apex sim okx``), never OKX itself."""
    return bool(url) and is_loopback(urlsplit(url).hostname or "")


def credentials(settings: OkxSettings, live: bool = False) -> list[tuple[str, str]]:
    """(YAML path, variable name) of each credential the venue needs from the environment.
    A simulator needs none, except in live, where the simulator's URL is refused already and
    OKX itself will need them: said now, not after the URL is fixed."""
    if settings.kind != "okx" or (is_simulator(settings.url) and not live):
        return []
    return [(f"venues.okx.credentials.{field}", name) for field, name in settings.credentials]


def missing_credentials(env: Mapping[str, str], venues: VenueSettings, live: bool = False) -> list[str]:
    out = []
    for where, name in credentials(venues.okx, live) if venues.okx else []:
        if not env.get(name):
            out.append(f"{where}: environment variable {name} is not set")
    return out


def refusals(env: Mapping[str, str], venues: VenueSettings) -> list[str]:
    """Every reason not to start, each a sentence, all at once (none hides another: fixing
    one never uncovers the next); none: the venues agree with the mode."""
    chosen = mode(env)
    if chosen is None:
        return [f"APEX_ENV must be paper or live, not {env['APEX_ENV']!r}"]
    reasons = _paper(venues) if chosen == PAPER else _live(env, venues)
    return reasons + missing_credentials(env, venues, chosen == LIVE)


def mode_refusals(venues: VenueSettings | None) -> list[str]:
    """``refusals`` in this process's environment, for a file refused for other reasons too
    (none when its ``venues:`` section itself could not be read)."""
    import os

    return refusals(os.environ, venues) if venues is not None else []


def _paper(venues: VenueSettings) -> list[str]:
    out = []
    okx, ibkr = venues.okx, venues.ibkr
    if okx and okx.kind == "okx" and not okx.demo and not is_simulator(okx.url):
        out.append("APEX_ENV=paper: venues.okx would trade on OKX's live environment (demo: false); "
                   "set demo: true for OKX demo trading, or point url at a simulator")
    if ibkr and ibkr.kind == "ibkr":
        out += _ibkr_live_signs(ibkr)
    return out


def _ibkr_live_signs(ibkr: IbkrSettings) -> list[str]:
    out = []
    if ibkr.port in IB_LIVE_PORTS:
        out.append(f"APEX_ENV=paper: venues.ibkr.port {ibkr.port} is {IB_LIVE_PORTS[ibkr.port]}'s live port; "
                   "use its paper port (4002 IB Gateway, 7497 TWS)")
    if _IB_LIVE_ACCOUNT.fullmatch(ibkr.account):
        out.append("APEX_ENV=paper: venues.ibkr.account is a live account; use the paper account (it starts with DU)")
    return out


def _live(env: Mapping[str, str], venues: VenueSettings) -> list[str]:
    out = []
    if env.get("APEX_LIVE_CONFIRM") != "yes":
        out.append("APEX_ENV=live: trading real money also needs APEX_LIVE_CONFIRM=yes in the environment")
    for market in VENUES:
        if venues.kind(market) == PAPER:
            out.append(f"APEX_ENV=live: {market} orders would go to the built-in paper venue; "
                       f"give venues.{market} its own kind, or run with APEX_ENV=paper")
    okx, ibkr = venues.okx, venues.ibkr
    if okx and okx.kind == "okx":
        if is_simulator(okx.url):
            out.append("APEX_ENV=live: venues.okx.url points at a simulator on this machine; "
                       "leave it empty to trade on OKX")
        if okx.demo:
            out.append("APEX_ENV=live: venues.okx.demo is true (OKX demo trading); set demo: false to trade live")
    if ibkr and ibkr.kind == "ibkr":
        if ibkr.port in IB_PAPER_PORTS:
            out.append(f"APEX_ENV=live: venues.ibkr.port {ibkr.port} is {IB_PAPER_PORTS[ibkr.port]}'s paper port; "
                       "use its live port (4001 IB Gateway, 7496 TWS)")
        if not ibkr.account:
            out.append("APEX_ENV=live: venues.ibkr.account must name the account to trade")
        elif ibkr.account.startswith("DU"):
            out.append("APEX_ENV=live: venues.ibkr.account is a paper account (DU…); name the live account")
    return out
