"""The pure part of the OPC-UA adapter: status -> quality, value conversion, write coercion,
node ids and JSON-able values (no server)."""

from __future__ import annotations

import json
import math
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua

from eaio.models import OpcuaPoint, Quality
from eaio.protocol_adapters.opcua_read import (
    NodeIdError,
    builtin_type,
    coerce,
    decode,
    f32,
    iso,
    parse_node_id,
    plain,
    point_value,
    quality_of,
    split,
    status_name,
    timestamp,
    type_name,
)

NOW = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
VT = ua.VariantType


def point(value_type: str = "number") -> OpcuaPoint:
    return OpcuaPoint.model_validate({"id": "chw.dp", "device_id": "plc", "value_type": value_type, "unit": "kPa",
                                      "address": {"node_id": "ns=2;s=ChwLoop.DiffPressure"}})


def dv(value: object, vt: ua.VariantType, status: int = 0, source: datetime | None = NOW,
       server: datetime | None = None) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vt), StatusCode=ua.StatusCode(status), SourceTimestamp=source,
                        ServerTimestamp=server)


@pytest.mark.parametrize(("code", "quality", "reasons"), [
    (ua.StatusCodes.Good, Quality.GOOD, []),
    (ua.StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN, ["protocol_status:UncertainLastUsableValue"]),
    (ua.StatusCodes.UncertainSensorNotAccurate, Quality.UNCERTAIN, ["protocol_status:UncertainSensorNotAccurate"]),
    (ua.StatusCodes.BadSensorFailure, Quality.BAD, ["protocol_status:BadSensorFailure"]),
    (ua.StatusCodes.BadNodeIdUnknown, Quality.BAD, ["protocol_status:BadNodeIdUnknown"]),
    # Info bits (here: the value is at its high limit) qualify a code; they do not rename it.
    (ua.StatusCodes.UncertainEngineeringUnitsExceeded | 0x2, Quality.UNCERTAIN,
     ["protocol_status:UncertainEngineeringUnitsExceeded"]),
    (ua.StatusCodes.GoodLocalOverride, Quality.GOOD, []),
])
def test_status_to_quality(code: int, quality: Quality, reasons: list[str]) -> None:
    assert quality_of(ua.StatusCode(code)) == (quality, reasons)
    assert quality_of(code) == (quality, reasons)


def test_status_names() -> None:
    assert status_name(ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)) == "BadUserAccessDenied"
    assert status_name(None) == "Good"
    assert status_name(0x80FF0000) == "Bad"  # no such code: its severity at least


def test_point_values() -> None:
    num, flag = point(), point("bool")
    assert point_value(21.200000762939453, VT.Float, num) == 21.2  # a float32's noise is dropped
    assert point_value(21.200000762939453, VT.Double, num) == 21.200000762939453  # a double is kept
    assert point_value(7, VT.Int32, num) == 7
    assert isinstance(point_value(7, VT.Int32, num), int)
    assert point_value(True, VT.Boolean, num) == 1
    assert point_value(True, VT.Boolean, flag) is True
    assert point_value(0, VT.UInt16, flag) is False
    assert point_value(2, VT.UInt16, flag) is None
    assert point_value("on", VT.String, flag) is None
    assert point_value("12.5", VT.String, num) is None
    assert point_value(None, VT.Null, num) is None


def test_f32_round_trips() -> None:
    for x in (21.2, 0.1, 1e-7, 3.4028234663852886e38, -55.5, 123456.789):
        wire = struct.unpack("<f", struct.pack("<f", x))[0]
        y = f32(wire)
        assert struct.pack("<f", y) == struct.pack("<f", wire)
        assert len(repr(y)) <= len(repr(wire))
    assert math.isnan(f32(math.nan))


def test_timestamps() -> None:
    server = NOW + timedelta(seconds=1)
    later = NOW + timedelta(seconds=9)
    assert timestamp(NOW, server, later) == NOW
    assert timestamp(None, server, later) == server
    assert timestamp(None, None, later) == later
    # An unset DateTime decodes as 1601-01-01: it is no time at all.
    assert timestamp(datetime(1601, 1, 1, tzinfo=UTC), None, later) == later
    naive = timestamp(datetime(2026, 7, 15, 12, 0), None, later)  # what a server may send
    assert naive == NOW
    assert naive.tzinfo is not None


def test_decode() -> None:
    s = decode(dv(55.5, VT.Double), point(), NOW)
    assert (s.value, s.ts, s.quality, s.reasons, s.status) == (55.5, NOW, Quality.GOOD, [], "Good")
    # A Read is stamped when answered; a notification when the value changed.
    changed = NOW - timedelta(hours=1)
    assert decode(dv(55.5, VT.Double, source=changed), point(), NOW).ts == NOW
    assert decode(dv(55.5, VT.Double, source=changed), point(), NOW, source_time=True).ts == changed
    assert decode(dv(55.5, VT.Double, source=None, server=changed), point(), NOW, source_time=True).ts == changed

    s = decode(dv(55.5, VT.Double, ua.StatusCodes.UncertainLastUsableValue, source=None, server=NOW), point(), NOW)
    assert (s.value, s.quality, s.reasons) == (55.5, Quality.UNCERTAIN, ["protocol_status:UncertainLastUsableValue"])

    # Bad with a value keeps it; bad without one has none.
    s = decode(dv(12.0, VT.Double, ua.StatusCodes.BadSensorFailure), point(), NOW)
    assert (s.value, s.quality, s.reasons) == (12.0, Quality.BAD, ["protocol_status:BadSensorFailure"])
    s = decode(ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)), point(), NOW)
    assert (s.value, s.quality, s.reasons, s.status) == (None, Quality.BAD, ["protocol_status:BadNodeIdUnknown"],
                                                         "BadNodeIdUnknown")
    assert s.ts == NOW

    # Good, but not a number: bad, and said so.
    s = decode(dv("hello", VT.String), point(), NOW)
    assert (s.value, s.quality, s.reasons) == (None, Quality.BAD, ["protocol_status:unsupported_value"])
    s = decode(dv([1.0, 2.0], VT.Double), point(), NOW)  # an array is not one value
    assert s.quality == Quality.BAD

    s = decode(dv(True, VT.Boolean), point("bool"), NOW)
    assert s.value is True


