"""The venues a pipeline trades on, by the market a signal names, built from its settings.

Markets without a venue of their own share one built-in paper venue, as they always
have. A real venue's credentials are read from the environment mapping handed in (the
process's, at the call site) and kept as ``SecretStr`` until the moment the client is
made, so no repr, log line or error on the way can show one. The real clients are
imported only when a pipeline names them, so a paper pipeline needs neither ccxt nor
an IB connection; a test hands its own classes in instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from connectors.venues import Venue
from connectors.venues.paper import PaperVenue
from connectors.venues.settings import IbkrSettings, OkxSettings, VenueSettings
from operators.signal import VENUES
from operators.trading_mode import is_simulator, missing_credentials

# what a simulator on this machine is handed when no credential is set: it checks none
SIMULATOR_CREDENTIAL = "simulator"


class VenueSetupError(ValueError):
    """A venue that cannot be built as configured; the message is one line for the operator."""


@dataclass(frozen=True)
class OkxSecrets:
    api_key: SecretStr
    secret: SecretStr
    passphrase: SecretStr


def build_venues(settings: VenueSettings, *, state_dir: str | Path, paper_options: Mapping[str, float],
                 env: Mapping[str, str], okx_class: Callable[..., Venue] | None = None,
                 ibkr_class: Callable[..., Venue] | None = None,
                 shared: dict[str, Venue] | None = None) -> dict[str, Venue]:
    """``paper_options``: PaperVenue's keywords (slippage_bps, fee_bps, cash_usd).
    ``shared``: real venues already built in this process, by market, reused and added to:
    several books share one connection to a venue (IB refuses a second session under
    one client id), while each book keeps a paper venue of its own making."""
    missing = missing_credentials(env, settings)
    if missing:
        raise VenueSetupError("; ".join(missing))
    paper: PaperVenue | None = None
    out: dict[str, Venue] = {}
    for market in VENUES:
        chosen = getattr(settings, market)
        if shared is not None and market in shared:
            out[market] = shared[market]
        elif isinstance(chosen, OkxSettings) and chosen.kind == "okx":
            out[market] = _okx(chosen, env, okx_class)
        elif isinstance(chosen, IbkrSettings) and chosen.kind == "ibkr":
            out[market] = _ibkr(chosen, ibkr_class)
        else:
            if paper is None:  # one simulator for every paper market: one book, one file
                paper = PaperVenue(Path(state_dir) / "paper-venue.sqlite", **paper_options)
            out[market] = paper
            continue
        if shared is not None:
            shared[market] = out[market]
    return out


def okx_credentials(settings: OkxSettings, env: Mapping[str, str]) -> OkxSecrets:
    """From the variables the settings name; a simulator without them gets a stand-in."""
    fallback = SIMULATOR_CREDENTIAL if is_simulator(settings.url) else ""
    names = settings.credentials
    return OkxSecrets(*(SecretStr(env.get(name) or fallback)
                      for name in (names.api_key, names.secret, names.passphrase)))


def _okx(settings: OkxSettings, env: Mapping[str, str], cls: Callable[..., Venue] | None) -> Venue:
    if cls is None:
        cls = _client("connectors.venues.okx", "OkxVenue", "OKX")
    creds = okx_credentials(settings, env)
    return cls(url=settings.url or None, sandbox=settings.demo, api_key=creds.api_key.get_secret_value(),
               secret=creds.secret.get_secret_value(), passphrase=creds.passphrase.get_secret_value(),
               timeout_ms=round(settings.timeout_s * 1000), **_swap(settings))


def _swap(settings: OkxSettings) -> dict:
    """Swap mode's keywords; none on spot, so a venue class that knows only spot still builds."""
    return {"swap": True, "leverage": settings.leverage} if settings.market == "swap" else {}


def _ibkr(settings: IbkrSettings, cls: Callable[..., Venue] | None) -> Venue:
    if cls is None:
        cls = _client("connectors.venues.ibkr", "IbkrVenue", "IBKR")
    return cls(host=settings.host, port=settings.port, client_id=settings.client_id,
               account=settings.account or "", connect_timeout=settings.timeout_s,
               request_timeout=settings.timeout_s)


def _client(module: str, name: str, label: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise VenueSetupError(f"the {label} venue cannot be loaded: {err}") from None
