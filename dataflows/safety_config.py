"""pipeline.yaml's ``watchdog:``, ``reconcile:`` and ``clock:`` sections: when Apex's
stages count as silent and what is done then, how often the venues are compared with the
books while trading and what difference is too much, and how far a venue's clock may be
from ours."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WatchdogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    silence_s: float = Field(30.0, gt=0, description="a stage silent this long sets the watchdog off")
    action: Literal["kill", "reduce"] = Field("kill", description="what the watchdog runs: apex kill or apex reduce")
    heartbeat_s: float = Field(5.0, gt=0, description="how often each stage's heartbeat is written (TTL: 3x)")
    producer: bool = Field(True, description="also watch the signal producer (its stream's last entry, "
                                             "or its own apex:hb:producer key)")
    check_s: float = Field(1.0, gt=0, description="how often the watchdog looks")

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> WatchdogConfig:
        if self.heartbeat_s * 2 > self.silence_s:
            raise ValueError("silence_s must be at least twice heartbeat_s: a live stage would look silent")
        return self


class ReconcileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every_s: float = Field(60.0, gt=0, description="how often the venues are compared with the books while trading")
    alert_fraction: float = Field(0.0005, gt=0, lt=1, description="a difference above this share of NAV is an alert")
    kill_fraction: float = Field(0.005, gt=0, lt=1, description="...above this one, everything is closed")

    @model_validator(mode="after")
    def _ordered(self) -> ReconcileConfig:
        if self.kill_fraction <= self.alert_fraction:
            raise ValueError("kill_fraction must be above alert_fraction")
        return self


class ClockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowance_s: float = Field(1.0, gt=0, description="a venue's clock further off than this: the books go REDUCING")
    every_s: float = Field(3600.0, gt=0, description="how often the venues' clocks are asked (and at start)")
