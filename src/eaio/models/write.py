"""Write requests, their results, and the audit record every attempt leaves."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, Field

from .reading import Value, utcnow

__all__ = ["AuditRecord", "WriteOutcome", "WriteRequest", "WriteResult"]

MAX_DURATION_S = 7 * 24 * 3600


class WriteRequest(BaseModel):
    point_id: str
    value: Value
    dry_run: bool = False
    duration_s: float | None = Field(default=None, gt=0, le=MAX_DURATION_S)
    reason: str | None = Field(default=None, max_length=500)
    actor: str = "unknown"


class WriteOutcome(StrEnum):
    ACCEPTED = "accepted"
    DRY_RUN = "dry_run"
    REFUSED = "refused"
    FAILED = "failed"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"


class WriteResult(BaseModel):
    point_id: str
    outcome: WriteOutcome
    requested_value: Value
    previous_value: Value | None = None
    readback_value: Value | None = None
    restore_at: AwareDatetime | None = None
    audit_id: str = ""
    code: str | None = Field(default=None, description="Short error code when refused or failed")
    message: str = ""


class AuditRecord(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = Field(default_factory=utcnow)
    server: str
    actor: str
    point_id: str
    device_id: str | None = None
    requested_value: Value | None = None
    previous_value: Value | None = None
    readback_value: Value | None = None
    dry_run: bool = False
    duration_s: float | None = None
    reason: str | None = None
    outcome: WriteOutcome
    code: str | None = None
    message: str = ""
