"""Each point's data-quality rules, decided once: defaults per point role, the site file's overrides.

The validator's hot loop must not think about kinds and Brick classes per reading, so this
module flattens everything a point needs into one ``PointRule`` at start-up.

Role. From the point's ``kind``, its Brick class (``brick``), and its id and name as a last
hint, a point gets one of a few roles whose behaviour practice knows (``Role``). Kinds that are
not measurements of air or room conditions (setpoint, status, command, occupancy, schedule,
power, energy, speed, position, efficiency) never get a role: a setpoint is flat by nature, a
power reading may jump by design. A Brick class that names another medium (chilled water,
refrigerant) rules a role out even when its words say "supply".

Defaults (open-fdd / ASHRAE Guideline 36 practice), in °F, inH2O, %RH and ppm:

| role | expected range | flatline: spread under, over | rate per hour |
|---|---|---|---|
| zone air temperature | 55-90 °F | 0.10 °F, 1 h | 4 °F |
| supply (discharge) air temperature | 50-110 °F | 0.15 °F, 1 h | 8 °F |
| return (or exhaust) air temperature | 55-95 °F | 0.10 °F, 1 h | 8 °F |
| mixed air temperature | none | 0.15 °F, 1 h | none |
| outdoor air temperature | none | 0.10 °F, 3 h | 15 °F |
| duct static pressure | -0.5-3.0 inH2O | 0.02 inH2O, 1 h | 0.5 inH2O |
| relative humidity | 0-100 %RH | 1 %RH, 1 h | 15 %RH |
| CO2 | 400-1000 ppm | 5 ppm, 1 h | 200 ppm |

Choices the issue left open, and why:
- return air is room air that has crossed a duct: it flatlines like zone air (0.10 °F) but sees
  the duct's transients when the fan starts and stops, so its rate limit is supply air's;
- mixed air swings with the outdoor-air damper (an economiser opening moves it tens of degrees
  in a minute), so no rate limit; its flatline is supply air's (duct air, same sensor type);
- outdoor air: no expected range (it depends on the climate); fronts and sun move it faster than
  any indoor air (15 °F/h), and a live outdoor sensor varies over hours, not minutes, so its
  flatline window is 3 h;
- neither has an expected range: what practice expects of them is the climate, not the plant.

Two ranges, two meanings. ``limits`` (site file) is what the sensor can physically report:
outside it the reading is **bad** (``range_high`` / ``range_low``), a broken sensor or a wrong
register map. The expected range (the role's default, or ``rules.expected``) is what practice
expects: outside it the reading is **uncertain** with the same reasons, "look at this", not a
broken sensor (a packed meeting room does reach 1,200 ppm).

Units. The defaults are converted to the point's unit: ranges with ``units.convert``, spreads
and rates (differences) with ``units.convert_delta``. A point whose unit cannot take the
conversion (no unit, or another dimension) gets no default for that rule.

Overrides. ``Point.rules`` (``PointRules``) replaces any default, in the point's unit: a field
left out keeps the default, ``0`` switches a threshold rule off (``max_rate_per_h``,
``flatline_window_s``, ``flatline_min_spread``), ``expected: {}`` (both ends open) switches the
expected range off. ``stale_after_s`` replaces ``stale_after_polls`` x the poll interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from ..models import Point, PointKind
from . import units

__all__ = ["DEFAULTS", "PointRule", "Role", "RoleDefaults", "point_rule", "role_of"]


class Role(StrEnum):
    ZONE_AIR_TEMPERATURE = "zone_air_temperature"
    SUPPLY_AIR_TEMPERATURE = "supply_air_temperature"
    RETURN_AIR_TEMPERATURE = "return_air_temperature"
    MIXED_AIR_TEMPERATURE = "mixed_air_temperature"
    OUTDOOR_AIR_TEMPERATURE = "outdoor_air_temperature"
    DUCT_STATIC_PRESSURE = "duct_static_pressure"
    HUMIDITY = "humidity"
    CO2 = "co2"


@dataclass(frozen=True, slots=True)
class RoleDefaults:
    """A role's defaults, in ``unit``. None: no such rule for the role."""

    unit: str
    expected: tuple[float, float] | None
    max_rate_per_h: float | None
    flatline_min_spread: float
    flatline_window_s: float = 3600.0


