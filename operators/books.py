"""Which signals a book takes: the rule the dataflow routes each signal by."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from operators.signal import Source, Venue


class Takes(BaseModel):
    """Which signals a book takes: every key given must match (a name or a list of names);
    none given: every signal. A market entry reaches every book."""

    model_config = ConfigDict(extra="forbid")
    venue: list[Venue] | None = None
    source: list[Source] | None = None
    symbol: list[str] | None = None

    @field_validator("venue", "source", "symbol", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def admits(self, venue: str, source: str, symbol: str) -> bool:
        return ((self.venue is None or venue in self.venue) and (self.source is None or source in self.source)
                and (self.symbol is None or symbol in self.symbol))
