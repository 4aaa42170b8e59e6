"""The no-LLM planner: finds zones by Brick class, reads them through MCP tools, applies rules.

It has no I/O of its own. It is given a ``call`` coroutine (namespaced tool name, arguments ->
structured result) and acts only through the servers' tools, the same way an LLM would, so
swapping it for a model changes nothing about what the agent may touch. The planner itself never
writes: a setback is a *suggested* write inside a Recommendation, which the workflow hands to
the Actuator (the approval policy) — see workflows.py.

It keeps the last readings it made of each point (``history``) so that a forecast can say
where a value is heading: a least-squares line through the recent samples, nothing cleverer.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import EaioError
from ..models import DecisionMode, Recommendation, Severity, SuggestedWrite

__all__ = [
    "METER_CLASS", "ZONE_ROLES", "Call", "History", "PlanResult", "Planner", "PointInfo", "Trend", "ZoneView",
    "select_zones",
]

log = logging.getLogger(__name__)

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

# Brick classes the rules need, and the role each plays in a zone.
ZONE_ROLES: dict[str, str] = {
    "Zone_Air_Temperature_Sensor": "temp",
    "Zone_Air_Cooling_Temperature_Setpoint": "cool_sp",
    "Zone_Air_Heating_Temperature_Setpoint": "heat_sp",
    "Occupancy_Sensor": "occ",
    "Occupancy_Status": "occ_mode",
    "Heating_Electric_Power_Sensor": "reheat",
    "Damper_Position_Sensor": "damper",  # evidence only: a wide-open box cannot cool more
}
METER_CLASS = "Building_Electric_Meter"
# Rule of thumb: each degC of cooling setback saves ~3 % of the zone's share of cooling demand.
SAVING_PER_DEGC = 0.03
HISTORY_SAMPLES = 20  # per point: enough for a trend, small enough to forget old conditions
TREND_WINDOW_S = 1800.0  # samples older than this say little about where a value heads now


@dataclass(frozen=True)
class Trend:
    """A linear trend: ``slope`` per second through ``samples`` readings spanning ``span_s``."""

    last: float
    slope_per_s: float
    samples: int
    span_s: float

    def at(self, seconds_ahead: float) -> float:
        return self.last + self.slope_per_s * seconds_ahead


class History:
    """The last readings the planner made, per point: (epoch seconds, value)."""

    def __init__(self, size: int = HISTORY_SAMPLES) -> None:
        self.size = size
        self._by_point: dict[str, deque[tuple[float, float]]] = {}

    def add(self, point_id: str, ts: float, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        samples = self._by_point.setdefault(point_id, deque(maxlen=self.size))
        if samples and ts <= samples[-1][0]:
            return  # the same sample read twice (a slow-polled point): one point on the line, not two
        samples.append((ts, float(value)))

    def trend(self, point_id: str, window_s: float = TREND_WINDOW_S) -> Trend | None:
        """Least squares over the samples of the last ``window_s``; None with fewer than two."""
        samples = list(self._by_point.get(point_id, ()))
        if not samples:
            return None
        recent = [(t, v) for t, v in samples if t >= samples[-1][0] - window_s]
        if len(recent) < 2:
            return None
        n = len(recent)
        mt = sum(t for t, _ in recent) / n
        mv = sum(v for _, v in recent) / n
        var = sum((t - mt) ** 2 for t, _ in recent)
        slope = sum((t - mt) * (v - mv) for t, v in recent) / var if var > 0 else 0.0
        return Trend(last=recent[-1][1], slope_per_s=slope, samples=n, span_s=recent[-1][0] - recent[0][0])


@dataclass(frozen=True)
class PointInfo:
    """What the planner needs to know of a point, from a server's list_points."""

    id: str
    server: str
    brick: str | None = None
    zone: str | None = None
    unit: str = ""
    writable: bool = False
    write_high: float | None = None

    @classmethod
    def parse(cls, server: str, raw: dict[str, Any]) -> PointInfo:
        bounds = raw.get("write_bounds") or {}
        return cls(
            id=str(raw["id"]),
            server=server,
            brick=raw.get("brick"),
            zone=raw.get("zone"),
            unit=raw.get("unit") or "",
            writable=bool(raw.get("writable", False)),
            write_high=bounds.get("high"),
        )


