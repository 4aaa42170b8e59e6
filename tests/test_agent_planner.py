"""The no-LLM planner against a fake ``call`` that answers like the Modbus MCP server."""

from __future__ import annotations

from typing import Any

import pytest

from eaio.agents.planner import Planner
from eaio.config import SiteConfig
from eaio.errors import ConnectionFailed
from eaio.models import Recommendation, Severity

# A comfortable, occupied building: every rule should stay quiet on it.
COMFORTABLE: dict[str, Any] = {
    **{f"zone{i}.temp": 23.0 for i in (1, 2, 3)},
    **{f"zone{i}.cool_sp": 24.0 for i in (1, 2, 3)},
    **{f"zone{i}.heat_sp": 20.0 for i in (1, 2, 3)},
    **{f"zone{i}.occ_mode": True for i in (1, 2, 3)},
    **{f"zone{i}.occ": True for i in (1, 2, 3)},
    **{f"zone{i}.reheat": 0.0 for i in (1, 2, 3)},
    **{f"zone{i}.damper": 40.0 for i in (1, 2, 3)},
    "meter.power": 90.0,
}


class FakeServer:
    """list_points from the demo site's config; read_points from a dict of values."""

    def __init__(self, site: SiteConfig, values: dict[str, Any], bad: dict[str, str] | None = None) -> None:
        self.site = site
        self.values = values
        self.bad = bad or {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.down = False

    async def __call__(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((name, args))
        if self.down:
            raise ConnectionFailed("modbus server is gone")
        if name == "modbus__list_points":
            return {"points": [self._point(p) for p in self.site.points()]}
        if name == "modbus__read_points":
            return {"readings": [self._reading(pid) for pid in args["point_ids"]], "errors": []}
        raise AssertionError(f"unexpected tool {name}")

    @staticmethod
    def _point(p: Any) -> dict[str, Any]:
        raw = p.model_dump(mode="json")
        return {k: raw[k] for k in ("id", "name", "kind", "unit", "brick", "zone", "equip", "device_id",
                                    "writable", "write_bounds", "limits")}

    def _reading(self, pid: str) -> dict[str, Any]:
        if pid in self.bad:
            return {"point_id": pid, "value": None, "unit": "", "ts": "2026-07-15T12:00:00Z", "quality": "bad",
                    "reasons": ["comm_failure"], "detail": self.bad[pid]}
        return {"point_id": pid, "value": self.values.get(pid), "unit": "", "ts": "2026-07-15T12:00:00Z",
                "quality": "good", "reasons": [], "detail": None}


def _by(recs: list[Recommendation], kind: str) -> dict[str | None, Recommendation]:
    return {r.zone: r for r in recs if r.kind == kind}


async def _run(site: SiteConfig, **changes: Any) -> tuple[list[Recommendation], FakeServer]:
    bad = changes.pop("_bad", None)
    fake = FakeServer(site, {**COMFORTABLE, **changes}, bad)
    result = await Planner(fake, ["modbus"], comfort_band_c=site.agent.comfort_band_c).cycle()
    return result.recommendations, fake


@pytest.mark.anyio
async def test_comfortable_occupied_building_gives_nothing(site: SiteConfig) -> None:
    recs, fake = await _run(site)
    assert recs == []
    # one list_points and ONE read_points for everything the rules need
    assert [name for name, _ in fake.calls] == ["modbus__list_points", "modbus__read_points"]
    asked = set(fake.calls[1][1]["point_ids"])
    assert {"zone1.temp", "zone2.cool_sp", "zone3.occ", "zone3.occ_mode", "meter.power"} <= asked
    assert not any(name.endswith("write_point") for name, _ in fake.calls)


@pytest.mark.anyio
async def test_zone_too_warm_is_a_comfort_violation(site: SiteConfig) -> None:
    recs, _ = await _run(site, **{"zone2.temp": 25.6})
    comfort = _by(recs, "comfort_violation")
    assert list(comfort) == ["zone2"]
    rec = comfort["zone2"]
    assert rec.severity == Severity.WARNING  # 0.6 degC past the band
    assert rec.evidence["temp"] == 25.6
    assert rec.evidence["cool_sp"] == 24.0
    assert rec.mode == "degraded"
    assert rec.action is None
    assert set(rec.point_ids) == {"zone2.temp", "zone2.cool_sp"}


@pytest.mark.anyio
async def test_severity_grows_with_distance_and_cold_counts_too(site: SiteConfig) -> None:
    recs, _ = await _run(site, **{"zone1.temp": 27.5, "zone3.temp": 18.5})
    comfort = _by(recs, "comfort_violation")
    assert comfort["zone1"].severity == Severity.CRITICAL  # 2.5 degC past the band
    assert comfort["zone3"].severity == Severity.WARNING
    assert "heating" in comfort["zone3"].message
    assert set(comfort["zone3"].point_ids) == {"zone3.temp", "zone3.heat_sp"}


@pytest.mark.anyio
async def test_unoccupied_mode_is_not_a_comfort_problem(site: SiteConfig) -> None:
    recs, _ = await _run(site, **{"zone2.temp": 29.0, "zone2.occ_mode": False, "zone2.occ": False})
    assert recs == []


@pytest.mark.anyio
async def test_nobody_in_an_occupied_zone_suggests_a_setback(site: SiteConfig) -> None:
    recs, fake = await _run(site, **{"zone3.occ": False, "zone3.reheat": 1.5})
    unocc = _by(recs, "unoccupied_conditioning")
    assert list(unocc) == ["zone3"]
    rec = unocc["zone3"]
    assert rec.action is not None
    assert rec.action.point_id == "zone3.cool_sp"
    assert rec.action.value == 28.0  # the upper write bound from list_points
    assert rec.action.duration_s
    assert rec.action.duration_s > 0
    # reheat for nobody + 3 % of a third of 90 kW per degC over 4 degC
    assert rec.estimated_saving_kw == pytest.approx(1.5 + 30 * 0.03 * 4)
    assert rec.evidence["occ"] is False
    assert rec.evidence["occ_mode"] is True
    assert not any(name.endswith("write_point") for name, _ in fake.calls)  # v0 only recommends


@pytest.mark.anyio
async def test_setback_already_at_the_bound_is_not_repeated(site: SiteConfig) -> None:
    recs, _ = await _run(site, **{"zone3.occ": False, "zone3.cool_sp": 28.0})
    assert _by(recs, "unoccupied_conditioning") == {}


@pytest.mark.anyio
async def test_bad_readings_are_skipped_and_reported(site: SiteConfig) -> None:
    # zone2 would be too warm, but its temperature reading is bad: it must not be used.
    recs, _ = await _run(site, **{"zone2.temp": 30.0}, _bad={"zone2.temp": "device_offline: zones-ctrl"})
    assert _by(recs, "comfort_violation") == {}
    dq = _by(recs, "data_quality")
    assert list(dq) == ["zone2"]
    assert dq["zone2"].point_ids == ["zone2.temp"]
    assert "device_offline" in dq["zone2"].message
    assert dq["zone2"].evidence["bad"]["zone2.temp"].startswith("comm_failure")


@pytest.mark.anyio
async def test_a_dead_server_is_reported_not_raised(site: SiteConfig) -> None:
    fake = FakeServer(site, COMFORTABLE)
    fake.down = True
    result = await Planner(fake, ["modbus"]).cycle()
    assert not result.complete
    assert result.errors[0]["code"] == "connection_failed"
    dq = _by(result.recommendations, "data_quality")
    assert list(dq) == [None]
    assert "modbus__list_points failed" in dq[None].message
