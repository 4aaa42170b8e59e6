"""The pure part of OPC-UA reads and writes: status codes, values in and out, node ids.

No I/O here. asyncua's values come in, plain Python goes out:

* A ``StatusCode`` becomes a quality: Good is good; Uncertain* and Bad* carry the reason
  ``protocol_status:<name>`` (the name without the low 16 info bits, which only qualify it).
* ``Float`` (a float32 on the wire) becomes the shortest decimal that is the same float32
  (``f32``): a PLC's 21.2 arrives as 21.200000762939453 and leaves as 21.2. ``Double`` and the
  integer types stay as they are; bool points take Boolean nodes (or 0/1).
* A polled reading's time is when the Read was answered: a SourceTimestamp is the time the value
  last CHANGED (Part 4, 7.7.3), hours ago for a steady setpoint, and would make it look stale.
  A notification's is the source timestamp when the server gives one, else the server's: a
  data change is stamped when it happened (queued samples keep their own times).
* ``coerce`` turns an engineering value into what a node of a given built-in type takes,
  refusing what would not fit (``ValueError``, the adapter's ``invalid_argument``).
* ``plain`` turns anything asyncua decodes into JSON-able Python, for the raw tools.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from asyncua import ua
from asyncua.ua.uaerrors import UaError

from ..models import OpcuaPoint, Quality, Value
from .values import f32

__all__ = [
    "NodeIdError",
    "Sample",
    "builtin_type",
    "coerce",
    "decode",
    "f32",
    "iso",
    "parse_node_id",
    "plain",
    "point_value",
    "quality_of",
    "split",
    "status_name",
    "timestamp",
    "type_name",
]

T = TypeVar("T")
_INFO_BITS = 0xFFFF  # the low 16 bits of a StatusCode qualify it (overflow, limits, semantics changed)
_FLOAT_MAX = 3.4028234663852886e38
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
# Data types of namespace 0 that are not built-in types themselves but are always encoded as one.
_ALIASES: dict[int, ua.VariantType] = {
    288: ua.VariantType.UInt32,  # IntegerId
    289: ua.VariantType.UInt32,  # Counter
    290: ua.VariantType.Double,  # Duration
    294: ua.VariantType.DateTime,  # UtcTime
}


class NodeIdError(ValueError):
    """A node id that cannot be parsed, or whose namespace URI the server does not have."""


class Sample(NamedTuple):
    """One DataValue as EAIO sees it."""

    value: Value | None
    ts: datetime
    quality: Quality
    reasons: list[str]
    status: str  # the StatusCode's name


# -- status codes -------------------------------------------------------------------------------
def status_name(code: ua.StatusCode | int | None) -> str:
    """'Good', 'BadNodeIdUnknown', 'UncertainLastUsableValue'... (info bits ignored)."""
    value = 0 if code is None else code.value if isinstance(code, ua.StatusCode) else int(code)
    return ua.StatusCode(value & ~_INFO_BITS).name


def quality_of(code: ua.StatusCode | int | None) -> tuple[Quality, list[str]]:
    status = code if isinstance(code, ua.StatusCode) else ua.StatusCode(0 if code is None else int(code))
    if status.is_good():
        return Quality.GOOD, []
    quality = Quality.UNCERTAIN if status.is_uncertain() else Quality.BAD
    return quality, [f"protocol_status:{status_name(status)}"]


# -- values -------------------------------------------------------------------------------------
def point_value(value: Any, variant_type: ua.VariantType | None, point: OpcuaPoint) -> Value | None:
    """The point's value from a node's, or None when it is not one (a string, an array...)."""
    if point.is_binary:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return f32(value) if variant_type == ua.VariantType.Float else value
    return None


def timestamp(source: datetime | None, server: datetime | None, now: datetime) -> datetime:
    """The source timestamp, else the server's, else ``now``; always timezone-aware UTC."""
    for ts in (source, server):
        # asyncua decodes an unset DateTime (0) as 1601-01-01: no time at all.
        if ts is not None and ts.year > 1601:
            return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return now