@dataclass
class ZoneView:
    """A zone's points by role (``temp``, ``cool_sp``...) and, after reading, their usable values."""

    name: str
    points: dict[str, PointInfo] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def value(self, role: str) -> Any:
        return self.values.get(role)


@dataclass
class PlanResult:
    """One cycle's outcome. ``errors`` are failed tool calls; the cycle went on without them."""

    recommendations: list[Recommendation] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    zones: dict[str, ZoneView] = field(default_factory=dict)  # the zones looked at, with their values

    @property
    def complete(self) -> bool:
        return not self.errors


class Planner:
    """Rules over zone readings: comfort_violation, unoccupied_conditioning, data_quality."""

    def __init__(
        self,
        call: Call,
        servers: Iterable[str],
        *,
        comfort_band_c: float = 1.0,
        setback_duration_s: float = 3600.0,
    ) -> None:
        self._call = call
        self.servers = list(servers)
        self.band = comfort_band_c
        self.setback_duration_s = setback_duration_s
        self.history = History()
        self.catalog: dict[str, PointInfo] = {}  # the last discovery's points
        self.raw_points: dict[str, dict[str, Any]] = {}  # the same, as list_points gave them

    async def cycle(self, zone: str | None = None, rules: Iterable[str] = ("comfort", "energy")) -> PlanResult:
        """One pass: discover, ONE read per server, then the rules (``comfort``, ``energy``), for
        every zone or only ``zone``. Findings of data quality come with it."""
        result = PlanResult()
        catalog = await self.discover(result)
        zones, meters = select_zones(catalog)
        if zone is not None:
            zones = {k: v for k, v in zones.items() if k == zone}
        good, bad = await self._read_list([p for z in zones.values() for p in z.points.values()] + meters, result)
        result.zones = zones
        chosen = [r for r in (("comfort", self._comfort), ("energy", self._unoccupied)) if r[0] in set(rules)]
        for zone_view in zones.values():
            zone_view.values = {role: good[p.id] for role, p in zone_view.points.items() if p.id in good}
        meter_kw = next((good[m.id] for m in meters if isinstance(good.get(m.id), int | float)), None)
        result.inputs |= {
            "servers": self.servers,
            "zones": {z.name: {p.id: good.get(p.id) for p in z.points.values()} for z in zones.values()},
            "meter_kw": meter_kw,
            "bad": bad,
        }
        for zone_view in zones.values():
            for _, rule in chosen:
                rec = rule(zone_view, meter_kw=meter_kw, n_zones=len(zones))
                if rec is not None:
                    result.recommendations.append(rec)
        result.recommendations += _data_quality(bad, catalog, result.errors)
        return result

    async def read_points(self, ids: Iterable[str], result: PlanResult) -> tuple[dict[str, Any], dict[str, str]]:
        """Read points of the last discovery (one read_points per server); usable values and why not the rest."""
        wanted = [self.catalog[p] for p in ids if p in self.catalog]
        return await self._read_list(wanted, result)

    # -- tool calls ---------------------------------------------------------------------------
    async def discover(self, result: PlanResult) -> dict[str, PointInfo]:
        """Every server's list_points: the catalog (also kept as ``catalog`` and ``raw_points``)."""
        catalog: dict[str, PointInfo] = {}
        raw_points: dict[str, dict[str, Any]] = {}
        for server, listed in await self._each_server("list_points", result):
            for raw in listed.get("points", []):
                info = PointInfo.parse(server, raw)
                catalog.setdefault(info.id, info)
                raw_points.setdefault(info.id, raw)
        self.catalog, self.raw_points = catalog, raw_points
        return catalog

    async def devices(self, result: PlanResult) -> dict[str, dict[str, Any]]:
        """Every server's list_devices, by device id."""
        return {str(d.get("id")): d for _, listed in await self._each_server("list_devices", result)
                for d in listed.get("devices", [])}

    async def _each_server(self, tool: str, result: PlanResult) -> list[tuple[str, dict[str, Any]]]:
        """``tool`` (no arguments) on every server: (server, answer) of those that answered, in
        order; each failure goes into ``result.errors``."""
        answers = []
        for server in self.servers:
            try:
                answers.append((server, await self._call(f"{server}__{tool}", {})))
            except EaioError as err:
                result.errors.append(_failure(server, tool, err))
        return answers

    async def _read_list(self, wanted: list[PointInfo], result: PlanResult) -> tuple[dict[str, Any], dict[str, str]]:
        """ONE read_points per server. Returns usable values and, for the rest, why not."""
        by_server: dict[str, list[str]] = {}
        for p in wanted:
            if p.id not in by_server.setdefault(p.server, []):
                by_server[p.server].append(p.id)
        good: dict[str, Any] = {}
        bad: dict[str, str] = {}
        for server, ids in by_server.items():
            try:
                answer = await self._call(f"{server}__read_points", {"point_ids": ids})
            except EaioError as err:
                result.errors.append(_failure(server, "read_points", err))
                bad.update({pid: f"{err.code}: read_points failed" for pid in ids})
                continue
            for r in answer.get("readings", []):
                pid = r.get("point_id")
                if r.get("quality") == "bad" or r.get("value") is None:
                    bad[pid] = _why(r)
                else:
                    good[pid] = r["value"]
                    self.history.add(pid, _epoch(r.get("ts")), r["value"])
            for pid in ids:
                if pid not in good and pid not in bad:
                    bad[pid] = "no reading returned"
        return good, bad

    # -- rules --------------------------------------------------------------------------------
    def _comfort(self, zone: ZoneView, **_: Any) -> Recommendation | None:
        temp, cool, heat = zone.value("temp"), zone.value("cool_sp"), zone.value("heat_sp")
        # Comfort matters only in occupied mode, and not when the sensor says nobody is there
        # (that case is the unoccupied rule's saving, not a complaint).
        if temp is None or _flag(zone.value("occ_mode")) is not True or _flag(zone.value("occ")) is False:
            return None
        if cool is not None and temp > cool + self.band:
            excess, side, sp, sp_role = temp - cool - self.band, "above its cooling", cool, "cool_sp"
        elif heat is not None and temp < heat - self.band:
            excess, side, sp, sp_role = heat - self.band - temp, "below its heating", heat, "heat_sp"
        else:
            return None
        severity = Severity.CRITICAL if excess >= self.band else Severity.WARNING
        return Recommendation(
            kind="comfort_violation",
            zone=zone.name,
            point_ids=[zone.points["temp"].id, zone.points[sp_role].id],
            severity=severity,
            message=(
                f"{zone.name} is {temp:.1f} degC while occupied, {excess + self.band:.1f} degC {side} "
                f"setpoint {sp:.1f} (band {self.band:.1f})"
            ),
            evidence={**_evidence(zone), "band_c": self.band, "excess_c": round(excess, 2)},
            mode=DecisionMode.DEGRADED,
        )

    def _unoccupied(self, zone: ZoneView, *, meter_kw: float | None, n_zones: int) -> Recommendation | None:
        if _flag(zone.value("occ")) is not False or _flag(zone.value("occ_mode")) is not True:
            return None
        cool_pt, cool = zone.points.get("cool_sp"), zone.value("cool_sp")
        action: SuggestedWrite | None = None
        saving: float | None = None
        if cool_pt is not None and cool_pt.writable and cool_pt.write_high is not None and cool is not None:
            if cool >= cool_pt.write_high:
                return None  # already set back as far as allowed: nothing to gain
            action = SuggestedWrite(point_id=cool_pt.id, value=cool_pt.write_high, duration_s=self.setback_duration_s)
            saving = _saving_kw(zone, cool_pt.write_high - cool, meter_kw, n_zones)
        what = "set the zone back"
        if action is not None:
            what = f"raise {action.point_id} to {action.value} for {self.setback_duration_s / 60:.0f} min"
        return Recommendation(
            kind="unoccupied_conditioning",
            zone=zone.name,
            point_ids=[p.id for role, p in zone.points.items() if role in ("occ", "occ_mode", "cool_sp")],
            severity=Severity.WARNING,
            message=f"{zone.name} is conditioned in occupied mode but nobody is there: {what}",
            evidence=_evidence(zone) | {"meter_kw": meter_kw},
            action=action,
            estimated_saving_kw=saving,
            mode=DecisionMode.DEGRADED,
        )


