"""Where each signal market's orders go, as pipeline.yaml's ``venues:`` section says.

Absent, or a market left out of it: that market trades on the built-in paper venue,
whose fills, fee and slippage ``- execute:`` configures (``execute.venue: paper`` names
that default venue; ``venues:`` only moves markets away from it). A market may go to
its own venue instead: OKX through ccxt, IBKR through an IB Gateway.

Credentials are never written here: the file names the environment variables that hold
them, so a pipeline file can be shared, committed and printed without giving anything
away. A value that does not look like such a name is refused, without repeating it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# capitals, digits and at least one underscore: OKX_API_KEY. An OKX key (lower case with
# hyphens) and secret (hex) never look like this, so a pasted credential is caught here.
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


# OKX's fee currency (held for its fee discounts) and the quote every OKX instrument Apex
# trades is priced in: neither is a position, so the fee coin is left alone as if ignored
OKX_FEE_COINS = ("OKB",)
OKX_QUOTE = "USDT"
# an instrument as signals and reconciliation name it: AAPL, BTC-USDT (letters, digits, . - _)
_INSTRUMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


def _instrument(value: str) -> str:
    if not _INSTRUMENT.fullmatch(value):
        raise PydanticCustomError("ignore", "'{item}' is not an instrument name (letters, digits, . - _)",
                                  {"item": value})
    return value


def _okx_instrument(value: str) -> str:
    """On OKX a bare coin (OKB) is refused with the name it wants (OKB-USDT): the list names
    instruments as signals and ``position_mismatch`` lines do, so a line the start refused
    can be copied into the file as it is, and one name per holding keeps the two in step."""
    _instrument(value)
    if "-" not in value:
        raise PydanticCustomError("ignore", "'{item}' is a coin: name the instrument as signals and start-up "
                                  "name it, {item}-{quote}", {"item": value, "quote": OKX_QUOTE})
    return value


def _no_repeats(value: list[str]) -> list[str]:
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise PydanticCustomError("ignore", "listed twice: {items}", {"items": ", ".join(repeated)})
    return value


OkxIgnore = Annotated[list[Annotated[str, AfterValidator(_okx_instrument)]], AfterValidator(_no_repeats)]
IbkrIgnore = Annotated[list[Annotated[str, AfterValidator(_instrument)]], AfterValidator(_no_repeats)]


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value) or len(value) > 64:
        raise PydanticCustomError(
            "env_name", "must be the NAME of the environment variable that holds the credential "
            "(capitals, digits and underscores, such as OKX_API_KEY), never the credential itself")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OkxCredentials(_Strict):
    api_key: EnvName = "OKX_API_KEY"
    secret: EnvName = "OKX_API_SECRET"
    passphrase: EnvName = "OKX_API_PASSPHRASE"


class OkxSettings(_Strict):
    kind: Literal["paper", "okx"]
    url: str = Field("", description="empty: OKX itself; http://127.0.0.1:PORT: `apex sim okx`")
    demo: bool = Field(True, description="OKX demo trading; ignored by a simulator URL")
    credentials: OkxCredentials = Field(default_factory=OkxCredentials)
    timeout_s: float = Field(10.0, gt=0, le=300)
    requests_in_flight: int = Field(4, ge=1, le=32, description="orders requests at once, each for its own instruments")
    ask_after_s: float = Field(10.0, gt=0, le=3600, description="an order this long without news is asked about")
    ignore: OkxIgnore = Field(default_factory=list, description="instruments Apex leaves alone (OKB-USDT)")
    market: Literal["spot", "swap"] = Field(
        "spot", description="spot: coins bought and sold, never shorted; swap: USDT perpetual swaps "
        "(BTC-USDT-SWAP), isolated margin, net positions, so a sell may open a short")
    leverage: float = Field(1.0, ge=1, le=100, description="swap only: the isolated leverage set on each "
                            "swap before its first order (1: margin is the whole notional)")
    cancel_all_after_s: int = Field(
        0, description="OKX's dead man's switch: 0 off, or 10 to 120 s, kept armed while a worker runs "
        "(docs/operating.md); if the worker freezes, OKX cancels every working order this long after")

    @field_validator("cancel_all_after_s")
    @classmethod
    def _cancel_all_after(cls, value: int) -> int:
        if value != 0 and not 10 <= value <= 120:
            raise PydanticCustomError("cancel_all_after", "must be 0 (off) or 10 to 120 seconds, as OKX takes it")
        return value

    sell_on_long: Literal["keep", "close"] = Field(
        "keep", description="spot only: what a sell signal does where the book holds the coin long. keep: "
        "the sell is dropped (spot_cannot_short) and the longs run to their own exits; close: the book's "
        "longs in it are closed (exit reason sell_signal). A sell never opens a short on spot")

    def spot(self) -> str | None:
        """``sell_on_long`` where orders go to OKX's spot market; None where a sell may open a
        short (swap) or the market trades on the paper venue."""
        return self.sell_on_long if self.kind == "okx" and self.market == "spot" else None

    def ignored(self) -> frozenset[str]:
        """What Apex leaves alone here: the listed instruments and the fee coin's."""
        if self.kind != "okx":
            return frozenset()
        return frozenset(self.ignore) | {f"{coin}-{OKX_QUOTE}" for coin in OKX_FEE_COINS}

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: object) -> object:
        # an empty ${APEX_OKX_URL:-} reads as YAML null; the message never repeats the URL,
        # which may carry a user and password
        if value is None:
            return ""
        if isinstance(value, str) and value and not re.fullmatch(r"https?://[^\s/]+(?::\d+)?/?", value):
            raise PydanticCustomError("url", "must be empty (OKX itself) or http(s)://HOST[:PORT] with no path")
        return value

    @model_validator(mode="after")
    def _paper_takes_nothing_else(self) -> OkxSettings:
        _only_kind(self)
        if "leverage" in self.model_fields_set and self.market != "swap":
            # spot has no leverage: a value here would be silently ignored
            raise PydanticCustomError("leverage", "leverage applies to market: swap only (remove it, or set "
                                      "market: swap)")
        if self.market != "spot" and "sell_on_long" in self.model_fields_set:
            # set but never read: the mistake of which market was meant would stay hidden
            raise PydanticCustomError("spot_only", "sell_on_long is a rule of market: spot (on swap a sell "
                                      "opens or adds to a short); remove it, or trade spot")
        return self


