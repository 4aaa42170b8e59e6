"""MQTT payload decoding (pure): every format, timestamps, and every dead-letter reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from eaio.models import MqttDevice, Quality, Reading
from eaio.protocol_adapters.mqtt_payload import PayloadDecoder, decode_message, parse_timestamp

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_device(**changes: Any) -> MqttDevice:
    raw: dict[str, Any] = {
        "id": "iot-gw",
        "protocol": "mqtt",
        "connection": {"max_payload_bytes": 256},
        "subscriptions": [
            {"topic": "plain/+/temp", "format": "number", "point": "{1}.temp"},
            {"topic": "occ/+", "format": "number", "point": "{1}.occ"},
            {"topic": "json/+/hum", "format": "json", "point": "{1}.hum", "path": "data.value"},
            {"topic": "list/+", "format": "json", "point": "{1}.co2", "path": "readings.0.v"},
            {"topic": "multi/+/+", "format": "json", "timestamp": "ts",
             "fields": {"t": "{1}.temp", "h": "{1}.hum", "c.ppm": "{1}.co2", "o": "{1}.occ"}},
            {"topic": "meters/#", "format": "json", "point": "main.power", "path": "kw"},
        ],
        "points": [
            {"id": f"{z}.{p}", "unit": u, **({"value_type": "bool"} if p == "occ" else {})}
            for z in ("zone1", "zone2")
            for p, u in (("temp", "degC"), ("hum", "%RH"), ("co2", "ppm"), ("occ", ""))
        ] + [{"id": "main.power", "unit": "kW"}],
    }
    raw.update(changes)
    return MqttDevice.model_validate(raw)


@pytest.fixture(scope="module")
def decoder() -> PayloadDecoder:
    return PayloadDecoder(make_device())


def values(readings: list[Reading]) -> dict[str, object]:
    return {r.point_id: r.value for r in readings}


def test_plain_numbers_fill_the_point_template_from_the_wildcard(decoder: PayloadDecoder) -> None:
    readings, dead = decoder.decode("plain/zone1/temp", b" 21.5\n", NOW)
    assert dead == []
    (r,) = readings
    assert (r.point_id, r.value, r.unit, r.ts) == ("zone1.temp", 21.5, "degC", NOW)
    assert (r.quality, r.reasons, r.device_id) == ("good", [], "iot-gw")
    assert decoder.decode("plain/zone2/temp", b"-3", NOW).readings[0].value == -3


@pytest.mark.parametrize(("payload", "expected"), [
    (b"true", True), (b"ON", True), (b"1", True), (b"false", False), (b"off", False), (b"0", False),
])
def test_bool_points_take_words_and_digits(decoder: PayloadDecoder, payload: bytes, expected: bool) -> None:
    (r,) = decoder.decode("occ/zone1", payload, NOW).readings
    assert r.value is expected


def test_json_path_and_list_index(decoder: PayloadDecoder) -> None:
    assert values(decoder.decode("json/zone2/hum", b'{"data": {"value": 44.5}}', NOW).readings) == {"zone2.hum": 44.5}
    payload = b'{"readings": [{"v": 612}, {"v": 1}]}'
    assert values(decoder.decode("list/zone1", payload, NOW).readings) == {"zone1.co2": 612}
    # Numeric strings are common on cheap sensors; they are accepted.
    assert values(decoder.decode("json/zone1/hum", b'{"data": {"value": "41.0"}}', NOW).readings) == {"zone1.hum": 41.0}


def test_one_json_message_carries_several_points_with_its_own_timestamp(decoder: PayloadDecoder) -> None:
    payload = json.dumps({"t": 22.1, "h": 40, "c": {"ppm": 800}, "o": "on", "ts": "2025-01-01T12:00:00+01:00"})
    readings, dead = decoder.decode("multi/zone1/env", payload.encode(), NOW)
    assert dead == []
    assert values(readings) == {"zone1.temp": 22.1, "zone1.hum": 40, "zone1.co2": 800, "zone1.occ": True}
    assert {r.ts for r in readings} == {datetime(2025, 1, 1, 11, 0, tzinfo=UTC)}
    assert {r.point_id: r.unit for r in readings}["zone1.co2"] == "ppm"


@pytest.mark.parametrize(("raw", "expected"), [
    ("2025-01-01T11:00:00Z", datetime(2025, 1, 1, 11, tzinfo=UTC)),
    ("2025-01-01T11:00:00", datetime(2025, 1, 1, 11, tzinfo=UTC)),  # naive = UTC
    (1735729200, datetime(2025, 1, 1, 11, tzinfo=UTC)),  # epoch seconds
    (1735729200.5, datetime(2025, 1, 1, 11, 0, 0, 500000, tzinfo=UTC)),
    (1735729200000, datetime(2025, 1, 1, 11, tzinfo=UTC)),  # epoch milliseconds (> 1e11)
    ("1735729200", datetime(2025, 1, 1, 11, tzinfo=UTC)),
])
def test_timestamps(decoder: PayloadDecoder, raw: object, expected: datetime) -> None:
    assert parse_timestamp(raw) == expected
    payload = json.dumps({"t": 20, "h": 40, "c": {"ppm": 500}, "o": 0, "ts": raw}).encode()
    readings, dead = decoder.decode("multi/zone2/x", payload, NOW)
    assert dead == []
    assert {r.ts for r in readings} == {expected}


def test_meters_under_a_hash_filter(decoder: PayloadDecoder) -> None:
    assert values(decoder.decode("meters/a/b/c", b'{"kw": 12.5}', NOW).readings) == {"main.power": 12.5}


def one_dead(decoder: PayloadDecoder, topic: str, payload: bytes) -> tuple[str, str]:
    readings, dead = decoder.decode(topic, payload, NOW)
    assert readings == []
    (letter,) = dead
    assert (letter.topic, letter.source, letter.received_at) == (topic, "mqtt:iot-gw", NOW)
    assert letter.payload == payload[:256]
    return letter.reason, letter.detail


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("plain/zone1/temp", b"warm", "malformed"),
    ("plain/zone1/temp", b"nan", "malformed"),
    ("plain/zone1/temp", b"\xff\xfe21", "malformed"),  # not UTF-8
    ("json/zone1/hum", b"{not json", "malformed"),
    ("json/zone1/hum", b'{"data": {}}', "missing_field"),
    ("json/zone1/hum", b'{"data": 5}', "missing_field"),
    ("list/zone1", b'{"readings": []}', "missing_field"),
    ("json/zone1/hum", b'{"data": {"value": "high"}}', "not_a_number"),
    ("json/zone1/hum", b'{"data": {"value": true}}', "not_a_number"),
    ("json/zone1/hum", b'{"data": {"value": [1]}}', "not_a_number"),
    ("occ/zone1", b"maybe", "malformed"),
    ("multi/zone1/x", b'{"t": 1, "h": 2, "c": {"ppm": 3}, "o": 1, "ts": "yesterday"}', "bad_timestamp"),
    ("multi/zone1/x", b'{"t": 1, "h": 2, "c": {"ppm": 3}, "o": 1}', "bad_timestamp"),
    ("multi/zone1/x", b'{"t": 1, "h": 2, "c": {"ppm": 3}, "o": 1, "ts": 1e300}', "bad_timestamp"),
    ("elsewhere/zone1", b"21", "unmapped"),  # no subscription matches
    ("plain/zone9/temp", b"21", "unmapped"),  # resolves to an undeclared point
    ("plain/zone1/temp", b"1" * 257, "too_large"),
    ("json/zone1/hum", b"{" * 300, "too_large"),  # checked before parsing
])
def test_dead_letters(decoder: PayloadDecoder, topic: str, payload: bytes, reason: str) -> None:
    got, detail = one_dead(decoder, topic, payload)
    assert got == reason
    assert detail


def test_one_message_gives_readings_and_dead_letters(decoder: PayloadDecoder) -> None:
    payload = b'{"t": 22.5, "c": {"ppm": "lots"}, "o": true, "ts": 1735729200}'
    readings, dead = decoder.decode("multi/zone1/x", payload, NOW)
    assert values(readings) == {"zone1.temp": 22.5, "zone1.occ": True}
    assert sorted(d.reason for d in dead) == ["missing_field", "not_a_number"]
    assert all(d.payload == payload for d in dead)
    # Two fields resolving to undeclared points give one dead letter naming both.
    readings, dead = decoder.decode("multi/zone7/x", payload, NOW)
    assert readings == []
    assert [d.reason for d in dead] == ["unmapped"]
    assert "zone7.temp" in dead[0].detail
    assert "zone7.occ" in dead[0].detail


def test_fast_readings_equal_validated_ones(decoder: PayloadDecoder) -> None:
    (fast,) = decoder.decode("plain/zone1/temp", b"21.5", NOW).readings
    slow = Reading(point_id="zone1.temp", value=21.5, unit="degC", ts=NOW, device_id="iot-gw")
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    fast.mark(Quality.BAD, "spike")  # readings stay mutable the normal way
    assert fast.quality == Quality.BAD
    assert fast.reasons == ["spike"]


def test_decode_message_and_many_topics_never_raise() -> None:
    device = make_device(connection={"max_payload_bytes": 16})
    assert decode_message(device, "plain/zone1/temp", b"7", NOW).readings[0].value == 7
    decoder = PayloadDecoder(device)
    for i in range(5000):  # more distinct topics than the cache holds
        _, dead = decoder.decode(f"plain/z{i}/temp", b"1", NOW)
        assert dead[0].reason == "unmapped"
