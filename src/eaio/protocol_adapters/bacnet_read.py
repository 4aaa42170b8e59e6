"""The pure part of BACnet reads: batch planning, value conversion and quality mapping.

No I/O here. bacpypes3 values come in (its primitive types subclass float, int, str and list),
plain Python goes out:

* ``Real`` (a float32 on the wire) becomes the shortest decimal that is the same float32
  (``f32``): a device's 21.2 arrives as 21.200000762939453 and leaves as 21.2. Nothing is lost
  (the result maps back to the very same float32), only the noise of widening it to a double.
  ``Double`` stays as it is.
* Binary present-values become bools (active = True); multi-state and other unsigned values ints.
* Enumerations become their kebab-case names, bit strings the list of bits that are set
  (``plain``), for the raw tools.

Quality comes from status-flags (out-of-service is its bit 3, fault its bit 1) and, for objects
whose fault bit is set, reliability (``quality_of``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bacpypes3.basetypes import PriorityValue
from bacpypes3.constructeddata import Array, Choice, List
from bacpypes3.constructeddata import Sequence as BacSequence
from bacpypes3.primitivedata import (
    BitString,
    Boolean,
    CharacterString,
    Date,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    OctetString,
    Real,
    Time,
    Unsigned,
)

from ..models import BacnetPoint, Quality, Value
from .values import f32

__all__ = [
    "OWN_MAX_APDU",
    "STATUS_PROPERTIES",
    "Status",
    "f32",
    "objects_per_request",
    "plain",
    "point_value",
    "priority_slots",
    "quality_of",
    "split",
]

# What EAIO's own application accepts in one APDU (the BACnet/IP maximum).
OWN_MAX_APDU = 1476
# Asked of every object next to the point's property. status-flags carries out-of-service (bit 3)
# and fault (bit 1); reliability, the fault's name, is asked in a second request of faulted objects only.
STATUS_PROPERTIES = ("status-flags",)

# Upper bounds of the encoded sizes (bytes) of a ReadPropertyMultiple per object. Request: object
# id (5) + open/close (2) + property ids (2 each). Answer: object id (5) + open/close (2) + per
# property id (2) + open/close (2) + value: a Real (5), status-flags (3), or an error (6). They
# were sized for four properties; with the point's and status-flags asked they leave room for a
# second point on the object, a Double or a short string, and the batches stay as they were.
_REQUEST_HEADER, _REQUEST_PER_OBJECT = 8, 16
_ANSWER_HEADER, _ANSWER_PER_OBJECT = 8, 48
_NO_FAULT = "no-fault-detected"


def objects_per_request(batch: int, max_apdu: int | None, segmented: bool | None) -> int:
    """Objects one ReadPropertyMultiple may ask for: ``batch``, fewer when the request would not
    fit the device's max APDU or (when the device cannot segment) its answer would not fit one."""
    n = batch
    if max_apdu is not None:
        # EAIO never segments a request: it must fit the device's APDU.
        n = min(n, (max_apdu - _REQUEST_HEADER) // _REQUEST_PER_OBJECT)
    if segmented is False:
        limit = OWN_MAX_APDU if max_apdu is None else min(max_apdu, OWN_MAX_APDU)
        n = min(n, (limit - _ANSWER_HEADER) // _ANSWER_PER_OBJECT)
    return max(1, n)


def split(points: Sequence[BacnetPoint], per_request: int) -> list[list[BacnetPoint]]:
    """Points grouped into requests of at most ``per_request`` distinct objects, in order.

    Several points on one object (present-value and another property) share its place."""
    batches: list[list[BacnetPoint]] = []
    objects: set[str] = set()
    current: list[BacnetPoint] = []
    for p in points:
        oid = p.address.object_id
        if oid not in objects and len(objects) >= per_request:
            batches.append(current)
            current, objects = [], set()
        objects.add(oid)
        current.append(p)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True, slots=True)
class Status:
    """What a device says about an object's health; None where it did not say."""

    in_alarm: bool = False
    fault: bool = False
    overridden: bool = False
    out_of_service: bool = False
    reliability: str | None = None

    @classmethod
    def from_values(cls, flags: Any = None, reliability: Any = None, out_of_service: Any = None) -> Status:
        bits = [int(b) for b in flags] if isinstance(flags, list) else []
        bits += [0] * (4 - len(bits))
        oos = bool(bits[3]) or (isinstance(out_of_service, int) and bool(out_of_service))
        rel = str(reliability) if isinstance(reliability, Enumerated) else None
        return cls(bool(bits[0]), bool(bits[1]), bool(bits[2]), oos, rel)


def quality_of(status: Status) -> tuple[Quality, list[str]]:
    """Quality and reasons: a fault or any reliability but no-fault-detected is BAD
    (``protocol_status:<reliability>``); out-of-service and overridden are UNCERTAIN;
    in-alarm alone is a statement about the process, not the measurement, and stays GOOD."""
    reasons: list[str] = []
    quality = Quality.GOOD
    if status.reliability is not None and status.reliability != _NO_FAULT:
        quality = Quality.BAD
        reasons.append(f"protocol_status:{status.reliability}")
    elif status.fault:
        quality = Quality.BAD
        reasons.append("protocol_status:fault")
    if status.out_of_service:
        quality = Quality.BAD if quality == Quality.BAD else Quality.UNCERTAIN
        reasons.append("protocol_status:out_of_service")
    if status.overridden:
        quality = Quality.BAD if quality == Quality.BAD else Quality.UNCERTAIN
        reasons.append("protocol_status:overridden")
    return quality, reasons


def point_value(value: Any, point: BacnetPoint | None = None) -> Value | None:
    """A point's engineering value from what the device sent; None if it is not a number.

    Binary objects' enumerated values are bools (active = True) whatever property they come from.
    """
    if isinstance(value, Real):
        return f32(float(value))
    if isinstance(value, Double):
        return float(value)
    if isinstance(value, Boolean):
        return bool(value)
    if isinstance(value, Enumerated):
        if point is not None and point.is_binary:
            return int(value) == 1
        return int(value)
    if isinstance(value, Unsigned | Integer):
        return int(value)
    if isinstance(value, bool | int | float):  # already plain (tests, other stacks' decoders)
        return value
    return None


def plain(value: Any) -> Any:
    """A JSON-able form of any decoded BACnet value (for the raw tools)."""
    if value is None or isinstance(value, Null):
        return None
    if isinstance(value, Real):
        return f32(float(value))
    if isinstance(value, Double):
        return float(value)
    if isinstance(value, Boolean):
        return bool(value)
    if isinstance(value, Enumerated | ObjectIdentifier | Date | Time):
        return str(value)
    if isinstance(value, Unsigned | Integer):
        return int(value)
    if isinstance(value, CharacterString):
        return str(value)
    if isinstance(value, OctetString):
        return bytes(value).hex()
    if isinstance(value, BitString):
        names = {v: k for k, v in getattr(type(value), "_bitstring_names", {}).items()}
        if names:
            return [_kebab(names.get(i, str(i))) for i, bit in enumerate(value) if bit]
        return [int(b) for b in value]
    if isinstance(value, PriorityValue | Choice):
        choice = getattr(value, "_choice", None)
        return plain(getattr(value, choice)) if choice else None
    if isinstance(value, Array | List | list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, BacSequence):
        return {_kebab(k): plain(getattr(value, k, None)) for k in getattr(value, "_order", ())
                if getattr(value, k, None) is not None}
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def priority_slots(array: Any, binary: bool) -> list[dict[str, Any]]:
    """The non-null slots of a priority array: ``[{"priority": 8, "value": 23.5}, ...]``."""
    slots: list[dict[str, Any]] = []
    for i, pv in enumerate(array or (), start=1):
        choice = getattr(pv, "_choice", None)
        if choice is None or choice == "null":
            continue
        raw = getattr(pv, choice)
        value: Any = int(raw) == 1 if binary and isinstance(raw, int | Enumerated) else plain(raw)
        slots.append({"priority": i, "value": value})
    return slots


def _kebab(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name).lstrip("-")
