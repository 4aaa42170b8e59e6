"""OPC-UA devices: a server endpoint with its security, and points as variable nodes.

A device is one OPC-UA server (a PLC, a gateway) reached at ``connection.endpoint``
(``opc.tcp://host:port/path``). A point is one variable node named by its node id in the
standard string form: ``ns=2;s=ChwLoop.DiffPressure`` (or ``i=``, ``g=``, ``b=`` identifiers,
or ``nsu=<namespace uri>;s=...`` to be independent of the server's namespace order).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .point import Device, Point

__all__ = [
    "OpcuaAddress",
    "OpcuaConnection",
    "OpcuaDevice",
    "OpcuaPoint",
    "OpcuaSecurity",
    "check_node_id",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_NODE_ID = re.compile(r"^(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F\-]{36}|b=[A-Za-z0-9+/=]+)$")
_ENDPOINT = re.compile(r"^opc\.tcp://([^/:]+|\[[0-9a-fA-F:]+\]):(\d{1,5})(/.*)?$")


def check_node_id(v: str) -> str:
    if not _NODE_ID.match(v):
        raise ValueError("must be an OPC-UA node id such as 'ns=2;s=AHU1.SupplyAirTemp', 'i=2258' or "
                         "'nsu=urn:example;s=Pump1.Speed'")
    return v


class OpcuaSecurity(_Strict):
    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = Field(default=None, description="This client's certificate (PEM or DER file)")
    private_key: str | None = Field(default=None, description="Its private key (PEM file)")
    server_certificate: str | None = Field(default=None,
                                           description="The server's certificate to trust (default: as it presents)")

    @model_validator(mode="after")
    def _consistent(self) -> OpcuaSecurity:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy and mode go together: both 'None', or Basic256Sha256 with Sign/SignAndEncrypt")
        if self.policy != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"policy {self.policy} needs certificate and private_key files")
        return self


class OpcuaConnection(_Strict):
    endpoint: str = Field(description="opc.tcp://host:port/path")
    security: OpcuaSecurity = Field(default_factory=OpcuaSecurity)
    username: str | None = None
    password: str | None = None
    timeout_s: float = Field(default=4.0, gt=0, le=120, description="Per request")
    session_timeout_s: float = Field(default=60.0, ge=1, le=3600)
    max_nodes_per_read: int = Field(default=1000, ge=1, le=10_000, description="Nodes per Read request")
    subscribe: bool = Field(default=False, description="Data-change subscriptions for this device's points")
    publishing_interval_ms: float = Field(default=1000.0, ge=10, le=3_600_000)
    change_time: Literal["source", "received"] = Field(
        default="source", description="A data change's time: the server's SourceTimestamp, or when EAIO received "
                                      "it (for servers whose clocks are not kept right)")
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    breaker_failures: int = Field(default=3, ge=1, description="Failed requests that mark the server offline")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="Seconds before an offline server is tried again")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        m = _ENDPOINT.match(v)
        if m is None or not 1 <= int(m.group(2)) <= 65535:
            raise ValueError("must look like opc.tcp://host:port[/path] (port 1..65535)")
        return v

    @model_validator(mode="after")
    def _login(self) -> OpcuaConnection:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self

    @property
    def host(self) -> str:
        m = _ENDPOINT.match(self.endpoint)
        assert m is not None
        return m.group(1).strip("[]")

    @property
    def port(self) -> int:
        m = _ENDPOINT.match(self.endpoint)
        assert m is not None
        return int(m.group(2))


class OpcuaAddress(_Strict):
    node_id: str

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        return check_node_id(v)


class OpcuaPoint(Point):
    address: OpcuaAddress
    value_type: Literal["number", "bool"] = Field(default="number", description="bool for on/off points")
    subscribe: bool | None = Field(default=None, description="Data-change subscription (None: the device's default)")
    sampling_interval_ms: float | None = Field(default=None, ge=0, le=3_600_000,
                                               description="Server sampling interval (None: publishing interval)")
    deadband: float | None = Field(default=None, ge=0, description="Absolute deadband: smaller changes are not sent")

    @property
    def is_binary(self) -> bool:
        return self.value_type == "bool"


class OpcuaDevice(Device):
    protocol: Literal["opcua"]
    connection: OpcuaConnection
    points: list[OpcuaPoint] = Field(default_factory=list)

    def report_interval_s(self, point: Point) -> float:
        """A subscribed point's change arrives up to a publishing interval after it happened,
        stamped when it happened: with a poll interval shorter than that it would look stale."""
        polled = super().report_interval_s(point)
        subscribed = getattr(point, "subscribe", None)
        if subscribed if subscribed is not None else self.connection.subscribe:
            return max(polled, self.connection.publishing_interval_ms / 1000)
        return polled
