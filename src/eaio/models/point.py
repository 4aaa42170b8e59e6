"""Points and devices as the site configuration declares them."""

from __future__ import annotations

import re
import warnings
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Counter",
    "Device",
    "Limits",
    "ModbusAddress",
    "ModbusConnection",
    "ModbusDevice",
    "ModbusPoint",
    "Point",
    "PointKind",
    "PointRules",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9_\-]*(\.[a-z0-9_\-]+)*$")


def _check_id(v: str) -> str:
    if not _ID.match(v):
        raise ValueError("must be lower-case letters, digits, '_' or '-', dot-separated (e.g. 'ahu1.sat', 'ahu1-ctrl')")
    return v


# Point and device ids: stable, site-wide, safe in topics, tags and file names.
SiteId = Annotated[str, AfterValidator(_check_id)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PointKind(StrEnum):
    TEMPERATURE = "temperature"
    SETPOINT = "setpoint"
    HUMIDITY = "humidity"
    CO2 = "co2"
    PRESSURE = "pressure"
    POWER = "power"
    ENERGY = "energy"
    SPEED = "speed"
    POSITION = "position"
    STATUS = "status"
    COMMAND = "command"
    OCCUPANCY = "occupancy"
    SCHEDULE = "schedule"
    EFFICIENCY = "efficiency"
    GENERIC = "generic"


class Limits(Strict):
    """An inclusive range; either end may be open."""

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Limits:
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be above high ({self.high})")
        return self

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        return f"[{'-inf' if self.low is None else self.low}, {'inf' if self.high is None else self.high}]"


class PointRules(Strict):
    """Per-point overrides of the data-quality rules' defaults for the point's kind.

    Thresholds are in the point's unit. ``0`` switches a threshold-based rule off for the point;
    a field left out keeps the default of the point's kind (see ``pipeline/rules.py``).
    """

    expected: Limits | None = Field(
        default=None, description="Range practice expects; outside it a reading is uncertain (limits make it bad)"
    )
    max_rate_per_h: float | None = Field(
        default=None, ge=0, description="Largest plausible change per hour; a bigger jump is a spike (0: off)"
    )
    flatline_window_s: float | None = Field(default=None, ge=0, description="Window of the flatline rule (0: off)")
    flatline_min_spread: float | None = Field(
        default=None, ge=0, description="A full window whose spread stays under this is a flatline"
    )
    stale_after_s: float | None = Field(
        default=None, gt=0, description="No good sample for this long: stale (default: stale_after_polls polls)"
    )


class Counter(Strict):
    """An accumulating meter register: interval energy comes from its differences."""

    rollover: float | None = Field(
        default=None, gt=0,
        description="Value at which the counter wraps to 0, in the point's unit (e.g. 4294967.296 for a 32-bit "
        "Wh register read in kWh); default: from the register type and scale when the protocol knows it",
    )
    max_step: float | None = Field(
        default=None, gt=0, description="A larger increase between two samples is a reset or glitch, not energy"
    )


class Point(Strict):
    """A site-wide point. Protocol subclasses add an ``address``."""

    id: SiteId = Field(description="Site-wide stable id, e.g. 'ahu1.sat'")
    name: str = ""
    kind: PointKind = PointKind.GENERIC
    unit: str = ""
    brick: str | None = Field(default=None, description="Brick class, e.g. Supply_Air_Temperature_Sensor")
    zone: str | None = None
    equip: str | None = None
    limits: Limits | None = Field(default=None, description="Plausible range; outside it a reading is bad")
    writable: bool = False
    write_bounds: Limits | None = None
    poll_interval_s: float | None = Field(default=None, gt=0)
    rules: PointRules | None = Field(default=None, description="Overrides of the data-quality rules' defaults")
    counter: Counter | None = Field(default=None, description="An energy counter (kind energy): rollover and resets")
    # Filled in from the owning device when the configuration is loaded.
    device_id: str = ""

    @property
    def is_binary(self) -> bool:
        return False


ModbusTable = Literal["holding", "input", "coil", "discrete"]
ModbusType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
REGISTER_COUNT: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4, "bool": 1,
}


# "register" is the Modbus word for the field; pydantic warns only because BaseModel once had a
# method of that name, which nothing here uses.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class ModbusAddress(Strict):
    table: ModbusTable = "holding"
    register: int = Field(ge=0, le=65535, description="Zero-based PDU address")
    type: ModbusType = "uint16"
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: int | None = Field(default=None, ge=0, le=255, description="Overrides the device's unit id")

    @model_validator(mode="after")
    def _consistent(self) -> ModbusAddress:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"type must be 'bool' for table '{self.table}'")
        if not bit_table and self.type == "bool":
            raise ValueError(f"type 'bool' needs table 'coil' or 'discrete', not '{self.table}'")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.register + self.count - 1 > 65535:
            raise ValueError(f"register {self.register} + {self.count} registers passes 65535")
        return self

    @property
    def count(self) -> int:
        return REGISTER_COUNT[self.type]


class ModbusPoint(Point):
    address: ModbusAddress

    @property
    def is_binary(self) -> bool:
        return self.address.type == "bool"


class ModbusConnection(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    max_registers: int = Field(default=125, ge=1, le=125, description="Registers per read request")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="Coils/inputs per read request")
    max_gap: int = Field(default=16, ge=0, le=124, description="Unused registers read through to merge requests")
    breaker_failures: int = Field(default=3, ge=1, description="Failed requests that open the circuit")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="Seconds before an open circuit is tried again")


class Device(Strict):
    id: SiteId
    name: str = ""
    protocol: str
    poll_interval_s: float = Field(default=10.0, gt=0)

    def report_interval_s(self, point: Point) -> float:
        """How far apart readings of ``point`` are expected (the stale rule's unit): its poll
        interval; a device that pushes may deliver a change later than that."""
        return point.poll_interval_s or self.poll_interval_s

    @model_validator(mode="after")
    def _own_points(self) -> Device:
        # Each protocol's device declares its own ``points``; a point knows its device from here.
        for p in getattr(self, "points", ()):
            p.device_id = self.id
        return self


class ModbusDevice(Device):
    protocol: Literal["modbus"]
    connection: ModbusConnection = Field(default_factory=ModbusConnection)
    points: list[ModbusPoint] = Field(default_factory=list)