class IbkrSettings(_Strict):
    kind: Literal["paper", "ibkr"]
    host: str = "127.0.0.1"
    port: int = Field(4002, ge=1, le=65535, description="4002: IB Gateway paper by convention; 4001 live")
    client_id: int = Field(7, ge=0)
    account: str = Field("", description="empty: the gateway's only account")
    timeout_s: float = Field(10.0, gt=0, le=300)
    requests_in_flight: int = Field(4, ge=1, le=32, description="orders requests at once, each for its own instruments")
    ask_after_s: float = Field(10.0, gt=0, le=3600, description="an order this long without news is asked about")
    ignore: IbkrIgnore = Field(default_factory=list, description="symbols Apex leaves alone (AAPL)")

    def ignored(self) -> frozenset[str]:
        return frozenset(self.ignore) if self.kind == "ibkr" else frozenset()

    @field_validator("account", "host", mode="before")
    @classmethod
    def _empty(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            raise PydanticCustomError("host", "must name the host IB Gateway or TWS listens on, such as 127.0.0.1")
        return value

    @model_validator(mode="after")
    def _paper_takes_nothing_else(self) -> IbkrSettings:
        _only_kind(self)
        return self


def _only_kind(settings: BaseModel) -> None:
    """``kind: paper`` sends the market to the built-in paper venue: a connection setting
    beside it would be silently ignored, which hides a mistake in which line was meant."""
    extra = sorted(settings.model_fields_set - {"kind"})
    if getattr(settings, "kind") == "paper" and extra:
        raise PydanticCustomError("paper_only", "kind: paper takes no other settings (remove {extra}, "
                                  "or choose the venue's own kind)", {"extra": ", ".join(extra)})


class VenueSettings(_Strict):
    """Per signal market; None: the built-in paper venue."""

    okx: OkxSettings | None = None
    ibkr: IbkrSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, value: object) -> object:
        return {} if value is None else value

    def ignored(self, market: str) -> frozenset[str]:
        """The instruments of a market Apex leaves alone: never a position to reconcile, never
        traded (a signal for one is dropped as ``ignored_asset``)."""
        chosen = getattr(self, market, None)
        return chosen.ignored() if chosen is not None else frozenset()

    def spot(self, market: str) -> str | None:
        """What a sell does to a long where the market's venue is a spot market (``keep`` or
        ``close``); None where a sell may open a short."""
        chosen = getattr(self, market, None)
        spot = getattr(chosen, "spot", None)
        return spot() if spot is not None else None

    def kind(self, market: str) -> str:
        """``paper`` or the name of the market's own venue."""
        chosen = getattr(self, market, None)
        return chosen.kind if chosen is not None else "paper"
