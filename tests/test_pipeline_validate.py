"""The quality validator on crafted readings: range, comm failure, stale, nothing dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eaio.config import SiteConfig
from eaio.models import Limits, Point, PointRules, Quality, Reading, to_us
from eaio.pipeline import PointRule, QualityValidator, StaleState

T0 = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
POLL = 5.0  # seconds
STALE_AFTER_POLLS = 3


@pytest.fixture
def validator() -> QualityValidator:
    # zone1.temp is a zone air temperature by its id: its role's defaults (expected range, spike,
    # flatline) are switched off here, since these tests are about limits, failures and staleness
    # (tests/test_pipeline_rules.py covers the defaults).
    off = PointRules(expected=Limits(), max_rate_per_h=0, flatline_window_s=0)
    points = [
        Point(id="zone1.temp", unit="degC", limits=Limits(low=5, high=40), rules=off),
        Point(id="ahu1.fan_speed", unit="%", limits=Limits(low=0, high=100)),
        Point(id="ahu1.fan_status"),
    ]
    intervals = {p.id: POLL for p in points}
    return QualityValidator.from_points(points, intervals, STALE_AFTER_POLLS)


def reading(point_id: str, value: float | bool | None, ts: datetime = T0) -> Reading:
    return Reading(point_id=point_id, value=value, ts=ts)


def failed(point_id: str, ts: datetime = T0) -> Reading:
    r = Reading(point_id=point_id, value=None, ts=ts, detail="device_offline: zones-ctrl did not answer")
    r.mark(Quality.BAD, "comm_failure")
    return r


def test_good_values_stay_good(validator: QualityValidator) -> None:
    batch = [reading("zone1.temp", 21.5), reading("ahu1.fan_speed", 0), reading("ahu1.fan_status", True)]
    validator.validate(batch, T0)
    assert [(r.quality, r.reasons) for r in batch] == [(Quality.GOOD, [])] * 3


def test_limits_are_inclusive(validator: QualityValidator) -> None:
    batch = [reading("zone1.temp", 5.0), reading("zone1.temp", 40.0)]
    validator.validate(batch, T0)
    assert all(r.quality == Quality.GOOD for r in batch)


def test_range_high_and_low_are_bad_and_keep_their_value(validator: QualityValidator) -> None:
    high, low = reading("zone1.temp", 40.01), reading("ahu1.fan_speed", -0.5)
    validator.validate([high, low], T0)
    assert (high.quality, high.reasons, high.value) == (Quality.BAD, ["range_high"], 40.01)
    assert (low.quality, low.reasons, low.value) == (Quality.BAD, ["range_low"], -0.5)


def test_nan_is_bad(validator: QualityValidator) -> None:
    r = reading("zone1.temp", float("nan"))
    validator.validate([r], T0)
    assert r.quality == Quality.BAD
    assert r.reasons == ["protocol_status:nan"]


def test_comm_failure_stays_bad_with_its_detail(validator: QualityValidator) -> None:
    r = failed("zone1.temp")
    validator.validate([r], T0, StaleState())
    assert (r.quality, r.reasons, r.value) == (Quality.BAD, ["comm_failure"], None)
    assert str(r.detail).startswith("device_offline:")


def test_a_none_value_marked_good_is_made_bad(validator: QualityValidator) -> None:
    r = reading("zone1.temp", None)
    validator.validate([r], T0)
    assert (r.quality, r.reasons) == (Quality.BAD, ["comm_failure"])


def test_unknown_points_pass_through(validator: QualityValidator) -> None:
    r = reading("not.configured", 1e9)
    validator.validate([r], T0, StaleState())
    assert r.quality == Quality.GOOD


def test_stale_after_n_missed_polls(validator: QualityValidator) -> None:
    state = StaleState()
    validator.validate([reading("zone1.temp", 21.0, T0)], T0, state)
    threshold = STALE_AFTER_POLLS * POLL
    marks = []
    for poll in range(1, 6):
        now = T0 + timedelta(seconds=poll * POLL)
        r = failed("zone1.temp", now)
        validator.validate([r], now, state)
        marks.append("stale" in r.reasons)
    # Polls 1..3 are within 3 x 5 s of the last good sample; from poll 4 on the point is stale.
    assert marks == [poll * POLL > threshold for poll in range(1, 6)] == [False, False, False, True, True]
    assert r.reasons == ["comm_failure", "stale"]

    # One good sample clears it.
    now = T0 + timedelta(seconds=6 * POLL)
    fresh = reading("zone1.temp", 21.2, now)
    validator.validate([fresh], now, state)
    assert (fresh.quality, fresh.reasons) == (Quality.GOOD, [])
    assert state.last_good["zone1.temp"] == to_us(now)


def test_out_of_range_samples_are_not_good_samples(validator: QualityValidator) -> None:
    state = StaleState()
    validator.validate([reading("zone1.temp", 21.0, T0)], T0, state)
    now = T0 + timedelta(seconds=4 * POLL)
    r = reading("zone1.temp", 99.0, now)
    validator.validate([r], now, state)
    assert r.reasons == ["range_high", "stale"]


def test_a_point_that_never_answers_goes_stale(validator: QualityValidator) -> None:
    state = StaleState()
    seen = []
    for poll in range(6):
        now = T0 + timedelta(seconds=poll * POLL)
        r = failed("ahu1.fan_speed", now)
        validator.validate([r], now, state)
        seen.append("stale" in r.reasons)
    # Counted from the first poll that saw it: more than 3 x 5 s later it is stale.
    assert seen == [False, False, False, False, True, True]


def test_an_old_good_sample_is_stale(validator: QualityValidator) -> None:
    now = T0 + timedelta(minutes=5)
    r = reading("zone1.temp", 21.0, T0)  # stamped 5 minutes before the poll
    validator.validate([r], now, StaleState())
    assert (r.quality, r.reasons) == (Quality.BAD, ["stale"])


def test_without_state_there_is_no_stale_rule(validator: QualityValidator) -> None:
    r = failed("zone1.temp", T0)
    validator.validate([r], T0 + timedelta(hours=1))
    assert r.reasons == ["comm_failure"]


def test_a_big_batch_keeps_every_reading_in_order(validator: QualityValidator) -> None:
    ids = ["zone1.temp", "ahu1.fan_speed", "ahu1.fan_status"]
    batch = []
    for i in range(10_000):
        pid = ids[i % 3]
        value: float | bool | None = (i % 2 == 0) if pid == "ahu1.fan_status" else float(i % 120) - 10
        batch.append(failed(pid) if i % 97 == 0 else reading(pid, value))
    expected_ids = [r.point_id for r in batch]
    out = validator.validate(batch, T0, StaleState())
    assert out is batch
    assert [r.point_id for r in out] == expected_ids
    for r in out:
        rule = {"zone1.temp": (5, 40), "ahu1.fan_speed": (0, 100)}.get(r.point_id)
        if r.value is None:
            assert r.reasons == ["comm_failure"]
        elif rule is None or isinstance(r.value, bool):
            assert r.quality == Quality.GOOD
        else:
            low, high = rule
            assert (r.quality == Quality.GOOD) == (low <= r.value <= high)
            assert r.reasons == ([] if low <= r.value <= high else ["range_high" if r.value > high else "range_low"])


def test_from_config_uses_point_then_device_interval(site: SiteConfig) -> None:
    dev = site.devices[0]
    dev.points[0].poll_interval_s = 1.0
    v = QualityValidator.from_config(site)
    rules = {p.id: v.rule(p.id) or PointRule() for p in site.points()}
    assert rules[dev.points[0].id].stale_after == timedelta(seconds=site.ingest.stale_after_polls)
    assert rules[dev.points[1].id].stale_after == timedelta(seconds=dev.poll_interval_s * site.ingest.stale_after_polls)
    assert (rules["zone1.temp"].low, rules["zone1.temp"].high) == (5, 40)
