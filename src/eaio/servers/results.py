"""Structured results of the core tools: pydantic models, so every tool has an output schema."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from ..models import Limits, Reading, Value

__all__ = [
    "DeviceInfo",
    "DeviceList",
    "HealthReport",
    "PendingRestore",
    "PointInfo",
    "PointList",
    "ReadError",
    "ReadPointsResult",
    "RegisterValues",
]


class DeviceInfo(BaseModel):
    id: str
    name: str
    protocol: str
    connection: str = Field(description="Where the device is reached, e.g. '127.0.0.1:502 unit 1'")
    point_count: int
    online: bool | None = Field(description="Last known state; None before the first request")


class DeviceList(BaseModel):
    devices: list[DeviceInfo]


class PointInfo(BaseModel):
    id: str
    name: str
    kind: str
    unit: str
    brick: str | None = None
    zone: str | None = None
    equip: str | None = None
    device_id: str
    writable: bool
    write_bounds: Limits | None = None
    limits: Limits | None = None
    address: dict[str, Any] = Field(default_factory=dict, description="Protocol address of the point")


class PointList(BaseModel):
    points: list[PointInfo]
    count: int


class ReadError(BaseModel):
    device_id: str | None
    code: str = Field(description="device_offline, timeout or protocol_error")
    message: str
    point_ids: list[str] = Field(default_factory=list)


class ReadPointsResult(BaseModel):
    readings: list[Reading]
    errors: list[ReadError] = Field(default_factory=list)


class PendingRestore(BaseModel):
    point_id: str
    restore_value: Value
    restore_at: AwareDatetime


class HealthReport(BaseModel):
    server: str
    protocol: str
    status: str = Field(description="ok when every device is online, else degraded")
    uptime_s: float
    devices: list[dict[str, Any]] = Field(description="Per-device state from the adapter")
    tool_calls: dict[str, int]
    audit_path: str
    pending_restores: list[PendingRestore]


class RegisterValues(BaseModel):
    device_id: str
    table: str
    address: int
    count: int
    unit: int
    values: list[int] | list[bool]
