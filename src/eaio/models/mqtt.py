"""MQTT devices: a broker connection, topic mappings to points, and command topics.

A device is one broker connection. Its ``subscriptions`` say how messages become readings:
a topic filter (``+`` and ``#`` allowed) and either one point (``point``) or, for one JSON
message carrying several points, a mapping of field paths to point ids (``fields``). Point ids
may use the filter's wildcard captures: ``{1}`` is the first ``+`` (or ``#``) segment. A
resolved id must be a declared point, or the message goes to the dead-letter table.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .point import Device, Point

__all__ = [
    "DeadLetter",
    "MqttCommand",
    "MqttConnection",
    "MqttDevice",
    "MqttPoint",
    "MqttSubscription",
    "MqttTls",
    "check_filter",
    "topic_matches",
    "wildcard_captures",
]

_TEMPLATE = re.compile(r"\{(\d+)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_filter(topic: str) -> str:
    """The filter itself, or ValueError saying what is wrong with its '+'/'#' use or length."""
    if not topic or len(topic.encode()) > 65535:
        raise ValueError("a topic filter must be 1..65535 bytes")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level in '{topic}'")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level in '{topic}'")
    return topic


def wildcard_captures(topic_filter: str, topic: str) -> list[str] | None:
    """The levels that ``+``/``#`` matched in ``topic``, or None when it does not match."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    captures: list[str] = []
    for i, f in enumerate(f_levels):
        if f == "#":
            captures.append("/".join(t_levels[i:]))
            return captures
        if i >= len(t_levels):
            return None
        if f == "+":
            captures.append(t_levels[i])
        elif f != t_levels[i]:
            return None
    return captures if len(f_levels) == len(t_levels) else None


def topic_matches(topic_filter: str, topic: str) -> bool:
    return wildcard_captures(topic_filter, topic) is not None


class MqttTls(_Strict):
    ca: str | None = Field(default=None, description="CA certificate file (PEM); system CAs when absent")
    cert: str | None = Field(default=None, description="Client certificate (PEM), for brokers that require one")
    key: str | None = Field(default=None, description="Client private key (PEM)")
    insecure: bool = Field(default=False, description="Skip the broker hostname check (test brokers only)")

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both 'cert' and 'key', or neither")
        return self


class MqttConnection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(
        default="", description="Prefix of the client id; each EAIO process appends its role (-ingest, -server)"
    )
    clean_session: bool = Field(
        default=False, description="False = a persistent session: the broker keeps QoS 1 messages while we are away"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_payload_bytes: int = Field(default=65536, ge=16, description="Larger payloads go to the dead-letter table")
    timeout_s: float = Field(default=5.0, gt=0, description="Connect and publish-acknowledge timeout")


class MqttSubscription(_Strict):
    topic: str = Field(description="Topic filter; '+' and '#' allowed, their matches usable as {1}, {2}...")
    qos: Literal[0, 1, 2] = 1
    format: Literal["number", "json"] = "number"
    point: str | None = Field(default=None, description="Point id (template) for one value per message")
    path: str | None = Field(default=None, description="JSON field path of that value, e.g. 'data.value'")
    fields: dict[str, str] | None = Field(
        default=None, description="JSON field path -> point id (template), for messages carrying several points"
    )
    timestamp: str | None = Field(
        default=None, description="JSON field path of the sample time (ISO 8601, or epoch seconds/milliseconds)"
    )

    @model_validator(mode="after")
    def _shape(self) -> MqttSubscription:
        check_filter(self.topic)
        if (self.point is None) == (self.fields is None):
            raise ValueError("give exactly one of 'point' or 'fields'")
        if self.format == "number" and (self.fields is not None or self.path or self.timestamp):
            raise ValueError("'fields', 'path' and 'timestamp' need format: json")
        wildcards = sum(1 for level in self.topic.split("/") if level in ("+", "#"))
        for template in [self.point] if self.point else list((self.fields or {}).values()):
            for n in _TEMPLATE.findall(template or ""):
                if not 1 <= int(n) <= wildcards:
                    raise ValueError(f"'{template}' uses {{{n}}} but '{self.topic}' has {wildcards} wildcard(s)")
        return self

    def templates(self) -> list[str]:
        return [self.point] if self.point else list((self.fields or {}).values())


class MqttCommand(_Strict):
    """Where a write to the point is published."""

    topic: str
    format: Literal["number", "json"] = "number"
    field: str | None = Field(default=None, description="With format json: the payload is {field: value}")
    qos: Literal[0, 1, 2] = 1
    retain: bool = False

    @model_validator(mode="after")
    def _shape(self) -> MqttCommand:
        if "+" in self.topic or "#" in self.topic:
            raise ValueError("a command topic cannot contain wildcards")
        if (self.format == "json") != (self.field is not None):
            raise ValueError("format json needs 'field' (and only json takes one)")
        return self


class MqttPoint(Point):
    value_type: Literal["number", "bool"] = Field(
        default="number", description="bool points take true/false, 1/0, on/off payloads"
    )
    command: MqttCommand | None = Field(default=None, description="Command topic; required for writable points")

    @property
    def is_binary(self) -> bool:
        return self.value_type == "bool"


class MqttDevice(Device):
    protocol: Literal["mqtt"]
    connection: MqttConnection = Field(default_factory=MqttConnection)
    subscriptions: list[MqttSubscription] = Field(default_factory=list)
    points: list[MqttPoint] = Field(default_factory=list)
    publish_prefixes: list[str] = Field(
        default_factory=list, description="Topic prefixes the publish_message tool may publish to (empty: none)"
    )


class DeadLetter(BaseModel):
    """A message that could not become readings, kept with its raw bytes and the reason."""

    received_at: datetime
    source: str = Field(description="protocol:device, e.g. 'mqtt:iot-gw'")
    topic: str = ""
    reason: str = Field(description="malformed, too_large, unmapped, missing_field, not_a_number, bad_timestamp")
    detail: str = ""
    payload: bytes = b""
