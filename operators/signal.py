"""The signal schema: the contract between Argus (the producer) and Apex.

A signal is a complete decision document: everything filtering, sizing and
exits need travels inside it, so Apex never asks Argus anything while it
executes. Version 1.0 is the base; 1.1 adds ``regime_change_alert``. Any other
major version is refused, because a new major means the producer changed the
meaning of a field and guessing would trade on a misread signal.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

MAX_PAYLOAD_BYTES = 64 * 1024
TIMESTAMP_IN_FUTURE = "timestamp_in_future"

Source = Literal[
    "mean_reversion",
    "novelty_anomaly",
    "regime_caution",
    "trend_following",
    "macro",
    "smart_money",
]
SOURCES: tuple[str, ...] = Source.__args__  # type: ignore[attr-defined]
Venue = Literal["okx", "ibkr"]
VENUES: tuple[str, ...] = Venue.__args__  # type: ignore[attr-defined]
Side = Literal["buy", "sell"]
Regime = Literal["trending_up", "trending_down", "choppy"]
REGIMES: tuple[str, ...] = Regime.__args__  # type: ignore[attr-defined]


# A real number: ints and floats only, finite. A string or a bool that happens to
# coerce to a number is a producer bug and must not size a position.
Real = Annotated[float, Field(strict=True, allow_inf_nan=False)]

# Bounds on every duration and size a producer sends. Each is far beyond any real
# signal and far inside what the arithmetic after it can hold: a trade's deadline is
# an integer of milliseconds, and an unbounded holding period would overflow it.
MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_HOLDING_HOURS = 366 * 24
MAX_POSITION_USD = 1e9
MAX_BACKTEST_TRADES = 10**9
MAX_ID_LENGTH = 128
MAX_SYMBOL_LENGTH = 64
# No control characters in what a terminal shows: an id carrying ESC[2J cleared the screen
# of whoever ran ``apex audit`` (C0, DEL and C1).
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]+$"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    nested: ClassVar[tuple[str, ...]] = ()  # fields holding a nested _Strict model

    def unknown_fields(self, prefix: str = "") -> list[str]:
        """Fields the producer sent that this version does not know: logged, never rejected."""
        extra = self.__pydantic_extra__
        out = [prefix + k for k in extra] if extra else []
        for name in self.nested:
            sub = getattr(self, name)
            if sub.__pydantic_extra__ or sub.nested:  # asked of every signal: skip the empty ones
                out += sub.unknown_fields(prefix + name + ".")
        return out


class ExitRules(_Strict):
    """How the trade ends; ``description`` is the plain-English rule the producer wrote."""

    description: str = ""
    hard_stop_pct: Real | None = Field(default=None, gt=0, lt=1)
    exit_regimes: list[Regime] = Field(default_factory=list)
    max_holding_hours: Real | None = Field(default=None, gt=0, le=MAX_HOLDING_HOURS)


class BacktestStats(_Strict):
    """What the strategy promised; realized results are compared against it."""

    win_rate: Real = Field(ge=0, le=1)
    avg_win: Real | None = None
    avg_loss: Real | None = None
    trades: int | None = Field(default=None, ge=0, le=MAX_BACKTEST_TRADES)


class Signal(_Strict):
    """Schema version 1.x. Field order follows the producer's document."""

    version: str = Field(pattern=r"^1\.\d+$", description="major 1 only")
    signal_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=PRINTABLE)
    timestamp: AwareDatetime = Field(description="emit time, ISO-8601 with zone")
    ttl_seconds: int = Field(gt=0, le=MAX_TTL_SECONDS, strict=True)
    source: Source
    venue: Venue
    symbol: str = Field(min_length=1, max_length=MAX_SYMBOL_LENGTH, pattern=PRINTABLE)
    side: Side
    confidence: Real = Field(ge=0, le=1)
    regime: Regime
    reference_price: Real | None = Field(default=None, gt=0)
    suggested_kelly: Real = Field(ge=0, le=1)
    max_position_usd: Real = Field(gt=0, le=MAX_POSITION_USD)
    holding_period_hours: Real = Field(gt=0, le=MAX_HOLDING_HOURS)
    exit_rules: ExitRules
    backtest_stats: BacktestStats
    regime_change_alert: bool = Field(default=False, strict=True, description="added in 1.1")
    nested: ClassVar[tuple[str, ...]] = ("exit_rules", "backtest_stats")

    @property
    def emitted_ms(self) -> int:
        # not cached: a cached_property's first read costs more than the computation (Python 3.11 takes a lock).
        # In whole numbers: timestamp() is a float of seconds, and from about the year 3000 on its
        # thousandths no longer hold the millisecond (a stamp one past the clock-skew allowance passed)
        return (self.timestamp - _EPOCH) // _MS

    @property
    def max_holding_hours(self) -> float:
        return self.exit_rules.max_holding_hours or self.holding_period_hours


class Invalid(Exception):
    """A payload that must never be executed; ``reason`` is what the audit trail records."""

    def __init__(self, reason: str, signal_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.signal_id = signal_id


def _first_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "payload"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_signal(payload: str | bytes | None) -> Signal:
    """Turn a stream entry's ``payload`` into a Signal or raise ``Invalid``."""
    if payload is None:
        raise Invalid("missing payload field")
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Invalid(f"payload_too_large: {len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return Signal.model_validate_json(raw)
    except ValidationError as err:
        kinds = {e["type"] for e in err.errors()}
        if "json_invalid" in kinds:
            raise Invalid("not_json: " + _first_error(err)) from None
        if "model_type" in kinds and any(e["loc"] == () for e in err.errors()):
            raise Invalid("not_object: payload must be a JSON object") from None
        raise Invalid("schema: " + _first_error(err), _guess_id(raw)) from None


def _guess_id(raw: bytes) -> str | None:
    """Best-effort signal_id of a payload that failed validation, so the audit
    trail can name the signal a producer will ask about."""
    import json

    try:
        sid = json.loads(raw).get("signal_id")
    except (ValueError, AttributeError):
        return None
    return sid if isinstance(sid, str) and _PRINTABLE.match(sid) and len(sid) <= MAX_ID_LENGTH else None


_PRINTABLE = re.compile(PRINTABLE)


def check_clock(signal: Signal, clock_ms: int, skew_ms: int) -> int:
    """Refuse a signal stamped later than the stream's clock allows: its age would be
    negative, and a TTL counted from the future never expires. Returns its emit time."""
    emitted = signal.emitted_ms
    ahead = emitted - clock_ms
    if ahead > skew_ms:
        raise Invalid(f"{TIMESTAMP_IN_FUTURE}: stamped {ahead} ms ahead of the stream clock "
                      f"(limits.clock_skew_ms {skew_ms})", signal.signal_id)
    return emitted
