"""Where the Redis Streams source reads from and how: the ``redis:`` block of pipeline.yaml.

It lives beside the connector it configures so that the connector need not
reach up into ``dataflows/`` for it; ``dataflows.config`` validates it as part
of the whole pipeline file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RedisConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "argus:signals:stream"
    group: str = "apex-consumer"
    consumer: str = "apex-worker-1"
    count: int = Field(10, ge=1, le=10_000, description="XREADGROUP COUNT")
    block_ms: int = Field(2, ge=1, le=1000, description="XREADGROUP BLOCK; never 0")
    claim_idle_ms: int = Field(5000, ge=1, description="claim a dead consumer's entries idle this long")
    max_deliveries: int = Field(5, ge=1, description="past this, an entry goes to the dead-letter stream")
    dead_letter_stream: str = "argus:signals:dead"
    control_stream: str = "apex:control"  # apex kill / reduce / resume reach a running worker here (docs/operating.md)
    stop_when_idle_ms: int | None = Field(
        None, ge=1, description="end the run after this long with nothing new and nothing of ours pending")