def decode(dv: ua.DataValue, point: OpcuaPoint, now: datetime, *, source_time: bool = False) -> Sample:
    """A DataValue of ``point``'s node as value, time and quality. The time is ``now`` (a Read),
    or with ``source_time`` the DataValue's own (a data-change notification).

    A Bad status keeps the value the server sent with it (None if it sent none). A Good one
    whose value is not a number (or bool) for this point is bad ``protocol_status:unsupported_value``.
    """
    variant = dv.Value
    raw = None if variant is None or variant.is_array else variant.Value
    value = point_value(raw, None if variant is None else variant.VariantType, point)
    ts = timestamp(dv.SourceTimestamp, dv.ServerTimestamp, now) if source_time else now
    code = 0 if dv.StatusCode is None else dv.StatusCode.value
    if code == 0 and value is not None:  # the common case, kept cheap: thousands a second
        return Sample(value, ts, Quality.GOOD, [], "Good")
    quality, reasons = quality_of(code)
    if value is None and quality != Quality.BAD:
        quality, reasons = Quality.BAD, [*reasons, "protocol_status:unsupported_value"]
    return Sample(value, ts, quality, reasons, status_name(code))


def builtin_type(data_type: ua.NodeId | None) -> ua.VariantType | None:
    """The built-in type a DataType node id is encoded as; None for abstract or unknown types
    (Number, BaseDataType, enumerations, structures): then the node's current value says."""
    if data_type is None or data_type.NamespaceIndex != 0 or not isinstance(data_type.Identifier, int):
        return None
    ident = data_type.Identifier
    if 1 <= ident <= 25:
        return ua.VariantType(ident)
    return _ALIASES.get(ident)


def coerce(value: Value, variant_type: ua.VariantType) -> bool | int | float:
    """``value`` as a node of ``variant_type`` takes it. ValueError says why it cannot."""
    if variant_type == ua.VariantType.Boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):  # 0 and 1 compare equal to the bools
            return bool(value)
        raise ValueError("a Boolean node takes true/false or 1/0")
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float):
        raise ValueError("a number is expected")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a finite number is expected")
    name = variant_type.name
    limits = _INT_RANGES.get(variant_type)
    if limits is not None:
        if value != int(value):
            raise ValueError(f"a {name} node takes whole numbers")
        low, high = limits
        if not low <= int(value) <= high:
            raise ValueError(f"outside the {name} range {low}..{high}")
        return int(value)
    if variant_type in (ua.VariantType.Float, ua.VariantType.Double):
        try:
            v = float(value)
        except OverflowError:
            raise ValueError(f"outside the {name} range") from None
        if variant_type == ua.VariantType.Float and abs(v) > _FLOAT_MAX:
            raise ValueError("outside the Float (float32) range")
        return v
    raise ValueError(f"EAIO writes numbers and booleans, not {name}")


def type_name(variant: ua.Variant | None) -> str | None:
    """'Double', 'Boolean', 'Double[]' for arrays; None for a null value."""
    if variant is None or variant.VariantType == ua.VariantType.Null:
        return None
    return variant.VariantType.name + ("[]" if variant.is_array else "")


# -- node ids -----------------------------------------------------------------------------------
def parse_node_id(text: str, namespaces: Sequence[str] = ()) -> ua.NodeId:
    """A node id from its string form; ``nsu=<uri>;`` is resolved against the server's namespace
    array (``namespaces``). NodeIdError when it cannot be."""
    try:
        nid = ua.NodeId.from_string(text)
    except (UaError, ValueError, TypeError) as err:
        raise NodeIdError(f"'{text}' is not an OPC-UA node id ({err})") from None
    uri = getattr(nid, "NamespaceUri", None)
    if uri:
        if uri not in namespaces:
            raise NodeIdError(f"the server has no namespace '{uri}' (node {text})")
        return ua.NodeId(nid.Identifier, list(namespaces).index(uri), nid.NodeIdType)
    if isinstance(nid, ua.ExpandedNodeId):  # no server or URI part: a plain node id
        return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)
    return nid


# -- JSON-able ----------------------------------------------------------------------------------
def iso(ts: datetime | None) -> str | None:
    if ts is None or ts.year <= 1601:
        return None
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).isoformat()


def plain(v: Any) -> Any:
    """Plain JSON-able Python for any value asyncua decodes (structures become dicts)."""
    if isinstance(v, Enum):  # before int: asyncua's enumerations are IntEnums
        return v.name
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)  # JSON has no NaN or infinity
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, bytes | bytearray):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, ua.NodeId):
        return v.to_string()
    if isinstance(v, ua.QualifiedName):
        return v.to_string()
    if isinstance(v, ua.LocalizedText):
        return v.Text
    if isinstance(v, ua.StatusCode):
        return status_name(v)
    if isinstance(v, ua.Variant | ua.DataValue):
        return plain(v.Value)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.name != "Encoding"}
    return str(v)


def split(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive chunks of at most ``size`` (none for no items)."""
    return [list(items[i:i + size]) for i in range(0, len(items), max(1, size))]