def select_zones(catalog: dict[str, PointInfo]) -> tuple[dict[str, ZoneView], list[PointInfo]]:
    """Zones (by Brick role) and building meters among discovered points."""
    zones: dict[str, ZoneView] = {}
    meters: list[PointInfo] = []
    for p in catalog.values():
        if p.brick == METER_CLASS:
            meters.append(p)
        role = ZONE_ROLES.get(p.brick or "")
        if role is None or p.zone is None:
            continue
        zones.setdefault(p.zone, ZoneView(p.zone)).points.setdefault(role, p)
    # A zone without a temperature sensor gives the rules nothing to reason about.
    return {name: z for name, z in sorted(zones.items()) if "temp" in z.points or "occ" in z.points}, meters


def _epoch(ts: Any) -> float:
    """A reading's time as epoch seconds (now, when the server gave none or an unreadable one)."""
    if isinstance(ts, str):
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _failure(server: str, tool: str, err: EaioError) -> dict[str, Any]:
    return {"server": server, "tool": tool, "code": err.code, "message": err.message}


def _flag(value: Any) -> bool | None:
    """A binary point's value as a bool; None when unknown (unread or bad)."""
    return None if value is None else bool(value)


def _why(reading: dict[str, Any]) -> str:
    reasons = ",".join(reading.get("reasons") or []) or "bad"
    detail = reading.get("detail")
    return f"{reasons} ({detail})" if detail else reasons


