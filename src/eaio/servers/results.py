"""Structured results of the core tools: pydantic models, so every tool has an output schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, Field, WithJsonSchema

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


_SIMPLE_TYPES = {"boolean", "integer", "number", "null", "string"}


def flat_schema(model: type[BaseModel]) -> WithJsonSchema:
    """The model's JSON schema with every ``$ref`` inlined and ``anyOf`` of plain types written as
    a type list. It accepts exactly the same documents; clients that check each result against
    the output schema (the mcp SDK's, with jsonschema) do it about twice as fast, because
    resolving a reference per list item is what costs most."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].removeprefix("#/$defs/")]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        node = {k: walk(v) for k, v in node.items()}
        any_of = node.get("anyOf")
        if any_of and all(set(a) == {"type"} and a["type"] in _SIMPLE_TYPES for a in any_of):
            del node["anyOf"]
            node["type"] = [a["type"] for a in any_of]
        return node

    return WithJsonSchema(walk(schema))


class DeviceInfo(BaseModel):
    id: str
    name: str
    protocol: str
    connection: str = Field(description="Where the device is reached, e.g. '127.0.0.1:502 unit 1'")
    point_count: int
    online: bool | None = Field(description="Last known state; None before the first request")


class DeviceList(BaseModel):
    devices: list[Annotated[DeviceInfo, flat_schema(DeviceInfo)]]


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
    points: list[Annotated[PointInfo, flat_schema(PointInfo)]]
    count: int


class ReadError(BaseModel):
    device_id: str | None
    code: str = Field(description="device_offline, timeout or protocol_error")
    message: str
    point_ids: list[str] = Field(default_factory=list)


class ReadPointsResult(BaseModel):
    readings: list[Annotated[Reading, flat_schema(Reading)]]
    errors: list[Annotated[ReadError, flat_schema(ReadError)]] = Field(default_factory=list)


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