DEFAULTS: dict[Role, RoleDefaults] = {
    Role.ZONE_AIR_TEMPERATURE: RoleDefaults("degF", (55.0, 90.0), 4.0, 0.10),
    Role.SUPPLY_AIR_TEMPERATURE: RoleDefaults("degF", (50.0, 110.0), 8.0, 0.15),
    Role.RETURN_AIR_TEMPERATURE: RoleDefaults("degF", (55.0, 95.0), 8.0, 0.10),
    Role.MIXED_AIR_TEMPERATURE: RoleDefaults("degF", None, None, 0.15),
    Role.OUTDOOR_AIR_TEMPERATURE: RoleDefaults("degF", None, 15.0, 0.10, 3 * 3600.0),
    Role.DUCT_STATIC_PRESSURE: RoleDefaults("inH2O", (-0.5, 3.0), 0.5, 0.02),
    Role.HUMIDITY: RoleDefaults("%RH", (0.0, 100.0), 15.0, 1.0),
    Role.CO2: RoleDefaults("ppm", (400.0, 1000.0), 200.0, 5.0),
}


@dataclass(frozen=True, slots=True)
class PointRule:
    """Everything the validator checks for one point, in the point's unit. None: no such rule."""

    low: float | None = None  # limits: outside is bad
    high: float | None = None
    stale_after: timedelta | None = None
    expected_low: float | None = None  # expected range: outside is uncertain
    expected_high: float | None = None
    max_rate_per_h: float | None = None  # spike rule
    flatline_window_s: float | None = None  # flatline rule: both set, or no rule
    flatline_min_spread: float | None = None
    unit: str = ""  # unit of record (canonical spelling); "" = readings' units are not checked
    role: Role | None = None

    @property
    def needs_history(self) -> bool:
        """Whether the rule keeps per-point history (spike reference, flatline window)."""
        return self.max_rate_per_h is not None or self.flatline_window_s is not None


# Kinds that are never a measurement of air or room conditions: no role, whatever the Brick class says.
_NO_ROLE_KINDS = frozenset({
    PointKind.SETPOINT, PointKind.STATUS, PointKind.COMMAND, PointKind.OCCUPANCY, PointKind.SCHEDULE,
    PointKind.POWER, PointKind.ENERGY, PointKind.SPEED, PointKind.POSITION, PointKind.EFFICIENCY,
})
# Which roles each kind admits (GENERIC admits any: the Brick class or the name decides).
_TEMPERATURES = frozenset({
    Role.ZONE_AIR_TEMPERATURE, Role.SUPPLY_AIR_TEMPERATURE, Role.RETURN_AIR_TEMPERATURE,
    Role.MIXED_AIR_TEMPERATURE, Role.OUTDOOR_AIR_TEMPERATURE,
})
_ADMITS: dict[PointKind, frozenset[Role]] = {
    PointKind.TEMPERATURE: _TEMPERATURES,
    PointKind.PRESSURE: frozenset({Role.DUCT_STATIC_PRESSURE}),
    PointKind.HUMIDITY: frozenset({Role.HUMIDITY}),
    PointKind.CO2: frozenset({Role.CO2}),
}
_NOT_A_SENSOR = ("setpoint", "command", "status", "alarm", "limit", "parameter", "mode")
_OTHER_MEDIUM = ("water", "refrigerant", "steam", "glycol", "soil", "slab", "surface")
_NONE = "none"  # the Brick class rules a role out
_UNKNOWN = "unknown"  # the Brick class does not say: ask the name


def _from_brick(brick: str) -> Role | str:
    b = brick.lower()
    if any(w in b for w in _NOT_A_SENSOR):
        return _NONE
    if "co2" in b:
        return Role.CO2
    if "humidity" in b:
        return Role.HUMIDITY
    if "static_pressure" in b:
        return Role.DUCT_STATIC_PRESSURE if any(w in b for w in ("supply_air", "discharge_air", "duct")) else _NONE
    if "pressure" in b:
        return _NONE
    if "temperature" not in b:
        return _UNKNOWN
    if any(w in b for w in _OTHER_MEDIUM):
        return _NONE
    for words, role in (
        (("zone_air", "room_air", "space_air"), Role.ZONE_AIR_TEMPERATURE),
        (("supply_air", "discharge_air"), Role.SUPPLY_AIR_TEMPERATURE),
        (("return_air", "exhaust_air"), Role.RETURN_AIR_TEMPERATURE),
        (("mixed_air",), Role.MIXED_AIR_TEMPERATURE),
        (("outside_air", "outdoor_air"), Role.OUTDOOR_AIR_TEMPERATURE),
    ):
        if any(w in b for w in words):
            return role
    return _UNKNOWN  # Air_Temperature_Sensor, Temperature_Sensor: where it sits decides


