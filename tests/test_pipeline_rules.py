"""Data-quality rules with defaults per point role: crafted series, exact flags; then the demo
building (physics replayed over a sim day, and live over every protocol) against the defaults."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from eaio.config import SiteConfig, load_config
from eaio.models import (
    Limits,
    ModbusAddress,
    ModbusPoint,
    Point,
    PointKind,
    PointRules,
    Quality,
    Reading,
    ReadingBatch,
    to_us,
)
from eaio.pipeline import SqliteStore
from eaio.pipeline.ingest import Ingest
from eaio.pipeline.rules import Role, point_rule, role_of
from eaio.pipeline.validate import QualityValidator, RuleState, StaleState
from eaio.protocol_adapters.modbus import ModbusAdapter
from eaio.sim.physics import Building
from eaio.sim.runner import SimThread
from helpers import until

T0 = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
GOOD, UNCERTAIN, BAD = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD

ZONE_F = Point(id="z1.temp", kind=PointKind.TEMPERATURE, unit="degF", brick="Zone_Air_Temperature_Sensor")
ZONE_C = Point(id="zone1.temp", kind=PointKind.TEMPERATURE, unit="degC", brick="Zone_Air_Temperature_Sensor",
               limits=Limits(low=5, high=40))


def series(point: Point, values: Sequence[float | None], step_s: float = 60.0, *, unit: str | None = None,
           state: RuleState | None = None, interval_s: float | None = None) -> dict[int, tuple[Quality, list[str]]]:
    """Validate ``values`` one poll each, ``step_s`` apart; the rows that are not good, by index."""
    v = QualityValidator.from_points([point], {point.id: interval_s} if interval_s else {}, 3)
    state = RuleState() if state is None else state
    out: dict[int, tuple[Quality, list[str]]] = {}
    for i, value in enumerate(values):
        ts = T0 + timedelta(seconds=i * step_s)
        r = Reading(point_id=point.id, value=value, ts=ts, unit=point.unit if unit is None else unit)
        v.validate([r], ts, state)
        if r.quality != GOOD or r.reasons:
            out[i] = (r.quality, [str(x) for x in r.reasons])
    return out


def spike(*idx: int) -> dict[int, tuple[Quality, list[str]]]:
    return {i: (BAD, ["spike"]) for i in idx}


# -- spike -------------------------------------------------------------------------------------
def test_a_spike_is_bad_and_the_return_is_good() -> None:
    # Zone air: 4 °F per hour; polls a minute apart may still move one hour's worth (4 °F).
    assert series(ZONE_F, [70.0, 70.5, 80.0, 70.6, 71.0, 74.9]) == spike(2)


def test_a_spiked_sample_does_not_move_the_reference() -> None:
    # 75 is 5 °F from the reference 70 (spike); 78 is 3 °F from 75 but 8 °F from 70: a spike too.
    # Then 72 is within 4 °F of 70 again.
    assert series(ZONE_F, [70.0, 75.0, 78.0, 72.0]) == spike(1, 2)


def test_a_level_shift_re_bases_on_the_third_agreeing_sample() -> None:
    # 78, 78.1, 78.2 agree with each other but not with 70: the first two stay flagged, the third
    # becomes the reference, and the level goes on good.
    assert series(ZONE_F, [70.0, 70.2, 78.0, 78.1, 78.2, 78.3, 79.0]) == spike(2, 3)


def test_spikes_that_disagree_with_each_other_never_make_a_level() -> None:
    assert series(ZONE_F, [60.0, 70.0, 80.0, 70.0, 80.0, 60.1]) == spike(1, 2, 3, 4)


def test_a_longer_gap_allows_a_larger_change() -> None:
    # 3 h apart: 12 °F allowed; 2 h apart: 8 °F.
    assert series(ZONE_F, [70.0, 81.0], step_s=3 * 3600) == {}
    assert series(ZONE_F, [70.0, 79.0], step_s=2 * 3600) == spike(1)


def test_failed_reads_do_not_break_the_reference() -> None:
    got = series(ZONE_F, [70.0, None, 80.0, None, 70.5])
    assert got == {1: (BAD, ["comm_failure"]), 2: (BAD, ["spike"]), 3: (BAD, ["comm_failure"])}


def test_a_whole_series_in_one_batch_is_flagged_as_poll_by_poll() -> None:
    values = [70.0, 70.2, 78.0, 78.1, 78.2, 70.0, 70.1]
    v = QualityValidator.from_points([ZONE_F], {}, 3)
    batch = ReadingBatch()
    for i, x in enumerate(values):
        batch.append(ZONE_F.id, x, to_us(T0) + i * 60_000_000, "degF")
    v.validate_batch(batch, batch.ts_us[-1], RuleState())
    flagged = {i: (batch.quality[i], batch.reasons[i]) for i in batch.reasons}
    assert flagged == series(ZONE_F, values) == spike(2, 3, 5, 6)


# -- flatline ----------------------------------------------------------------------------------
def test_a_flatline_is_uncertain_once_the_window_is_full() -> None:
    # Samples a minute apart within 0.05 °F (zone air needs 0.10 °F per hour): from the sample an
    # hour after the first (index 60) on, each is flagged.
    values = [70.0 + 0.05 * (i % 2) for i in range(70)]
    assert series(ZONE_F, values) == {i: (UNCERTAIN, ["flatline"]) for i in range(60, 70)}


def test_a_live_signal_is_not_a_flatline() -> None:
    values = [70.0 + 0.2 * math.sin(i / 5) for i in range(130)]
    assert series(ZONE_F, values) == {}


def test_a_flatline_clears_when_the_value_moves_and_a_gap_restarts_the_window() -> None:
    values = [70.0] * 62 + [70.5, 70.5]
    got = series(ZONE_F, values)
    assert got == {60: (UNCERTAIN, ["flatline"]), 61: (UNCERTAIN, ["flatline"])}
    # A gap longer than the window: the window fills again from the sample after it.
    state = RuleState()
    v = QualityValidator.from_points([ZONE_F], {}, 3)
    marks = []
    for minute in [*range(0, 61), *range(200, 261)]:
        ts = T0 + timedelta(minutes=minute)
        r = Reading(point_id=ZONE_F.id, value=70.0, ts=ts, unit="degF")
        v.validate([r], ts, state)
        marks.append((minute, r.quality))
    assert [m for m, q in marks if q == UNCERTAIN] == [60, 260]


def test_flatline_memory_is_bounded_per_point() -> None:
    # A strictly rising signal at 10 samples a second keeps every sample in a naive min-deque.
    point = ZONE_F.model_copy(update={"rules": PointRules(max_rate_per_h=0)})
    v = QualityValidator.from_points([point], {}, 3)
    state = RuleState()
    batch = ReadingBatch()
    for i in range(36_000):  # one hour
        batch.append(point.id, 60.0 + i * 1e-4, to_us(T0) + i * 100_000, "degF")
    v.validate_batch(batch, batch.ts_us[-1], state)
    track = state.tracks[point.id]
    assert len(track.lo) <= 130
    assert len(track.hi) <= 130
    assert batch.reasons == {}  # a 3.6 °F rise over the hour: never flat


# -- ranges ------------------------------------------------------------------------------------
def test_limits_make_bad_and_the_expected_range_uncertain() -> None:
    # zone air in degC: expected 55-90 °F = 12.8-32.2 °C; limits 5-40 from the site file.
    got = series(ZONE_C, [21.0, 35.0, 41.0, 10.0, 4.0, 32.2, 5.0], step_s=24 * 3600)
    assert got == {
        1: (UNCERTAIN, ["range_high"]), 2: (BAD, ["range_high"]),
        3: (UNCERTAIN, ["range_low"]), 4: (BAD, ["range_low"]), 6: (UNCERTAIN, ["range_low"]),
    }


def test_an_expected_range_override_replaces_the_default() -> None:
    point = ZONE_C.model_copy(update={"rules": PointRules(expected=Limits(low=18, high=26))})
    assert series(point, [21.0, 27.0, 17.0], step_s=5 * 3600) == {
        1: (UNCERTAIN, ["range_high"]), 2: (UNCERTAIN, ["range_low"])}


# -- overrides that switch rules off -----------------------------------------------------------
def test_zero_switches_a_rule_off() -> None:
    off = ZONE_F.model_copy(update={"rules": PointRules(max_rate_per_h=0, flatline_window_s=0, expected=Limits())})
    assert series(off, [70.0, 90.0, 50.0, 120.0] + [120.0] * 80) == {}
    no_spread = ZONE_F.model_copy(update={"rules": PointRules(flatline_min_spread=0)})
    assert series(no_spread, [70.0] * 80) == {}


def test_an_override_adds_a_rule_the_role_lacks() -> None:
    # A power point has no defaults; the site file may still give it a rate limit (kW per hour).
    point = Point(id="ahu1.fan_power", kind=PointKind.POWER, unit="kW", rules=PointRules(max_rate_per_h=5))
    assert series(point, [2.0, 3.0, 9.0, 3.5]) == spike(2)


# -- stale -------------------------------------------------------------------------------------
def test_stale_after_s_overrides_the_poll_count() -> None:
    point = ZONE_F.model_copy(update={"rules": PointRules(stale_after_s=30)})
    rule = point_rule(point, 5.0, 3)
    assert rule.stale_after == timedelta(seconds=30)
    assert point_rule(ZONE_F, 5.0, 3).stale_after == timedelta(seconds=15)
    # A good sample, then failed reads every 10 s: stale once more than 30 s have passed.
    got = series(point, [70.0, None, None, None, None], step_s=10, interval_s=5)
    assert got == {1: (BAD, ["comm_failure"]), 2: (BAD, ["comm_failure"]), 3: (BAD, ["comm_failure"]),
                   4: (BAD, ["comm_failure", "stale"])}


def test_a_subscribed_points_staleness_allows_for_its_publishing_interval() -> None:
    """An OPC-UA change arrives up to a publishing interval after it happened, stamped when it
    happened: polled every second but published every 5 s, it is stale after 3 x 5 s, not 3 x 1 s.
    A point of the same device that is polled keeps its poll interval."""
    cfg = SiteConfig.model_validate({"site": {"id": "plant"}, "devices": [{
        "id": "plc", "protocol": "opcua", "poll_interval_s": 1,
        "connection": {"endpoint": "opc.tcp://127.0.0.1:4840", "subscribe": True, "publishing_interval_ms": 5000},
        "points": [{"id": "chw.dp", "kind": "pressure", "unit": "kPa", "address": {"node_id": "ns=2;s=Dp"}},
                   {"id": "chw.rt", "kind": "temperature", "unit": "degC", "subscribe": False,
                    "address": {"node_id": "ns=2;s=Rt"}}],
    }]})
    v = QualityValidator.from_config(cfg)
    assert v.rule("chw.dp").stale_after == timedelta(seconds=15)  # type: ignore[union-attr]
    assert v.rule("chw.rt").stale_after == timedelta(seconds=3)  # type: ignore[union-attr]
    # A change published 4 s after it happened is fresh; one read 4 s late by a poll is stale.
    now = T0 + timedelta(seconds=4)
    late = [Reading(point_id=pid, value=50.0, ts=T0, unit=u) for pid, u in (("chw.dp", "kPa"), ("chw.rt", "degC"))]
    v.validate(late, now, RuleState())
    assert [(r.point_id, r.quality, [str(x) for x in r.reasons]) for r in late] == [
        ("chw.dp", GOOD, []), ("chw.rt", BAD, ["stale"])]


def test_uncertain_samples_are_fresh_samples() -> None:
    # A flatlining (uncertain) sensor still answers: it must not go stale on top.
    point = ZONE_F.model_copy(update={"rules": PointRules(flatline_window_s=120)})
    got = series(point, [70.0] * 10, step_s=60, interval_s=60)
    assert got == {i: (UNCERTAIN, ["flatline"]) for i in range(2, 10)}


def test_stale_state_is_the_rule_state() -> None:
    assert StaleState is RuleState
    state = StaleState()
    assert (state.last_good, state.first_seen, state.tracks) == ({}, {}, {})


# -- units -------------------------------------------------------------------------------------
def test_a_fahrenheit_reading_on_a_celsius_point_is_converted() -> None:
    v = QualityValidator.from_points([ZONE_C], {}, 3)
    readings = [Reading(point_id=ZONE_C.id, value=71.6, unit="degF", ts=T0),
                Reading(point_id=ZONE_C.id, value=71.6, unit="°F", ts=T0),
                Reading(point_id=ZONE_C.id, value=22, unit="degC", ts=T0),
                Reading(point_id=ZONE_C.id, value=122.0, unit="degF", ts=T0)]  # 50 °C: above the limits
    v.validate(readings, T0, RuleState())
    assert [(r.value, r.unit, r.quality, r.reasons) for r in readings] == [
        (pytest.approx(22.0), "degC", GOOD, []),
        (pytest.approx(22.0), "degC", GOOD, []),
        (22, "degC", GOOD, []),
        (pytest.approx(50.0), "degC", BAD, ["range_high"]),
    ]


def test_a_point_configured_with_an_alias_records_the_canonical_unit() -> None:
    point = ZONE_C.model_copy(update={"unit": "°C"})
    v = QualityValidator.from_points([point], {}, 3)
    batch = ReadingBatch()
    batch.append(point.id, 21.0, to_us(T0), "°C")
    batch.append(point.id, 70.0, to_us(T0), "fahrenheit")
    batch.append(point.id, None, to_us(T0), "°C")
    v.validate_batch(batch, to_us(T0), RuleState())
    assert batch.unit == ["degC", "degC", "degC"]
    assert batch.value[:2] == [21.0, pytest.approx(21.111, abs=1e-3)]
    assert v.rule(point.id).expected_high == pytest.approx(32.22, abs=0.01)  # the defaults, in degC


def test_an_unconvertible_unit_keeps_value_and_unit_and_is_uncertain() -> None:
    v = QualityValidator.from_points([ZONE_C], {}, 3)
    odd = Reading(point_id=ZONE_C.id, value=500.0, unit="furlongs", ts=T0)
    power = Reading(point_id=ZONE_C.id, value=3.0, unit="kW", ts=T0)
    v.validate([odd, power], T0, RuleState())
    # No range_high: 500 furlongs means nothing against degC limits.
    assert (odd.value, odd.unit, odd.quality, odd.reasons) == (500.0, "furlongs", UNCERTAIN, ["unit_mismatch"])
    assert (power.value, power.unit, power.quality, power.reasons) == (3.0, "kW", UNCERTAIN, ["unit_mismatch"])


def test_a_point_in_an_unknown_unit_takes_its_own_readings_as_they_are() -> None:
    point = Point(id="ahu1.fan_rpm", kind=PointKind.SPEED, unit="rpm", limits=Limits(low=0, high=2000))
    v = QualityValidator.from_points([point], {}, 3)
    same = Reading(point_id=point.id, value=1450, unit="rpm", ts=T0)
    other = Reading(point_id=point.id, value=24.0, unit="Hz", ts=T0)
    v.validate([same, other], T0, RuleState())
    assert (same.value, same.unit, same.quality) == (1450, "rpm", GOOD)
    assert (other.value, other.unit, other.quality, other.reasons) == (24.0, "Hz", UNCERTAIN, ["unit_mismatch"])


# -- roles and defaults ------------------------------------------------------------------------
def test_roles_of_the_demo_building() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "site.example.yaml")
    roles = {p.id: role_of(p) for p in cfg.points() if role_of(p) is not None}
    zone = Role.ZONE_AIR_TEMPERATURE
    assert roles == {
        "ahu1.sat": Role.SUPPLY_AIR_TEMPERATURE, "ahu1.mat": Role.MIXED_AIR_TEMPERATURE,
        "ahu1.rat": Role.RETURN_AIR_TEMPERATURE, "ahu1.oat": Role.OUTDOOR_AIR_TEMPERATURE,
        "ahu1.duct_static": Role.DUCT_STATIC_PRESSURE,
        **{f"zone{n}.temp": zone for n in (1, 2, 3, 4)}, **{f"zone{n}.iot_temp": zone for n in (1, 2, 3)},
        **{f"zone{n}.rh": Role.HUMIDITY for n in (1, 2, 3)}, **{f"zone{n}.co2": Role.CO2 for n in (1, 2, 3)},
    }
    # Not air: chilled water temperatures and loop pressure; setpoints and the rest have no role.
    assert {role_of(cfg.point(p)) for p in ("chiller.chwst", "chw.rt", "chw.dp", "ahu1.sat_sp", "zone1.reheat")} == {
        None}


@pytest.mark.parametrize(("point", "role"), [
    (Point(id="ahu2.dat", kind=PointKind.TEMPERATURE, unit="degF"), Role.SUPPLY_AIR_TEMPERATURE),
    (Point(id="vav7.znt", kind=PointKind.TEMPERATURE, unit="degF"), Role.ZONE_AIR_TEMPERATURE),
    (Point(id="x.t1", name="Return air temperature", kind=PointKind.TEMPERATURE), Role.RETURN_AIR_TEMPERATURE),
    (Point(id="ahu2.dsp", kind=PointKind.PRESSURE, unit="inH2O"), Role.DUCT_STATIC_PRESSURE),
    (Point(id="x.g", kind=PointKind.GENERIC, brick="Discharge_Air_Temperature_Sensor"), Role.SUPPLY_AIR_TEMPERATURE),
    (Point(id="x.h", kind=PointKind.HUMIDITY), Role.HUMIDITY),
    (Point(id="ahu2.sat_sp", kind=PointKind.GENERIC), None),  # a setpoint by its name
    (Point(id="ahu2.sat", kind=PointKind.SETPOINT), None),  # the kind wins over the name
    (Point(id="ahu2.sat", kind=PointKind.PRESSURE), None),  # the name says temperature, the kind pressure
    (Point(id="x.b", kind=PointKind.PRESSURE, brick="Building_Air_Static_Pressure_Sensor"), None),
    (Point(id="x.w", kind=PointKind.TEMPERATURE, brick="Hot_Water_Supply_Temperature_Sensor"), None),
    (Point(id="x.t", kind=PointKind.TEMPERATURE), None),  # a temperature of what? no default
])
def test_role_of(point: Point, role: Role | None) -> None:
    assert role_of(point) == role


def test_defaults_in_the_points_unit() -> None:
    c = point_rule(ZONE_C, 5.0, 3)
    assert (c.expected_low, c.expected_high) == (pytest.approx(12.778, abs=1e-3), pytest.approx(32.222, abs=1e-3))
    assert (c.max_rate_per_h, c.flatline_min_spread) == (pytest.approx(4 / 1.8), pytest.approx(0.1 / 1.8))
    assert (c.low, c.high, c.flatline_window_s, c.unit) == (5, 40, 3600.0, "degC")
    dsp = point_rule(Point(id="ahu1.duct_static", kind=PointKind.PRESSURE, unit="Pa"), 5.0, 3)
    assert (dsp.expected_low, dsp.expected_high) == (pytest.approx(-124.54, abs=0.01), pytest.approx(747.27, abs=0.01))
    assert (dsp.max_rate_per_h, dsp.flatline_min_spread) == (pytest.approx(124.54, abs=0.01), pytest.approx(4.98, 0.01))
    kpa = point_rule(Point(id="ahu1.dsp", kind=PointKind.PRESSURE, unit="kPa"), 5.0, 3)
    assert kpa.expected_high == pytest.approx(0.74727, abs=1e-5)


@pytest.mark.parametrize("unit", ["", "%", "furlongs"])
def test_a_unit_that_cannot_take_the_defaults_gets_none(unit: str) -> None:
    rule = point_rule(ZONE_F.model_copy(update={"unit": unit}), 5.0, 3)
    assert rule.role == Role.ZONE_AIR_TEMPERATURE
    assert (rule.expected_low, rule.expected_high, rule.max_rate_per_h, rule.flatline_window_s) == (None,) * 4


def test_kinds_without_a_role_get_no_defaults() -> None:
    sp = Point(id="zone1.cool_sp", kind=PointKind.SETPOINT, unit="degC", brick="Zone_Air_Cooling_Temperature_Setpoint")
    rule = point_rule(sp, 5.0, 3)
    assert (rule.role, rule.expected_low, rule.max_rate_per_h, rule.flatline_window_s) == (None, None, None, None)
    assert series(sp, [24.0] * 100) == {}  # a setpoint is flat by nature


# -- the demo building -------------------------------------------------------------------------
def test_a_sim_day_raises_no_spike_and_no_range_flag() -> None:
    """The physics of the demo office replayed over 24 sim hours, sampled each minute with sim
    timestamps, quantised as the registers serve it: healthy data breaks no spike or range rule.

    Flatline flags do appear, and they are the sim's, not the rule's: the physics has no sensor
    noise, so ahu1.sat sits on exactly 13.0, duct static on exactly 40 Pa at night, RH on its
    65 % clamp, and controlled zones within 0.05 K of setpoint for hours (reported to the sim's
    owner). The test pins which points they are, so a new kind of flag shows up here."""
    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "site.example.yaml")
    v = QualityValidator.from_config(cfg)
    scales = {p.id: p.address.scale for p in cfg.points()
              if isinstance(p, ModbusPoint) and p.address.type in ("int16", "uint16")}
    building = Building(datetime(2026, 7, 15, 0, 0), seed=cfg.sim.seed)
    state, reasons = RuleState(), {}
    t_us = to_us(T0)
    for _ in range(24 * 60):
        building.advance(60.0)
        t_us += 60_000_000
        batch = ReadingBatch()
        for p in cfg.points():
            value = building.state.get(p.id)
            if value is None:
                continue
            if p.id in scales and not isinstance(value, bool):
                value = round(float(value) / scales[p.id]) * scales[p.id]
            batch.append(p.id, value, t_us, p.unit)
        v.validate_batch(batch, t_us, state)
        for i, rs in batch.reasons.items():
            reasons.setdefault(batch.point_id[i], set()).update(rs)
    assert {r for rs in reasons.values() for r in rs} == {"flatline"}
    noise_free = {"ahu1.sat", "ahu1.duct_static", "ahu1.rat", "ahu1.mat", *(f"zone{n}.rh" for n in (1, 2, 3)),
                  *(f"zone{n}.co2" for n in (1, 2, 3)), *(f"zone{n}.temp" for n in (1, 3, 4)),
                  *(f"zone{n}.iot_temp" for n in (1, 3))}
    assert set(reasons) <= noise_free, set(reasons) - noise_free


def _full_demo(site_file: Callable[..., Path], broker_port: int) -> SiteConfig:
    path = site_file(mqtt=True, bacnet=True, opcua=True)
    raw = yaml.safe_load(path.read_text())
    for dev in raw["devices"]:
        if dev["protocol"] == "mqtt":
            dev["connection"]["port"] = broker_port
        elif dev["protocol"] == "modbus":
            dev["poll_interval_s"] = 0.2
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    cfg.ingest.flush_interval_s = 0.05
    # 0.2 s polls on a shared 2-core machine: a poll that waits its turn for a second is load,
    # not a stale sensor. This test is about the value rules' defaults.
    cfg.ingest.stale_after_polls = 25
    return cfg


@pytest.mark.anyio
async def test_the_live_demo_is_good_and_a_jump_is_two_spikes(site_file: Callable[..., Path], mosquitto: Any) -> None:
    """Every protocol of the demo, through ingest: healthy readings are all good; when zone1's
    temperature jumps 8 K (forced in the physics), its sensors show the jump as exactly two spikes,
    then the new level is accepted."""
    cfg = _full_demo(site_file, mosquitto.port)
    ids = [p.id for p in cfg.points() if p.id != "zone1.iot_cool_sp"]  # written over MQTT, never published
    # BACnet COV and OPC-UA data changes arrive only when a value moves: two readings of those
    # (the first read and the first change); four of the polled and MQTT points the defaults watch.
    polled = {p.id for d in cfg.devices if d.protocol in ("modbus", "mqtt") for p in d.points}
    wanted = {pid: 4 if pid in polled and role_of(cfg.point(pid)) else 2 for pid in ids}
    jumped = ["zone1.temp", "zone1.iot_temp"]
    with SimThread(cfg) as sim:
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store):
            since = datetime.min.replace(tzinfo=UTC)

            async def readings(pid: str) -> list[Reading]:
                return await store.history(pid, since, datetime.now(UTC) + timedelta(seconds=1))  # type: ignore[return-value]

            async def enough() -> bool:
                return all([len(await readings(pid)) >= n for pid, n in wanted.items()])

            await until(enough, "readings of every point (four of the polled ones with defaults)", 30)
            healthy = {pid: await readings(pid) for pid in ids}
            flagged = [(r.point_id, r.value, r.reasons) for rs in healthy.values() for r in rs if r.quality != GOOD]
            assert flagged == []

            before = {pid: len(healthy[pid]) for pid in jumped}
            sim.set_value("zone1.temp", float(sim.value("zone1.temp")) + 8.0)

            async def five_after() -> bool:
                counts = [len(await readings(pid)) - before[pid] for pid in jumped]
                return min(counts) >= 5

            await until(five_after, "five readings of zone1's sensors after the jump", 30)
            for pid in jumped:
                after = (await readings(pid))[before[pid]:]
                # A poll may still catch the old level before the jump reaches the register.
                first = next(i for i, r in enumerate(after) if r.reasons)
                assert [r.reasons for r in after[first:first + 4]] == [["spike"], ["spike"], [], []], (pid, after)
                assert [r.quality for r in after[first:first + 3]] == [BAD, BAD, GOOD]
                assert all(not r.reasons for r in after[:first])


@pytest.mark.anyio
async def test_a_modbus_exception_is_a_bad_reading_with_its_code(site: SiteConfig, sim: Any) -> None:
    """Protocol quality is mapped in by the adapter (here a Modbus exception response: the sim
    answers exception 2 for an unmapped register) and passes the validator as it came: bad,
    with the exception's name and a detail, stored like any reading."""
    ghost = ModbusPoint(id="ahu1.ghost", kind=PointKind.TEMPERATURE, unit="degC", device_id="ahu1-ctrl",
                        address=ModbusAddress(register=60000))
    validator = QualityValidator.from_points([ghost, *site.points()], {ghost.id: 5.0}, 3)
    async with ModbusAdapter(site.devices_for("modbus")) as adapter:
        readings = await adapter.read([ghost, adapter.point("ahu1.sat")])
    now = datetime.now(UTC)
    validator.validate(readings, now, RuleState())
    bad, sat = readings
    assert (bad.value, bad.quality, bad.reasons) == (None, BAD, ["protocol_status:illegal_address"])
    assert bad.detail is not None
    assert bad.detail.startswith("protocol_error: ahu1-ctrl at 127.0.0.1:")
    assert "illegal_address" in bad.detail
    assert (sat.quality, sat.reasons) == (GOOD, [])
