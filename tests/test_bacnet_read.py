"""The pure part of BACnet reads: float32 clean-up, batch planning, quality, value conversion."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from bacpypes3.basetypes import BinaryPV, EngineeringUnits, PriorityValue, Reliability, StatusFlags
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    Double,
    Enumerated,
    Null,
    ObjectIdentifier,
    Real,
    Unsigned,
)

from eaio.models import BacnetPoint, Quality
from eaio.protocol_adapters.bacnet_read import (
    Status,
    f32,
    objects_per_request,
    plain,
    point_value,
    priority_slots,
    quality_of,
    split,
)


def point(pid: str, kind: str = "analog-value", instance: int = 1, prop: str = "present-value") -> BacnetPoint:
    return BacnetPoint.model_validate(
        {"id": pid, "address": {"type": kind, "instance": instance, "property": prop}, "device_id": "d"}
    )


def as_f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


@pytest.mark.parametrize("x", [21.2, 0.1, 23.5, -3.3, 1e-7, 123456.7, 0.0, 1e30, 3.4028234e38])
def test_f32_gives_the_shortest_decimal_of_the_same_float32(x: float) -> None:
    wire = as_f32(x)
    cleaned = f32(wire)
    assert as_f32(cleaned) == wire  # nothing lost
    assert cleaned == pytest.approx(x, rel=1e-6)
    assert len(repr(cleaned)) <= len(repr(x))


def test_f32_leaves_what_it_cannot_improve() -> None:
    assert f32(21.200000762939453) == 21.2
    assert f32(float("inf")) == float("inf")
    assert f32(1e300) == 1e300  # not a float32 at all
    assert f32(as_f32(1 / 3)) == pytest.approx(0.33333334, abs=0)


def test_objects_per_request_respects_apdu_and_segmentation() -> None:
    assert objects_per_request(25, None, None) == 25  # nothing known: the configured batch
    assert objects_per_request(25, 1476, True) == 25
    assert objects_per_request(500, 1476, True) == (1476 - 8) // 16  # requests are never segmented
    assert objects_per_request(25, 480, False) == (480 - 8) // 48  # the answer must fit one APDU
    assert objects_per_request(25, None, False) == 25  # our 1476 bytes take 30 objects
    assert objects_per_request(25, 50, False) == 1  # never below one


def test_split_keeps_points_of_one_object_together() -> None:
    pts = [point("a", instance=1), point("b", instance=2), point("b2", instance=2, prop="units"),
           point("c", instance=3), point("d", instance=4)]
    batches = split(pts, 2)
    assert [[p.id for p in b] for b in batches] == [["a", "b", "b2"], ["c", "d"]]
    assert split([], 3) == []


@pytest.mark.parametrize(("status", "quality", "reasons"), [
    (Status(), Quality.GOOD, []),
    (Status(in_alarm=True), Quality.GOOD, []),
    (Status(fault=True, reliability="unreliable-other"), Quality.BAD, ["protocol_status:unreliable-other"]),
    (Status(fault=True), Quality.BAD, ["protocol_status:fault"]),
    (Status(reliability="no-fault-detected"), Quality.GOOD, []),
    (Status(out_of_service=True), Quality.UNCERTAIN, ["protocol_status:out_of_service"]),
    (Status(overridden=True), Quality.UNCERTAIN, ["protocol_status:overridden"]),
    (Status(fault=True, out_of_service=True, reliability="over-range"), Quality.BAD,
     ["protocol_status:over-range", "protocol_status:out_of_service"]),
])
def test_quality_of(status: Status, quality: Quality, reasons: list[str]) -> None:
    assert quality_of(status) == (quality, reasons)


def test_status_from_device_values() -> None:
    s = Status.from_values(StatusFlags([0, 1, 0, 0]), Reliability("unreliableOther"), Boolean(False))
    assert s == Status(fault=True, reliability="unreliable-other")
    assert Status.from_values(StatusFlags([1, 0, 1, 1])) == Status(in_alarm=True, overridden=True, out_of_service=True)
    assert Status.from_values(None, None, Boolean(True)).out_of_service
    assert Status.from_values("not flags", object(), object()) == Status()  # errors in their place are ignored


def test_point_values() -> None:
    assert point_value(Real(21.2)) == 21.2
    assert point_value(Double(21.2)) == 21.2
    assert point_value(BinaryPV("active"), point("b", "binary-input")) is True
    assert point_value(BinaryPV("inactive"), point("b", "binary-value")) is False
    assert point_value(Unsigned(3), point("m", "multi-state-value")) == 3
    assert point_value(Boolean(True)) is True
    assert point_value(Enumerated(4)) == 4
    assert point_value(CharacterString("x")) is None


def test_plain_values_are_json_able() -> None:
    cases: list[tuple[Any, Any]] = [
        (Real(0.1), 0.1), (Null(()), None), (EngineeringUnits("degreesCelsius"), "degrees-celsius"),
        (ObjectIdentifier("analog-input,1"), "analog-input,1"), (CharacterString("zone"), "zone"),
        (StatusFlags([0, 1, 0, 1]), ["fault", "out-of-service"]), (Unsigned(7), 7), (Boolean(1), True),
        ([ObjectIdentifier("device,1"), ObjectIdentifier("analog-value,2")], ["device,1", "analog-value,2"]),
        (PriorityValue(real=23.5), 23.5),
    ]
    for raw, want in cases:
        assert plain(raw) == want
        assert type(plain(raw)) is type(want)


def test_priority_slots() -> None:
    array = [PriorityValue(null=())] * 16
    array[7] = PriorityValue(real=23.5)
    array[15] = PriorityValue(real=19.0)
    assert priority_slots(array, binary=False) == [{"priority": 8, "value": 23.5}, {"priority": 16, "value": 19.0}]
    array = [PriorityValue(null=())] * 16
    array[0] = PriorityValue(enumerated=1)
    assert priority_slots(array, binary=True) == [{"priority": 1, "value": True}]
    assert priority_slots(None, binary=False) == []
