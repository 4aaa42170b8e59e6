"""ReadingBatch, the columnar form of readings: round trips, splitting, marking, and the
validator's column pass agreeing with its Reading pass."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from eaio.models import Limits, Point, Quality, Reading, ReadingBatch, from_us, to_us
from eaio.pipeline import QualityValidator, StaleState

T0 = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)


def sample(n: int) -> list[Reading]:
    out = []
    for i in range(n):
        r = Reading(point_id=f"p{i % 7}", value=[1.5, 2, True, None][i % 4], unit="degC" if i % 2 else "",
                    ts=T0 + timedelta(microseconds=i), device_id=None if i % 3 else "dev")
        if i % 5 == 0:
            r.mark(Quality.BAD, "range_high")
            r.detail = f"detail {i}"
        out.append(r)
    return out


def test_microseconds_are_exact() -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert from_us(to_us(ts)) == ts
    assert to_us(datetime(1960, 1, 1, tzinfo=UTC)) < 0


def test_readings_round_trip_through_columns() -> None:
    readings = sample(23)
    b = ReadingBatch.from_readings(readings)
    assert len(b) == 23
    assert b.readings() == readings
    assert b.bad_count() == sum(r.quality == Quality.BAD for r in readings)
    # A plain good row reports the same fields as set as an ordinary Reading would.
    plain = Reading(point_id="p1", value=1.5, unit="degC", ts=T0, device_id="dev")
    assert ReadingBatch.from_readings([plain]).reading(0).model_fields_set == plain.model_fields_set


def test_take_extend_select_and_copy_keep_rows_and_their_reasons() -> None:
    readings = sample(20)
    b = ReadingBatch.from_readings(readings)
    head = b.take(6)
    assert head.readings() == readings[:6]
    assert b.readings() == readings[6:]
    head.extend(b)
    assert head.readings() == readings
    picked = head.select([19, 0, 5])
    assert picked.readings() == [readings[19], readings[0], readings[5]]
    picked.mark(1, Quality.BAD, "spike")  # a selection owns its reasons
    assert head.reasons[0] == ["range_high"]
    copy = head.copy()
    copy.mark(0, Quality.BAD, "stale")
    assert head.reasons[0] == ["range_high"]
    rest = head.take(100)  # more than it holds: everything, and the batch is left empty
    assert len(rest) == 20
    assert len(head) == 0
    assert head.readings() == []


def test_mark_never_raises_quality_and_adds_a_reason_once() -> None:
    b = ReadingBatch()
    b.append("p", 1.0, 0)
    b.mark(0, Quality.BAD, "range_high")
    b.mark(0, Quality.UNCERTAIN, "range_high")
    b.mark(0, Quality.UNCERTAIN, "stale")
    assert (b.quality[0], b.reasons[0]) == (Quality.BAD, ["range_high", "stale"])


def test_the_column_pass_marks_exactly_as_the_reading_pass() -> None:
    points = [Point(id=f"p{i}", limits=Limits(low=0, high=50)) for i in range(5)] + [Point(id="p5")]
    validator = QualityValidator.from_points(points, {p.id: 5.0 for p in points}, 3)
    rng = random.Random(7)
    now = T0 + timedelta(seconds=20)

    def make() -> list[Reading]:
        out = []
        for _ in range(2000):
            value = rng.choice([rng.uniform(-10, 60), True, None, math.nan, 7])
            ts = now - timedelta(seconds=rng.choice([0, 1, 30]))
            out.append(Reading(point_id=f"p{rng.randrange(7)}", value=value, ts=ts))
        return out

    readings = make()
    as_objects = [r.model_copy(update={"reasons": list(r.reasons)}) for r in readings]
    state_a, state_b = StaleState(), StaleState()
    validator.validate(as_objects, now, state_a)
    batch = ReadingBatch.from_readings(readings)
    validator.validate_batch(batch, to_us(now), state_b)
    assert [(r.quality, r.reasons) for r in batch.readings()] == [(r.quality, r.reasons) for r in as_objects]
    assert state_a == state_b
    assert {"range_high", "range_low", "stale", "comm_failure", "protocol_status:nan"} <= {
        x for r in as_objects for x in r.reasons}