@pytest.mark.parametrize(("value", "vt", "wire"), [
    (55, VT.Double, 55.0),
    (55.5, VT.Float, 55.5),
    (True, VT.Boolean, True),
    (1, VT.Boolean, True),
    (0.0, VT.Boolean, False),
    (12.0, VT.Int16, 12),
    (-32768, VT.Int16, -32768),
    (65535, VT.UInt16, 65535),
    (2**31 - 1, VT.Int32, 2**31 - 1),
    (4_294_967_295, VT.UInt32, 4_294_967_295),
    (-(2**63), VT.Int64, -(2**63)),
    (True, VT.UInt16, 1),  # a bool point on an integer node
])
def test_coerce(value: bool | float, vt: ua.VariantType, wire: bool | float) -> None:
    got = coerce(value, vt)
    assert got == wire
    assert type(got) is type(wire)


@pytest.mark.parametrize(("value", "vt", "why"), [
    (32768, VT.Int16, "outside the Int16 range -32768..32767"),
    (-1, VT.UInt16, "outside the UInt16 range"),
    (2**32, VT.UInt32, "outside the UInt32 range"),
    (256, VT.Byte, "outside the Byte range"),
    (1.5, VT.Int32, "whole numbers"),
    (1e39, VT.Float, "Float (float32) range"),
    (math.nan, VT.Double, "finite"),
    (math.inf, VT.Float, "finite"),
    (0.5, VT.Boolean, "true/false"),
    (2, VT.Boolean, "true/false"),
    (1.0, VT.String, "not String"),
])
def test_coerce_refuses(value: float, vt: ua.VariantType, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        coerce(value, vt)


def test_builtin_types() -> None:
    assert builtin_type(ua.NodeId(ua.ObjectIds.Double)) == VT.Double
    assert builtin_type(ua.NodeId(ua.ObjectIds.Boolean)) == VT.Boolean
    assert builtin_type(ua.NodeId(ua.ObjectIds.UInt16)) == VT.UInt16
    assert builtin_type(ua.NodeId(ua.ObjectIds.Duration)) == VT.Double
    assert builtin_type(ua.NodeId(ua.ObjectIds.Number)) is None  # abstract: the value's type says
    assert builtin_type(ua.NodeId(ua.ObjectIds.ServerState)) is None  # an enumeration
    assert builtin_type(ua.NodeId(11, 2)) is None  # not namespace 0
    assert builtin_type(None) is None


def test_node_ids() -> None:
    assert parse_node_id("ns=2;s=ChwLoop.DiffPressure") == ua.NodeId("ChwLoop.DiffPressure", 2)
    assert parse_node_id("i=2258") == ua.NodeId(2258, 0)
    ns = ["http://opcfoundation.org/UA/", "urn:server", "urn:eaio:sim"]
    nid = parse_node_id("nsu=urn:eaio:sim;s=ChwLoop.Flow", ns)
    assert (nid.Identifier, nid.NamespaceIndex) == ("ChwLoop.Flow", 2)
    assert type(nid) is ua.NodeId
    with pytest.raises(NodeIdError, match="no namespace 'urn:elsewhere'"):
        parse_node_id("nsu=urn:elsewhere;s=X", ns)
    with pytest.raises(NodeIdError, match="'ns=2;x=1' is not an OPC-UA node id"):
        parse_node_id("ns=2;x=1")


def test_plain_is_json() -> None:
    values = [
        ua.NodeId("A", 2), ua.QualifiedName("EURange", 0), ua.LocalizedText("kPa"), ua.StatusCode(0),
        ua.Variant(1.5), NOW, b"\x00\x01", ua.ServerState.Running, uuid.UUID(int=1), [1, 2.5, "x"],
        ua.Range(0.0, 200.0), ua.EUInformation(UnitId=4408652, DisplayName=ua.LocalizedText("°C")), math.inf,
    ]
    out = [plain(v) for v in values]
    json.dumps(out)
    assert out[:6] == ["ns=2;s=A", "0:EURange", "kPa", "Good", 1.5, NOW.isoformat()]
    assert out[7] == "Running"
    assert out[10] == {"Low": 0.0, "High": 200.0}
    assert out[11]["UnitId"] == 4408652
    assert out[11]["DisplayName"] == "°C"
    assert out[12] == "inf"
    assert iso(datetime(1601, 1, 1, tzinfo=UTC)) is None


def test_type_names_and_split() -> None:
    assert type_name(ua.Variant(1.0, VT.Double)) == "Double"
    assert type_name(ua.Variant([1, 2], VT.Int32)) == "Int32[]"
    assert type_name(ua.Variant()) is None
    assert split(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert split([], 3) == []
