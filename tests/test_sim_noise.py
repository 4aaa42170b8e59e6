"""The sim's sensor noise: measured values wander as real sensors do, exact ones stay exact, and
that is what keeps a healthy building clear of the pipeline's flatline rule."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from eaio.config import SimFaultSpec, load_config
from eaio.models import Quality, ReadingBatch, Reason
from eaio.pipeline import QualityValidator, StaleState
from eaio.sim.runner import Simulation

STEP_S = 5.0
STEPS = 900  # 75 sim minutes: more than the flatline rule's one-hour window


def _series(sim: Simulation, ids: list[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {pid: [] for pid in ids}
    for _ in range(STEPS):
        sim.advance(STEP_S)
        for pid in ids:
            out[pid].append(float(sim.value(pid)))
    return out


def _flatlined(cfg_points_site: Path, pid: str, values: list[float]) -> int:
    """How many samples the validator flags as flatline (each must be uncertain, not bad)."""
    cfg = load_config(cfg_points_site)
    validator = QualityValidator.from_config(cfg)
    state = StaleState()
    t0 = int(datetime(2026, 7, 15, 13, tzinfo=UTC).timestamp() * 1e6)
    unit = cfg.point(pid).unit  # type: ignore[union-attr]
    flagged = []
    for i, v in enumerate(values):  # one poll at a time, as ingest validates them
        batch = ReadingBatch()
        batch.append(pid, v, t0 + int(i * STEP_S * 1e6), unit, "dev")
        validator.validate_batch(batch, batch.ts_us[0], state)
        if Reason.FLATLINE in batch.reasons.get(0, []):
            assert batch.quality[0] == Quality.UNCERTAIN, batch.reasons[0]
            flagged.append(i)
    return len(flagged)


def test_noise_on_measured_values_only(site_file: Callable[..., Path]) -> None:
    path = site_file(sim={"noise": True})
    sim = Simulation(load_config(path))
    series = _series(sim, ["ahu1.sat", "ahu1.duct_static", "ahu1.sat_sp", "zone1.cool_sp"])
    # Measured: small wander around the physics' value (sigma 0.04 K for temperatures).
    deltas = [b - a for a, b in zip(series["ahu1.sat"], series["ahu1.sat"][1:], strict=False)]
    assert 0.02 < statistics.pstdev(deltas) < 0.2
    assert len(set(series["ahu1.duct_static"])) > 100
    # Setpoints are exact on a real controller too.
    assert len(set(series["ahu1.sat_sp"])) == 1
    assert len(set(series["zone1.cool_sp"])) == 1


def test_noise_keeps_a_healthy_sensor_off_the_flatline_rule(site_file: Callable[..., Path]) -> None:
    """The supply air temperature sits on its setpoint all afternoon: exact physics flatlines
    (what a stuck sensor looks like), the noisy one does not; a stuck fault flatlines again."""
    noisy_site = site_file(sim={"noise": True})
    exact_site = site_file(sim={"noise": False})
    noisy = _series(Simulation(load_config(noisy_site)), ["ahu1.sat"])["ahu1.sat"]
    exact = _series(Simulation(load_config(exact_site)), ["ahu1.sat"])["ahu1.sat"]
    assert _flatlined(noisy_site, "ahu1.sat", noisy) == 0
    assert _flatlined(exact_site, "ahu1.sat", exact) > 0

    stuck_sim = Simulation(load_config(noisy_site))
    stuck_sim.inject(SimFaultSpec(kind="stuck", target="ahu1.sat"))
    stuck = _series(stuck_sim, ["ahu1.sat"])["ahu1.sat"]
    assert len(set(stuck)) == 1
    assert _flatlined(noisy_site, "ahu1.sat", stuck) > 0
