"""Sensor noise: what real sensors add to the physics' smooth values.

Without it a healthy virtual building looks broken to the pipeline's flatline rule: a supply-air
temperature held exactly at its setpoint for an hour is what a stuck sensor looks like. Real
sensors wander by a few hundredths of a kelvin, a pascal or two, a few ppm, and that is what this
adds (seeded, so a run can be repeated). Only measured quantities get noise: setpoints, commands,
statuses, counters and meters are exact on a real device too.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from ..models import Point, PointKind
from ..pipeline.units import canonical, convert_delta

__all__ = ["SensorNoise"]

# One standard deviation per kind, in a reference unit; converted to each point's unit. Each is
# well above the pipeline's flatline spread for the kind (0.10 degF, 0.02 inH2O, 1 %RH, 5 ppm over
# an hour) and well below its rate limit, so healthy data stays good and a stuck sensor stands out.
_SIGMA: dict[PointKind, tuple[float, str]] = {
    PointKind.TEMPERATURE: (0.04, "K"),
    PointKind.HUMIDITY: (0.3, "%"),
    PointKind.CO2: (3.0, "ppm"),
    PointKind.PRESSURE: (1.5, "Pa"),
}


def _sigma(point: Point) -> float:
    ref = _SIGMA.get(point.kind)
    if ref is None or point.is_binary:
        return 0.0
    sigma, unit = ref
    if not point.unit:
        return sigma
    try:
        return abs(convert_delta(sigma, unit, canonical(point.unit)))
    except ValueError:
        return 0.0  # a unit the table cannot convert: leave the value exact rather than guess


class SensorNoise:
    """Gaussian noise per point, from one seeded generator."""

    def __init__(self, points: Iterable[Point], seed: int) -> None:
        self._sigma = {p.id: s for p in points if (s := _sigma(p)) > 0}
        self._rng = random.Random(f"noise:{seed}")

    def apply(self, point_id: str, value: float | int | bool) -> float | int | bool:
        sigma = self._sigma.get(point_id)
        if sigma is None or isinstance(value, bool) or not isinstance(value, float):
            return value
        return value + self._rng.gauss(0.0, sigma)
