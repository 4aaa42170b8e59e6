"""What the agent runtime produces: faults, recommendations and decisions."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from .reading import Value, utcnow

__all__ = ["Decision", "DecisionMode", "Fault", "Recommendation", "Severity", "SuggestedWrite"]


def _id() -> str:
    return uuid.uuid4().hex


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class DecisionMode(StrEnum):
    FULL = "full"  # the configured model ran
    LIMITED = "limited"  # the smaller fallback model ran
    DEGRADED = "degraded"  # the no-LLM planner ran


class Fault(BaseModel):
    id: str = Field(default_factory=_id)
    ts: AwareDatetime = Field(default_factory=utcnow)
    kind: str
    point_id: str | None = None
    device_id: str | None = None
    severity: Severity = Severity.WARNING
    message: str


class SuggestedWrite(BaseModel):
    point_id: str
    value: Value
    duration_s: float | None = None


class Recommendation(BaseModel):
    id: str = Field(default_factory=_id)
    ts: AwareDatetime = Field(default_factory=utcnow)
    kind: str = Field(description="e.g. comfort_violation, unoccupied_conditioning")
    zone: str | None = None
    point_ids: list[str] = Field(default_factory=list)
    severity: Severity = Severity.INFO
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    action: SuggestedWrite | None = None
    estimated_saving_kw: float | None = None
    mode: DecisionMode = DecisionMode.DEGRADED


class Decision(BaseModel):
    id: str = Field(default_factory=_id)
    ts: AwareDatetime = Field(default_factory=utcnow)
    trigger: str
    mode: DecisionMode
    inputs: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    outputs: list[Recommendation] = Field(default_factory=list)
    outcome: str = ""
