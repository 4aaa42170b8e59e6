"""The flattened output schemas accept and refuse exactly what the models do."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from eaio.models import Quality, Reading
from eaio.servers.results import DeviceList, PointList, ReadPointsResult


@pytest.mark.parametrize("model", [ReadPointsResult, PointList, DeviceList])
def test_no_references_left(model: type) -> None:
    assert "$ref" not in json.dumps(model.model_json_schema())


def test_schema_accepts_real_results_and_refuses_bad_ones() -> None:
    schema = ReadPointsResult.model_json_schema()
    check = Draft202012Validator(schema)
    good = ReadPointsResult(
        readings=[
            Reading(point_id="a.b", value=21.5, unit="degC"),
            Reading(point_id="a.c", value=True),
            Reading(point_id="a.d", value=None, quality=Quality.BAD, reasons=["comm_failure"], detail="x"),
        ]
    ).model_dump(mode="json")
    assert list(check.iter_errors(good)) == []
    for field, bad in [("value", "21.5"), ("quality", "excellent"), ("detail", 3), ("reasons", "stale")]:
        doc = json.loads(json.dumps(good))
        doc["readings"][0][field] = bad
        assert list(check.iter_errors(doc)), f"{field}={bad!r} should be refused"
    doc = json.loads(json.dumps(good))
    del doc["readings"][0]["point_id"]
    assert list(check.iter_errors(doc))


def test_aged_reading_built_fast_equals_a_validated_one() -> None:
    from datetime import timedelta

    from eaio.servers.results import AgedReading

    r = Reading(point_id="a.b", value=21.5, unit="degC", reasons=["stale"], quality=Quality.UNCERTAIN)
    aged = AgedReading.of(r, r.ts + timedelta(seconds=2.5))
    assert aged == AgedReading(**r.model_dump(), age_s=2.5)
    assert aged.model_dump(mode="json") == AgedReading(**r.model_dump(), age_s=2.5).model_dump(mode="json")
    assert AgedReading.of(Reading(point_id="a.c", value=None), r.ts).age_s is None