def _evidence(zone: ZoneView) -> dict[str, Any]:
    return {role: zone.values.get(role) for role in zone.points}


def _saving_kw(zone: ZoneView, raise_c: float, meter_kw: float | None, n_zones: int) -> float | None:
    """A rough estimate: reheat running for nobody, plus a per-degree share of the building demand."""
    parts: list[float] = []
    reheat = zone.value("reheat")
    if isinstance(reheat, int | float) and reheat > 0:
        parts.append(float(reheat))
    if meter_kw is not None and n_zones > 0:
        parts.append(meter_kw / n_zones * SAVING_PER_DEGC * raise_c)
    return round(sum(parts), 2) if parts else None


def _data_quality(
    bad: dict[str, str], catalog: dict[str, PointInfo], errors: list[dict[str, Any]]
) -> list[Recommendation]:
    """One finding per zone (and one for points outside zones) listing what was not used."""
    by_zone: dict[str | None, dict[str, str]] = {}
    for pid, why in sorted(bad.items()):
        info = catalog.get(pid)
        by_zone.setdefault(info.zone if info else None, {})[pid] = why
    if errors and None not in by_zone:
        by_zone[None] = {}
    recs = []
    for zone, points in by_zone.items():
        failed = errors if zone is None else []
        listed = "; ".join(f"{pid}: {why}" for pid, why in points.items())
        calls = "; ".join(f"{e['server']}__{e['tool']} failed ({e['code']})" for e in failed)
        recs.append(Recommendation(
            kind="data_quality",
            zone=zone,
            point_ids=list(points),
            severity=Severity.WARNING,
            message=f"{zone or 'site'}: readings not used — " + "; ".join(x for x in (listed, calls) if x),
            evidence={"bad": points, "errors": failed},
            mode=DecisionMode.DEGRADED,
        ))
    return recs
