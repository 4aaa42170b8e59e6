"""Structured results of the core tools: pydantic models, so every tool has an output schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, WithJsonSchema, field_validator

from ..models import Limits, Reading, Value, trusted, utcnow

__all__ = [
    "AgedReading",
    "BacnetDeviceFound",
    "BacnetObjectInfo",
    "BrokerInfo",
    "BrokerList",
    "BrowseResult",
    "DeviceInfo",
    "DeviceList",
    "HealthReport",
    "HistoryResult",
    "HistoryValue",
    "MessageInfo",
    "MessagePage",
    "NodeInfo",
    "NodeValue",
    "NodeValues",
    "ObjectList",
    "OpcuaServerStatus",
    "PendingRestore",
    "PointInfo",
    "PointList",
    "PriorityArray",
    "PrioritySlot",
    "PropertyValue",
    "PublishResult",
    "ReadError",
    "ReadPointsResult",
    "RegisterValues",
    "RelinquishResult",
    "ServerStatusList",
    "SubscribeResult",
    "WhoIsResult",
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


class AgedReading(Reading):
    """A reading as read_points answers it: with how old its sample was at answer time.

    Polled protocols (Modbus) give about 0; pushed ones (MQTT) the time since the last message.
    """

    age_s: float | None = Field(default=None, description="Seconds since ts when answered; None without a value")

    @classmethod
    def of(cls, reading: Reading, now: datetime) -> AgedReading:
        age = None if reading.value is None else round(max(0.0, (now - reading.ts).total_seconds()), 3)
        # The reading was validated when it was made; this only adds the age (read_points of a
        # few hundred points pays this per point on every call).
        return trusted(cls, {**reading.__dict__, "age_s": age})


class ReadPointsResult(BaseModel):
    readings: list[Annotated[AgedReading, flat_schema(AgedReading)]]
    errors: list[Annotated[ReadError, flat_schema(ReadError)]] = Field(default_factory=list)

    @field_validator("readings", mode="before")
    @classmethod
    def _age(cls, readings: Any) -> Any:
        # Every server builds this from plain adapter Readings; the age is stamped here, once,
        # so all protocols keep one result shape.
        if not isinstance(readings, list):
            return readings
        now = utcnow()
        return [
            AgedReading.of(r, now) if isinstance(r, Reading) and not isinstance(r, AgedReading) else r
            for r in readings
        ]


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


# -- MQTT ------------------------------------------------------------------------------------------
class SubscribeResult(BaseModel):
    device_id: str
    topics: list[str] = Field(description="The filters just subscribed")
    qos: int
    subscriptions: list[str] = Field(description="Every filter this server now holds on the broker")


class MessageInfo(BaseModel):
    id: int
    ts: AwareDatetime
    device_id: str
    topic: str
    payload: str = Field(description="The payload as text, or base64 when it is not UTF-8 (see encoding)")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    size: int = Field(description="Payload size in bytes")
    qos: int
    retain: bool


class MessagePage(BaseModel):
    messages: list[Annotated[MessageInfo, flat_schema(MessageInfo)]]
    next_since_id: int = Field(description="Pass as since_id to get the messages after these")
    dropped: int = Field(description="Messages after since_id already evicted from the bounded buffer")
    more: bool = Field(description="True when the limit cut the page short")


class PublishResult(BaseModel):
    device_id: str
    topic: str
    size: int
    qos: int
    retain: bool
    audit_id: str


class BrokerInfo(BaseModel):
    device_id: str
    broker: str = Field(description="host:port")
    client_id: str
    tls: bool
    connected: bool
    session_present: bool | None = None
    subscriptions: list[str] = Field(default_factory=list)
    received: int = 0
    readings: int = 0
    dead_letters: int = 0
    reconnects: int = 0
    last_error: str | None = None


class BrokerList(BaseModel):
    brokers: list[Annotated[BrokerInfo, flat_schema(BrokerInfo)]]


class BacnetDeviceFound(BaseModel):
    device_instance: int
    address: str
    max_apdu: int | None = None
    segmentation: str | None = None
    vendor_id: int | None = None
    device_id: str | None = Field(default=None, description="The site's id for this device, when configured")


class WhoIsResult(BaseModel):
    devices: list[BacnetDeviceFound]
    count: int


class BacnetObjectInfo(BaseModel):
    object_id: str = Field(description="type,instance as BACnet names it, e.g. 'analog-input,1'")
    type: str
    instance: int
    name: str | None = None
    units: str | None = None
    point_id: str | None = Field(default=None, description="The configured point this object is, if any")


class ObjectList(BaseModel):
    device_id: str
    objects: list[BacnetObjectInfo]
    count: int


class PropertyValue(BaseModel):
    device_id: str
    object_id: str
    property: str
    index: int | None = None
    value: Any = Field(description="The property's value as JSON (enumerations as their names)")


class PrioritySlot(BaseModel):
    priority: int = Field(ge=1, le=16)
    value: Value


class PriorityArray(BaseModel):
    point_id: str
    device_id: str
    object_id: str
    priorities: list[PrioritySlot] = Field(description="The slots that hold a command (1 is the highest)")
    active_priority: int | None = Field(description="The slot in control; None: relinquish_default applies")
    relinquish_default: Value | None = None
    present_value: Value | None = None
    pending_relinquish: datetime | None = Field(default=None, description="When EAIO will relinquish its write")


class RelinquishResult(BaseModel):
    point_id: str
    priority: int
    outcome: str
    previous_value: Value | None = None
    readback_value: Value | None = None
    audit_id: str
    message: str = ""


class NodeInfo(BaseModel):
    node_id: str
    browse_name: str
    display_name: str | None = None
    node_class: str
    data_type: str | None = None
    depth: int
    parent: str | None = None


class BrowseResult(BaseModel):
    device_id: str
    root: str
    nodes: list[NodeInfo]
    count: int
    truncated: bool = Field(description="More nodes exist than the limit let through")


class NodeValue(BaseModel):
    node_id: str
    value: Any = None
    data_type: str | None = None
    status: str = Field(description="The OPC-UA StatusCode name, e.g. Good, BadNodeIdUnknown")
    source_timestamp: datetime | None = None
    server_timestamp: datetime | None = None


class NodeValues(BaseModel):
    device_id: str
    values: list[NodeValue]


class HistoryValue(BaseModel):
    ts: datetime
    value: Any = None
    status: str


class HistoryResult(BaseModel):
    device_id: str
    node_id: str
    point_id: str | None = None
    values: list[HistoryValue]
    count: int


class OpcuaServerStatus(BaseModel):
    device_id: str
    endpoint: str
    connected: bool
    state: str | None = None
    start_time: datetime | None = None
    current_time: datetime | None = None
    product: str | None = None
    software_version: str | None = None
    security_policy: str | None = None
    security_mode: str | None = None
    last_error: str | None = None


class ServerStatusList(BaseModel):
    servers: list[OpcuaServerStatus]
