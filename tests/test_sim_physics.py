"""The virtual building's physics and faults, without sockets."""

from __future__ import annotations

from datetime import datetime

import pytest

from eaio.config import SimFaultSpec, SiteConfig
from eaio.sim.faults import FaultBook
from eaio.sim.physics import U32, Building, chiller_cop, outdoor_temp
from eaio.sim.runner import Simulation, parse_fault

DEMO_START = datetime(2026, 7, 15, 13, 0)


def run(b: Building, seconds: float) -> None:
    b.advance(seconds)


def test_zone_warms_without_cooling_and_cools_with_it() -> None:
    cooled, uncooled = Building(DEMO_START), Building(DEMO_START)
    uncooled.set("ahu1.fan_cmd", False)
    run(cooled, 3600)
    run(uncooled, 3600)
    assert uncooled.state["zone1.temp"] > 25.0  # sun, people and a 29 degC afternoon
    assert cooled.state["zone1.temp"] < 24.0  # the VAV holds it near its 23 degC setpoint
    assert uncooled.state["ahu1.fan_speed"] == 0.0
    assert uncooled.state["ahu1.fan_status"] is False


def test_setpoint_write_changes_the_trajectory() -> None:
    base, raised = Building(DEMO_START), Building(DEMO_START)
    raised.set("zone1.cool_sp", 26.0)
    run(base, 3600)
    run(raised, 3600)
    assert raised.state["zone1.temp"] > base.state["zone1.temp"] + 1.0
    assert raised.state["zone1.damper"] < base.state["zone1.damper"]


def test_zone2_runs_warm_on_the_demo_afternoon() -> None:
    b = Building(DEMO_START)
    for _ in range(30 * 4):  # 30 sim minutes in the sim's own 15 s steps at speed 60
        b.advance(15)
        assert b.state["zone2.temp"] > b.state["zone2.cool_sp"] + 1.0


def test_zone3_is_conditioned_while_empty() -> None:
    b = Building(DEMO_START)
    run(b, 1800)
    assert b.state["zone3.occ_mode"] is True
    assert b.state["zone3.occ"] is False


def test_energy_counter_wraps_like_a_uint32() -> None:
    b = Building(DEMO_START, meter_start_wh=U32 - 100)
    run(b, 3600)  # ~9 kW for an hour: ~9,000 Wh, far past the wrap
    assert 0 < b.energy_counter_wh < 50_000
    assert b.state["meter.energy"] == pytest.approx(b.energy_counter_wh / 1000)


def test_cop_falls_as_outdoor_temperature_rises() -> None:
    assert chiller_cop(20, 7) > chiller_cop(30, 7) > chiller_cop(40, 7)
    assert chiller_cop(-50, 7) == 7.0
    assert chiller_cop(80, 7) == 2.0
    assert chiller_cop(30, 10) > chiller_cop(30, 7)  # warmer chilled water is cheaper


def test_outdoor_temperature_peaks_mid_afternoon() -> None:
    temps = {h: outdoor_temp(h) for h in range(24)}
    assert min(temps, key=temps.__getitem__) == 5
    assert max(temps, key=temps.__getitem__) == 15


def test_chiller_disable_stops_cooling() -> None:
    b = Building(DEMO_START)
    b.set("chiller.enable", False)
    run(b, 1800)
    assert b.state["chiller.power"] == 0.0
    assert b.state["ahu1.sat"] > 20.0  # supply air drifts to mixed air


def test_physics_is_deterministic() -> None:
    a, b = Building(DEMO_START, seed=7), Building(DEMO_START, seed=7)
    run(a, 7200)
    for _ in range(48):
        b.advance(150)
    assert a.state["zone1.occ"] == b.state["zone1.occ"]
    assert a.state["zone1.temp"] == pytest.approx(b.state["zone1.temp"], abs=0.05)


def test_faults_change_served_values_not_the_physics() -> None:
    book = FaultBook()
    book.add(SimFaultSpec(kind="stuck", target="a", start_s=10))
    book.add(SimFaultSpec(kind="spike", target="b", magnitude=5))
    book.add(SimFaultSpec(kind="drift", target="c", magnitude=0.5))
    assert book.served("a", 20.0, 0, 0) == 20.0  # not yet
    assert book.served("a", 21.0, 10, 1) == 21.0  # strikes: frozen here
    assert book.served("a", 24.0, 20, 2) == 21.0
    assert book.served("b", 20.0, 0, 0) == 25.0  # one step only
    assert book.served("b", 20.0, 15, 1) == 20.0
    assert book.served("c", 20.0, 7200, 3) == pytest.approx(21.0)  # 0.5 per sim hour, growing


def test_simulation_serves_faulted_values(site: SiteConfig) -> None:
    sim = Simulation(site)
    true = sim.true_value("zone1.temp")
    sim.inject(SimFaultSpec(kind="drift", target="zone1.temp", magnitude=2.0))
    sim.advance(1800)
    assert sim.value("zone1.temp") == pytest.approx(float(sim.true_value("zone1.temp")) + 1.0)
    sim.inject(SimFaultSpec(kind="stuck", target="zone2.temp"))
    stuck = sim.value("zone2.temp")
    sim.advance(1800)
    assert sim.value("zone2.temp") == stuck != sim.true_value("zone2.temp")
    sim.clear_faults()
    assert sim.value("zone1.temp") == sim.true_value("zone1.temp") != true


@pytest.mark.parametrize(
    ("text", "kind", "target", "magnitude"),
    [
        ("stuck:zone1.temp", "stuck", "zone1.temp", 0.0),
        ("spike:zone2.temp:5", "spike", "zone2.temp", 5.0),
        ("drift:ahu1.sat:0.5", "drift", "ahu1.sat", 0.5),
        ("offline:plant-ctrl", "offline", "plant-ctrl", 0.0),
    ],
)
def test_parse_fault(text: str, kind: str, target: str, magnitude: float) -> None:
    spec = parse_fault(text)
    assert (spec.kind, spec.target, spec.magnitude) == (kind, target, magnitude)


@pytest.mark.parametrize("text", ["stuck", "melt:zone1.temp", "spike:zone2.temp", "spike:zone2.temp:hot", "a:b:c:d"])
def test_parse_fault_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=text.split(":")[0] if text == "stuck" else "'"):
        parse_fault(text)