# Hints in the id's words and the name, tried in this order (the first match wins).
_HINTS: tuple[tuple[re.Pattern[str], Role], ...] = tuple((re.compile(p), r) for p, r in (
    (r"\b(sat|dat|sa temp|da temp)\b|supply air|discharge air", Role.SUPPLY_AIR_TEMPERATURE),
    (r"\b(rat|ra temp)\b|return air", Role.RETURN_AIR_TEMPERATURE),
    (r"\b(mat|ma temp)\b|mixed air", Role.MIXED_AIR_TEMPERATURE),
    (r"\b(oat|oa temp)\b|outdoor air|outside air|outdoor temp|outside temp", Role.OUTDOOR_AIR_TEMPERATURE),
    (r"\b(zat|znt|zn temp)\b|zone\w* (air )?temp|space temp|room temp", Role.ZONE_AIR_TEMPERATURE),
    (r"\bdsp\b|duct static|static pressure", Role.DUCT_STATIC_PRESSURE),
    (r"\brh\b|humidity", Role.HUMIDITY),
    (r"\bco2\b", Role.CO2),
))
_NOT_A_SENSOR_WORDS = re.compile(r"\b(sp|stpt|setpoint|cmd|command|status)\b")


def _from_hints(point: Point) -> Role | None:
    # Ids become words: "ahu1.sat" -> "ahu1 sat", "ahu1.sat_sp" -> "ahu1 sat sp".
    text = f"{re.sub(r'[._-]+', ' ', point.id)} {point.name.lower()}"
    if _NOT_A_SENSOR_WORDS.search(text):
        return None
    for pattern, role in _HINTS:
        if pattern.search(text):
            return role
    return None


def role_of(point: Point) -> Role | None:
    """The role whose defaults apply to ``point``; None when practice has no default for it."""
    if point.kind in _NO_ROLE_KINDS:
        return None
    admits = _ADMITS.get(point.kind)
    role: Role | None = None
    if point.brick:
        found = _from_brick(point.brick)
        if found == _NONE:
            return None
        if isinstance(found, Role):
            role = found
        elif "air_temperature" in point.brick.lower() and point.zone and not point.equip:
            # A plain air temperature sensor placed in a zone (and on no equipment) reads zone air.
            role = Role.ZONE_AIR_TEMPERATURE
    if role is None:
        role = _from_hints(point)
    if role is None and point.kind in (PointKind.HUMIDITY, PointKind.CO2):
        role = Role.HUMIDITY if point.kind == PointKind.HUMIDITY else Role.CO2
    if role is not None and admits is not None and role not in admits:
        return None  # the kind (and so the unit) says otherwise: trust the kind
    return role


def _in_unit(value: float, from_unit: str, to_unit: str, *, delta: bool) -> float | None:
    try:
        return (units.convert_delta if delta else units.convert)(value, from_unit, to_unit)
    except ValueError:
        return None


def _off_if_zero(value: float | None) -> float | None:
    return None if value == 0 else value


def point_rule(point: Point, interval_s: float | None, stale_after_polls: float) -> PointRule:
    """The flattened rules of ``point`` (polled every ``interval_s`` seconds, None: unknown)."""
    unit = units.canonical(point.unit) if point.unit else ""
    role = role_of(point)
    d = DEFAULTS.get(role) if role is not None else None
    expected: tuple[float | None, float | None] = (None, None)
    rate = spread = window = None
    if d is not None and unit:
        if d.expected is not None:
            lo, hi = (_in_unit(x, d.unit, unit, delta=False) for x in d.expected)
            expected = (lo, hi) if lo is not None and hi is not None else (None, None)
        if d.max_rate_per_h is not None:
            rate = _in_unit(d.max_rate_per_h, d.unit, unit, delta=True)
        spread = _in_unit(d.flatline_min_spread, d.unit, unit, delta=True)
        window = d.flatline_window_s if spread is not None else None
    stale_s = interval_s * stale_after_polls if interval_s else None
    o = point.rules
    if o is not None:
        if o.expected is not None:
            expected = (o.expected.low, o.expected.high)
        if o.max_rate_per_h is not None:
            rate = o.max_rate_per_h
        if o.flatline_window_s is not None:
            window = o.flatline_window_s
        if o.flatline_min_spread is not None:
            spread = o.flatline_min_spread
        if o.stale_after_s is not None:
            stale_s = o.stale_after_s
        if spread is not None and window is None:
            window = 3600.0  # a spread given for a point whose role has no flatline: the usual hour
    rate, window, spread = _off_if_zero(rate), _off_if_zero(window), _off_if_zero(spread)
    if window is None or spread is None:
        window = spread = None
    lim = point.limits
    return PointRule(
        low=lim.low if lim else None,
        high=lim.high if lim else None,
        stale_after=timedelta(seconds=stale_s) if stale_s else None,
        expected_low=expected[0],
        expected_high=expected[1],
        max_rate_per_h=rate,
        flatline_window_s=window,
        flatline_min_spread=spread,
        unit=unit,
        role=role,
    )
