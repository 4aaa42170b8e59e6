"""BACnet/IP devices: a device address and instance, and points as object properties.

A point is one property (``present-value`` by default) of one object of the device, named by
object type and instance: ``{type: analog-input, instance: 1}``. Writes go through the
object's priority array at the point's ``priority`` (1..16, default 8); a relinquish writes
Null at that priority. EAIO's own BACnet applications (one per process role) take their
local addresses from ``BacnetLocal`` (the site file's ``bacnet:`` section).
"""

from __future__ import annotations

import builtins
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .point import Device, Point

__all__ = [
    "COMMANDABLE_TYPES",
    "BacnetAddress",
    "BacnetConnection",
    "BacnetDevice",
    "BacnetLocal",
    "BacnetObjectType",
    "BacnetPoint",
    "check_bacnet_address",
]

MAX_INSTANCE = 4_194_302  # 2**22 - 2; 4194303 is the "any device" wildcard


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


BacnetObjectType = Literal[
    "analog-input", "analog-output", "analog-value",
    "binary-input", "binary-output", "binary-value",
    "multi-state-input", "multi-state-output", "multi-state-value",
]
# Objects with a priority array: a write at a priority commands them, Null relinquishes.
COMMANDABLE_TYPES = frozenset({"analog-output", "analog-value", "binary-output", "binary-value",
                               "multi-state-output", "multi-state-value"})
BINARY_TYPES = frozenset({"binary-input", "binary-output", "binary-value"})

# "10.0.0.5", "10.0.0.5:47808", "10.0.0.5/24" (with the mask: broadcasts work), "10.0.0.5/24:47809".
_ADDRESS = re.compile(r"^(\d{1,3}(\.\d{1,3}){3})(/\d{1,2})?(:\d{1,5})?$")


def check_bacnet_address(v: str) -> str:
    m = _ADDRESS.match(v)
    if m is None or any(int(x) > 255 for x in m.group(1).split(".")):
        raise ValueError("must be an IPv4 BACnet/IP address: 'a.b.c.d', 'a.b.c.d:port', 'a.b.c.d/mask[:port]'")
    if m.group(3) and not 0 <= int(m.group(3)[1:]) <= 32:
        raise ValueError("the mask must be /0../32")
    if m.group(4) and not 1 <= int(m.group(4)[1:]) <= 65535:
        raise ValueError("the port must be 1..65535")
    return v


class BacnetAddress(_Strict):
    type: BacnetObjectType
    instance: int = Field(ge=0, le=MAX_INSTANCE)
    property: str = Field(default="present-value", pattern=r"^[a-z][a-z\-]*$")

    @builtins.property  # the field above shadows the builtin in this class body
    def object_id(self) -> str:
        """bacpypes3's form: 'analog-input,1'."""
        return f"{self.type},{self.instance}"


class BacnetPoint(Point):
    address: BacnetAddress
    priority: int = Field(default=8, ge=1, le=16, description="Write priority (1 highest .. 16 lowest)")
    cov: bool | None = Field(default=None, description="Subscribe to changes of value (None: the device's default)")

    @property
    def is_binary(self) -> bool:
        return self.address.type in BINARY_TYPES

    @property
    def commandable(self) -> bool:
        return self.address.type in COMMANDABLE_TYPES and self.address.property == "present-value"


class BacnetConnection(_Strict):
    address: str = Field(description="The device's BACnet/IP address, 'a.b.c.d[:port]' (port 47808 by default)")
    device_instance: int = Field(ge=0, le=MAX_INSTANCE)
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="APDU timeout per attempt")
    retries: int = Field(default=1, ge=0, le=5)
    max_apdu: int | None = Field(default=None, ge=50, le=1476,
                                 description="Largest APDU the device takes; None: as its I-Am says")
    segmentation: bool | None = Field(default=None, description="Whether the device segments; None: as its I-Am says")
    rpm: bool = Field(default=True, description="Use ReadPropertyMultiple (a refusal falls back to ReadProperty)")
    rpm_batch: int = Field(default=25, ge=1, le=500, description="Objects per ReadPropertyMultiple request")
    cov: bool = Field(default=False, description="Subscribe to changes of value for this device's points")
    cov_lifetime_s: int = Field(default=300, ge=2, le=86_400,
                                description="Subscription lifetime; renewed before it ends")
    breaker_failures: int = Field(default=3, ge=1, description="Failed requests that mark the device offline")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="Seconds before an offline device is tried again")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_bacnet_address(v)

    @property
    def host(self) -> str:
        return self.address.split("/")[0].split(":")[0]

    @property
    def port(self) -> int:
        tail = self.address.rsplit(":", 1)
        return int(tail[1]) if len(tail) == 2 else 47808


class BacnetDevice(Device):
    protocol: Literal["bacnet"]
    connection: BacnetConnection
    points: list[BacnetPoint] = Field(default_factory=list)


class BacnetLocal(_Strict):
    """EAIO's own BACnet/IP applications: one per process role, each on a port of its own
    (two applications cannot share one)."""

    interface: str = Field(default="127.0.0.1", description="Address to bind, with /mask for broadcasts "
                           "(e.g. '192.168.1.20/24'); no port")
    ports: dict[str, int] = Field(
        default_factory=lambda: {"ingest": 47809, "server": 47810},
        description="UDP port per role; a role not listed gets a free port",
    )
    device_instance: int = Field(default=3_999_000, ge=0, le=MAX_INSTANCE - 100,
                                 description="EAIO's device instance; each role adds its index")

    @field_validator("interface")
    @classmethod
    def _no_port(cls, v: str) -> str:
        check_bacnet_address(v)
        if ":" in v:
            raise ValueError("give the port per role in 'ports', not here")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: dict[str, int]) -> dict[str, int]:
        for role, port in v.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"port of role '{role}' must be 1..65535")
        if len(set(v.values())) != len(v):
            raise ValueError("each role needs a port of its own")
        return v

    def address(self, role: str, free_port: int | None = None) -> str:
        """The local address for ``role``: 'interface:port' (``free_port`` for unlisted roles)."""
        port = self.ports.get(role, free_port)
        return f"{self.interface}:{port}" if port else self.interface
