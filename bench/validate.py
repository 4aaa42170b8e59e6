"""(v) The quality validator on batches with every rule on: cost per reading, against a bare loop
over the same columns in the same run.

500 points of mixed kinds (zone, supply, return, mixed and outdoor air temperatures, duct static
pressure, humidity, CO2 with their role defaults; setpoints, power and binary points without),
limits on all analog points, stale on all. Batches of 5,000 readings (10 samples per point, a
minute apart, so a batch is 10 minutes of the building); an hour of batches first, untimed, so
every flatline window is full and every spike rule has its reference. Values are noisy signals
with rare spikes and a few °F readings on degC points (converted), as a real feed has.
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from typing import Any

from eaio.models import Limits, Point, PointKind, ReadingBatch, to_us
from eaio.pipeline.validate import QualityValidator, RuleState

N_POINTS = 500
BATCH = 5000
WARM_BATCHES = 6  # one hour: full flatline windows
TIMED_BATCHES = 40  # 200,000 readings
ROUNDS = 3
STEP_US = 60_000_000
T0 = to_us(datetime(2026, 7, 15, tzinfo=UTC))

# (kind, brick, unit, limits, base value, noise, binary)
_KINDS: list[tuple[PointKind, str | None, str, tuple[float, float] | None, float, float, bool]] = [
    (PointKind.TEMPERATURE, "Zone_Air_Temperature_Sensor", "degC", (5, 40), 22.0, 0.3, False),
    (PointKind.TEMPERATURE, "Supply_Air_Temperature_Sensor", "degC", (5, 50), 13.0, 0.4, False),
    (PointKind.TEMPERATURE, "Return_Air_Temperature_Sensor", "degC", (5, 40), 23.0, 0.3, False),
    (PointKind.TEMPERATURE, "Mixed_Air_Temperature_Sensor", "degC", (-30, 50), 20.0, 0.5, False),
    (PointKind.TEMPERATURE, "Outside_Air_Temperature_Sensor", "degC", (-40, 50), 25.0, 0.5, False),
    (PointKind.PRESSURE, "Supply_Air_Static_Pressure_Sensor", "Pa", (-100, 750), 250.0, 8.0, False),
    (PointKind.HUMIDITY, "Relative_Humidity_Sensor", "%RH", (0, 100), 50.0, 2.0, False),
    (PointKind.CO2, "CO2_Level_Sensor", "ppm", (300, 5000), 700.0, 20.0, False),
    (PointKind.SETPOINT, "Zone_Air_Cooling_Temperature_Setpoint", "degC", (10, 35), 24.0, 0.0, False),
    (PointKind.POWER, "Electric_Power_Sensor", "kW", (0, 500), 80.0, 5.0, False),
    (PointKind.STATUS, "Fan_Status", "", None, 1.0, 0.0, True),
]


def _points() -> list[tuple[Point, float, float, bool]]:
    out = []
    for n in range(N_POINTS):
        kind, brick, unit, lim, base, noise, binary = _KINDS[n % len(_KINDS)]
        p = Point(id=f"b{n // len(_KINDS)}.p{n % len(_KINDS)}", kind=kind, brick=brick, unit=unit,
                  limits=Limits(low=lim[0], high=lim[1]) if lim else None)
        out.append((p, base, noise, binary))
    return out


def _batches(points: list[tuple[Point, float, float, bool]], n: int, seed: int = 3) -> list[ReadingBatch]:
    rnd = random.Random(seed)
    per_point = BATCH // len(points)
    out = []
    for b in range(n):
        batch = ReadingBatch()
        for k in range(per_point):
            step = b * per_point + k
            ts = T0 + step * STEP_US
            for p, base, noise, binary in points:
                if binary:
                    batch.append(p.id, step % 50 < 40, ts, "")
                    continue
                value = base + noise * math.sin(step / 30.0) + rnd.gauss(0.0, noise / 3)
                unit = p.unit
                roll = rnd.random()
                if roll < 0.001:
                    value += 50 * noise + 5  # a spike
                elif roll < 0.01 and unit == "degC":
                    value, unit = value * 1.8 + 32.0, "degF"  # a device that reports °F
                batch.append(p.id, value, ts, unit)
        out.append(batch)
    return out


def _bare(batch: ReadingBatch, flat: dict[str, Any]) -> int:
    """The floor: one pass over the same columns with the per-point look-up, and nothing else."""
    n = 0
    values = batch.value
    for i, pid in enumerate(batch.point_id):
        v = values[i]
        if flat.get(pid) is not None and v is not None:
            n += 1
    return n


def run() -> dict[str, Any]:
    points = _points()
    # Polled every 10 minutes as far as the stale rule knows: a batch spans 10 minutes of samples
    # validated at its last one's time, and its first samples must not count as stale.
    validator = QualityValidator.from_points([p for p, *_ in points], {p.id: 600.0 for p, *_ in points}, 3)
    data = _batches(points, WARM_BATCHES + TIMED_BATCHES)
    flat = validator._flat  # the bare loop looks up the same dict
    best_eaio = best_bare = math.inf
    flagged: dict[str, int] = {}
    for _ in range(ROUNDS):
        state = RuleState()
        fresh = [b.copy() for b in data]  # validation converts units in place: every round starts alike
        for b in fresh[:WARM_BATCHES]:
            validator.validate_batch(b, b.ts_us[-1], state)
        timed = fresh[WARM_BATCHES:]
        t0 = time.perf_counter()
        for b in timed:
            validator.validate_batch(b, b.ts_us[-1], state)
        best_eaio = min(best_eaio, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for b in timed:
            _bare(b, flat)
        best_bare = min(best_bare, time.perf_counter() - t0)
        flagged = {}
        for b in timed:
            for rs in b.reasons.values():
                for r in rs:
                    flagged[str(r)] = flagged.get(str(r), 0) + 1
    n = TIMED_BATCHES * BATCH
    windows = sum(1 for tr in state.tracks.values() if tr.last_ts is not None and tr.last_ts - tr.run_start >= 3.6e9)
    return {
        "points": N_POINTS,
        "batch": BATCH,
        "readings": n,
        "full_flatline_windows": windows,
        "eaio_us_per_reading": best_eaio / n * 1e6,
        "bare_loop_us_per_reading": best_bare / n * 1e6,
        "ratio_to_bare_loop": best_eaio / best_bare,
        "readings_per_s": n / best_eaio,
        "flagged": flagged,
        "targets": {"eaio_us_per_reading": "<= 5"},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
