"""Workflows: collect -> analyse -> forecast -> optimise -> synthesise, with or without a model.

Five workflows: ``comfort`` (a zone too warm or cold), ``energy`` (conditioning nobody),
``demand`` (a peak: which loads, what to shed), ``data_quality`` (a stale or flatlined sensor,
a device offline: what is affected, what to check) and ``ask`` (a free question).

With a model (``chain``), the LLM chooses the tools: it gets a task text per workflow, the
workflow's tools, similar past situations from memory, and the Actuator as its only way to write.
When every model fails (``LLMError``), or without one, the planner's fixed procedure runs the same
workflow (mode ``degraded``). Each run is ONE Decision in the records, with its mode and model.

The forecast is deliberately simple and says what it is: a least-squares line through the
readings this agent made recently (zone temperature in 30 min; demand at the end of the demand
interval). With fewer than two readings it says so rather than guess.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LLMError
from ..models import Decision, DecisionMode, Recommendation, Severity, SuggestedWrite
from .approvals import Actuator
from .base import ToolSpec
from .host import SEP
from .planner import METER_CLASS, ZONE_ROLES, Planner, PlanResult, PointInfo, ZoneView, select_zones
from .records import Records

if TYPE_CHECKING:
    from .runtime import ToolHost

__all__ = [
    "CYCLE",
    "WORKFLOWS",
    "Chain",
    "MemoryLike",
    "Outcome",
    "Trigger",
    "Workflows",
    "forecast_text",
    "zone_in_question",
]

log = logging.getLogger(__name__)

WORKFLOWS = ("comfort", "energy", "demand", "data_quality", "ask")
CYCLE = ("comfort", "energy")  # what the schedule runs
COMFORT_HORIZON_S = 1800.0  # "where will this zone be in 30 min"
# Kinds the scheduled cycle can see again: only these may be resolved by its absence.
CYCLE_KINDS = ("comfort_violation", "unoccupied_conditioning", "data_quality")
# During a demand peak, occupied zones may give this much comfort for one demand interval.
DEMAND_RAISE_C = 1.0
# Tools a workflow offers a model (by the part after "<server>__"); write tools only through the Actuator.
READS = ("list_points", "read_points")
WORKFLOW_TOOLS: dict[str, tuple[str, ...]] = {
    "comfort": (*READS, "write_point", "read_history"),
    "energy": (*READS, "write_point", "read_history"),
    "demand": (*READS, "write_point", "read_history"),
    "data_quality": (*READS, "list_devices", "server_health"),
    "ask": (*READS, "list_devices", "write_point", "read_history", "server_health"),
}
TASKS: dict[str, str] = {
    "comfort": "Check thermal comfort{where}. Read zone temperatures, cooling and heating setpoints and occupancy "
               "(find them with list_points by Brick class), say which zones are more than {band} degC outside "
               "their setpoints, why, and what to do. Write only if a write clearly helps.",
    "energy": "Look for energy waste{where}: zones conditioned in occupied mode while their occupancy sensor says "
              "nobody is there. Propose a setback (raise the cooling setpoint toward its upper write bound for "
              "60 minutes, with duration_s) and estimate the saving.",
    "demand": "Building demand is peaking{where} ({detail}). Read the building meter and the power points, rank "
              "the loads, forecast demand at the end of the {interval:.0f}-minute interval, and propose what to "
              "shed with the least comfort impact (temporary writes with duration_s only).",
    "data_quality": "A data-quality problem was reported for {subject} ({detail}). Find what it affects (points, "
                    "zones, equipment), read them, and say what a technician should check. Do not write.",
    "ask": "{question}",
}


class Chain(Protocol):
    """G's ModelChain (fallback.py): the configured model, then the smaller one; LLMError when all failed."""

    async def run(
        self, host: Any, task: str, *, tools: list[ToolSpec], context: str = "",
        write_hook: Callable[..., Any] | None = None,
    ) -> Any: ...


class MemoryLike(Protocol):
    """H's Memory (memory.py), as the workflows use it."""

    async def remember(self, kind: Any, text: str, metadata: dict[str, Any] | None = None) -> str: ...

    async def recall(self, situation: str, n: int | None = None, kinds: Sequence[str] | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class Trigger:
    """Why a workflow runs: the schedule, an event from the bus, or a question."""

    workflows: tuple[str, ...]
    source: str = "schedule"  # start | schedule | event | ask | manual
    subject: str | None = None  # a zone, point or device id
    question: str | None = None
    event: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return "+".join(self.workflows)

    @property
    def label(self) -> str:
        """The Decision's trigger: 'schedule', 'start', 'ask', 'event:quality:zone1.temp'..."""
        if self.source == "event" and self.event is not None:
            return f"event:{self.event.get('kind', '?')}:{self.subject or self.event.get('subject', '?')}"
        return self.source


@dataclass
class Outcome:
    """What one procedure produced, before it becomes a Decision."""

    recommendations: list[Recommendation] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    forecast: dict[str, Any] = field(default_factory=dict)
    writes: list[dict[str, Any]] = field(default_factory=list)
    answer: str = ""
    complete: bool = True  # the whole building was seen: absent findings may be resolved
    mode: DecisionMode = DecisionMode.DEGRADED
    model: str | None = None
    llm: dict[str, Any] | None = None
    new: list[Recommendation] = field(default_factory=list)  # not seen open before: announced


class Workflows:
    """Runs one Trigger to one recorded Decision."""

    def __init__(
        self,
        host: ToolHost,
        planner: Planner,
        records: Records,
        actuator: Actuator,
        *,
        chain: Chain | None = None,
        memory: MemoryLike | None = None,
        demand_interval_s: float = 900.0,
        demand_peak_kw: float | None = None,
    ) -> None:
        self.host = host
        self.planner = planner
        self.records = records
        self.actuator = actuator
        self.chain = chain
        self.memory = memory
        self.demand_interval_s = demand_interval_s
        self.demand_peak_kw = demand_peak_kw

    async def run(self, trigger: Trigger) -> tuple[Decision, Outcome]:
        """Run the trigger's workflow(s); record the Decision (and remember it); return both."""
        decision_id = uuid.uuid4().hex
        self.host.drain_calls()  # calls made outside a workflow are not this decision's
        first = len(self.actuator.requests)
        outcome: Outcome | None = None
        if self.chain is not None:
            outcome = await self._with_model(trigger, decision_id)
        if outcome is None:
            outcome = await self._procedure(trigger, decision_id)
        outcome.writes = [_write_summary(r) for r in self.actuator.requests[first:]]
        outcome.new = [r for r in outcome.recommendations if self.records.upsert(r)]
        # Only a run that looked at the whole building may say a finding it did not see is gone.
        resolved = self.records.resolve_absent(outcome.recommendations, CYCLE_KINDS) if outcome.complete else 0
        decision = Decision(
            id=decision_id,
            trigger=trigger.label,
            mode=outcome.mode,
            inputs=outcome.inputs | {
                "workflow": trigger.name, "subject": trigger.subject, "question": trigger.question,
                "event": trigger.event, "errors": outcome.errors, "forecast": outcome.forecast,
                "writes": outcome.writes, "answer": outcome.answer, "model": outcome.model,
                **({"llm": outcome.llm} if outcome.llm is not None else {}),
            },
            tool_calls=[c.as_dict() for c in self.host.drain_calls()],
            outputs=outcome.recommendations,
            outcome=_summary(outcome, resolved),
        )
        self.records.record_decision(decision, model=outcome.model, workflow=trigger.name)
        await self._remember(trigger, decision, outcome)
        return decision, outcome

    # -- the model ----------------------------------------------------------------------------
    async def _with_model(self, trigger: Trigger, decision_id: str) -> Outcome | None:
        """The LLM chooses the tools; None when every model failed (the procedure runs instead)."""
        assert self.chain is not None
        task = self._task(trigger)
        context = await self._recall(task)
        tools = self._tools(trigger.workflows[0] if len(trigger.workflows) == 1 else "ask")
        hook = functools.partial(self.actuator.request, decision_id=decision_id)
        try:
            result = await self.chain.run(self.host, task, tools=tools, context=context, write_hook=hook)
        except LLMError as err:
            log.warning("every model failed (%s): the planner runs %s, mode degraded", err, trigger.name)
            out = await self._procedure(trigger, decision_id)
            out.inputs["llm_error"] = str(err)
            return out
        mode = DecisionMode(result.mode)
        rec = Recommendation(
            kind=f"{trigger.name}_advice".replace("+", "_"),
            zone=trigger.subject,
            severity=Severity.INFO,
            message=result.answer.strip()[:4000] or "(the model gave no answer)",
            evidence={"tool_calls": result.tool_calls, "refused": result.refused},
            mode=mode,
        )
        return Outcome(
            recommendations=[rec], answer=result.answer, complete=False, mode=mode, model=result.model,
            inputs={"task": task, "context": context},
            llm={"steps": result.steps, "tool_calls": result.tool_calls, "refused": result.refused,
                 "truncated": result.truncated},
        )

    def _task(self, trigger: Trigger) -> str:
        event = trigger.event or {}
        detail = event.get("message") or ", ".join(event.get("reasons") or []) or str(event.get("code") or "")
        where = f" in {trigger.subject}" if trigger.subject else ""
        parts = []
        for wf in trigger.workflows:
            parts.append(TASKS[wf].format(
                where=where, band=self.planner.band, subject=trigger.subject or "the site",
                detail=detail or "no detail",
                interval=self.demand_interval_s / 60, question=trigger.question or "",
            ))
        return " Then: ".join(parts)

    def _tools(self, workflow: str) -> list[ToolSpec]:
        wanted = set(WORKFLOW_TOOLS.get(workflow, READS))
        tools: dict[str, ToolSpec] = getattr(self.host, "tools", {})
        return [t for name, t in tools.items() if name.split(SEP, 1)[-1] in wanted]

    async def _recall(self, situation: str) -> str:
        if self.memory is None:
            return ""
        try:
            hits = await self.memory.recall(situation)
        except Exception as err:  # memory helps; its failure must not stop a decision
            log.warning("memory recall failed: %s", err)
            return ""
        if not hits:
            return ""
        lines = [f"- ({h.kind}) {h.text}" for h in hits]
        return "Similar past situations (nearest first):\n" + "\n".join(lines)

    async def _remember(self, trigger: Trigger, decision: Decision, outcome: Outcome) -> None:
        if self.memory is None:
            return
        findings = "; ".join(r.message for r in decision.outputs[:5]) or "nothing found"
        writes = "; ".join(f"{w['point_id']}={w['value']} {w['status']}" for w in outcome.writes) or "no writes"
        text = f"{trigger.label} {trigger.name}{' ' + trigger.subject if trigger.subject else ''}: {findings}. " \
               f"Actions: {writes}."
        try:
            await self.memory.remember("decision", text[:2000], {
                "decision_id": decision.id, "workflow": trigger.name, "mode": decision.mode.value,
                "subject": trigger.subject or "", "trigger": trigger.label,
            })
        except Exception as err:
            log.warning("memory remember failed: %s", err)

    # -- the no-LLM procedures ----------------------------------------------------------------
    async def _procedure(self, trigger: Trigger, decision_id: str) -> Outcome:
        wf = set(trigger.workflows)
        if wf == {"ask"}:
            return await self._ask(trigger, decision_id)
        if wf == {"demand"}:
            return await self._demand(trigger, decision_id)
        if wf == {"data_quality"}:
            return await self._data_quality(trigger)
        return await self._zones(trigger, decision_id, write=True)

    async def _zones(self, trigger: Trigger, decision_id: str, *, write: bool) -> Outcome:
        """comfort and/or energy: collect (one read), analyse (rules), forecast, optimise, synthesise."""
        rules = [w for w in trigger.workflows if w in CYCLE] or list(CYCLE)
        plan = await self.planner.cycle(zone=trigger.subject, rules=rules)
        zones = plan.zones
        out = _from_plan(plan)
        out.complete = plan.complete and trigger.subject is None and set(rules) == set(CYCLE)
        out.forecast = {z.name: self._zone_forecast(z) for z in zones.values() if "temp" in z.points}
        if write:
            for rec in out.recommendations:
                if rec.action is not None:
                    await self._request(rec, decision_id)
        out.answer = _zones_text(zones, out, self.planner.band)
        return out

    async def _request(self, rec: Recommendation, decision_id: str) -> dict[str, Any]:
        assert rec.action is not None
        # The policy needs the point's kind and class: the planner's discovery has them already.
        self.actuator.points.update(self.planner.raw_points)
        info = self.planner.catalog.get(rec.action.point_id)
        server = info.server if info else self.planner.servers[0]
        args: dict[str, Any] = {"point_id": rec.action.point_id, "value": rec.action.value,
                                "reason": f"eaio agent: {rec.message}"[:480]}
        if rec.action.duration_s:
            args["duration_s"] = rec.action.duration_s
        return await self.actuator.request(f"{server}{SEP}write_point", args, decision_id=decision_id)

    def _zone_forecast(self, zone: ZoneView) -> dict[str, Any]:
        temp_pt = zone.points["temp"]
        now = zone.value("temp")
        trend = self.planner.history.trend(temp_pt.id)
        if trend is None:
            return {"point_id": temp_pt.id, "now": now, "in_30_min": None,
                    "method": "no trend: fewer than two readings of it by this agent yet"}
        return {
            "point_id": temp_pt.id, "now": now, "in_30_min": round(trend.at(COMFORT_HORIZON_S), 2),
            "per_hour": round(trend.slope_per_s * 3600, 2),
            "method": f"least-squares line through the last {trend.samples} readings over {trend.span_s / 60:.1f} min",
        }

    async def _demand(self, trigger: Trigger, decision_id: str, *, write: bool = True) -> Outcome:
        plan = PlanResult()
        catalog = await self.planner.discover(plan)
        zones, meters = select_zones(catalog)
        loads = [p for p in catalog.values() if self.planner.raw_points.get(p.id, {}).get("kind") == "power"
                 and p.brick != METER_CLASS]
        wanted = [p.id for p in meters + loads] + [p.id for z in zones.values() for p in z.points.values()]
        good, bad = await self.planner.read_points(wanted, plan)
        for z in zones.values():
            z.values = {role: good[p.id] for role, p in z.points.items() if p.id in good}
        out = Outcome(errors=plan.errors, complete=False)
        meter = next((m for m in meters if isinstance(good.get(m.id), int | float)), None)
        meter_kw = float(good[meter.id]) if meter else None
        event_kw = _number((trigger.event or {}).get("value"))
        ranked = sorted(((p.id, float(good[p.id])) for p in loads if isinstance(good.get(p.id), int | float)),
                        key=lambda x: -x[1])
        out.forecast = self._demand_forecast(meter, meter_kw)
        peak = self.demand_peak_kw
        level = event_kw if event_kw is not None else meter_kw
        over = peak is not None and level is not None and level > peak
        forecast_over = peak is not None and (out.forecast.get("at_interval_end") or 0) > peak
        out.inputs = {"meter": meter.id if meter else None, "meter_kw": meter_kw, "event_kw": event_kw,
                      "peak_kw": peak, "loads": dict(ranked), "bad": bad}
        shed: list[str] = []
        # Shedding costs comfort: only above the configured threshold (now or forecast), never for a question.
        if write and (over or forecast_over):
            shed = await self._shed(zones, decision_id, meter_kw)
        top = ", ".join(f"{pid} {kw:.1f} kW" for pid, kw in ranked[:4]) or "no power points readable"
        lvl = f"{level:.1f} kW" if level is not None else "unknown (meter unreadable)"
        msg = f"demand {lvl}" + (f" (peak threshold {peak:g} kW)" if peak else "") + f"; largest loads: {top}"
        if out.forecast.get("at_interval_end") is not None:
            msg += f"; about {out.forecast['at_interval_end']:.1f} kW at the end of the interval"
        out.recommendations.append(Recommendation(
            kind="demand_peak", zone=None, point_ids=[p for p, _ in ranked[:4]],
            severity=Severity.WARNING if (over or forecast_over) else Severity.INFO, message=msg,
            evidence={"loads": dict(ranked), "meter_kw": meter_kw, "event_kw": event_kw, "shed": shed},
            mode=DecisionMode.DEGRADED,
        ))
        out.answer = msg + (". Shed: " + "; ".join(shed) if shed else ". Nothing shed.")
        return out

    def _demand_forecast(self, meter: PointInfo | None, meter_kw: float | None) -> dict[str, Any]:
        now = time.time()
        left = self.demand_interval_s - (now % self.demand_interval_s)
        trend = self.planner.history.trend(meter.id) if meter else None
        if trend is None:
            return {"now": meter_kw, "at_interval_end": None, "seconds_left": round(left),
                    "method": "no trend: fewer than two meter readings by this agent yet"}
        return {"now": meter_kw, "at_interval_end": round(trend.at(left), 2), "seconds_left": round(left),
                "per_minute": round(trend.slope_per_s * 60, 3),
                "method": f"least-squares line through the last {trend.samples} meter readings, "
                          f"extended to the end of the {self.demand_interval_s / 60:.0f}-min interval"}

    async def _shed(self, zones: dict[str, ZoneView], decision_id: str, meter_kw: float | None) -> list[str]:
        """Unoccupied zones set back; occupied ones give DEMAND_RAISE_C for one interval (within bounds)."""
        done: list[str] = []
        for z in zones.values():
            cool_pt, cool = z.points.get("cool_sp"), z.value("cool_sp")
            if cool_pt is None or not cool_pt.writable or cool_pt.write_high is None:
                continue
            if not isinstance(cool, int | float):
                continue
            nobody = z.value("occ") is False or z.value("occ_mode") is False
            target = cool_pt.write_high if nobody else min(cool_pt.write_high, round(cool + DEMAND_RAISE_C, 1))
            if target <= cool:
                continue
            rec = Recommendation(kind="demand_shed", zone=z.name, message=(
                f"demand peak: raise {cool_pt.id} from {cool:g} to {target:g} for {self.demand_interval_s / 60:.0f} min"
                + (" (nobody there)" if nobody else "")), mode=DecisionMode.DEGRADED)
            rec.action = SuggestedWrite(point_id=cool_pt.id, value=target, duration_s=self.demand_interval_s)
            result = await self._request(rec, decision_id)
            done.append(f"{cool_pt.id} -> {target:g} ({_status_of(result)})")
        return done

    async def _data_quality(self, trigger: Trigger) -> Outcome:
        plan = PlanResult()
        catalog = await self.planner.discover(plan)
        subject = trigger.subject or ""
        raw = self.planner.raw_points
        if subject in catalog:
            info = catalog[subject]
            equip = raw.get(subject, {}).get("equip")
            affected = [p for p in catalog.values() if p.id == subject
                        or (info.zone and p.zone == info.zone)
                        or (equip and raw.get(p.id, {}).get("equip") == equip)]
            device = raw.get(subject, {}).get("device_id")
        else:
            affected = [p for p in catalog.values() if raw.get(p.id, {}).get("device_id") == subject]
            device = subject if affected else None
        devices = await self.planner.devices(plan)
        good, bad = await self.planner.read_points([p.id for p in affected], plan)
        out = Outcome(errors=plan.errors, complete=False)
        event = trigger.event or {}
        reasons = list(event.get("reasons") or []) + ([str(event["code"])] if event.get("code") else [])
        zones = sorted({p.zone for p in affected if p.zone})
        blind = sorted({f"{p.zone or p.id}: {ZONE_ROLES[p.brick]}" for p in affected
                        if p.id in bad and p.brick in ZONE_ROLES})
        state = devices.get(device or "", {})
        out.inputs = {"subject": subject, "device": device, "device_state": state, "affected": [p.id for p in affected],
                      "bad": bad, "good": {k: good[k] for k in list(good)[:50]}, "reasons": reasons}
        out.forecast = {"method": "none: a data-quality finding has nothing to extrapolate"}
        if not affected:
            text = f"{subject or 'the subject'} is neither a point nor a device the servers list; nothing to check"
            out.answer = text
            out.recommendations.append(Recommendation(kind="data_quality_event", zone=None, severity=Severity.INFO,
                                                      message=text, evidence=out.inputs, mode=DecisionMode.DEGRADED))
            return out
        checks = _checks(reasons, bad, device, state)
        still = sorted(bad)
        sev = Severity.WARNING if still or reasons else Severity.INFO
        now_text = (f"{len(still)} of {len(affected)} related point(s) unusable now ({', '.join(still[:8])})"
                    if still else f"all {len(affected)} related point(s) read fine now")
        msg = (f"{subject}: {', '.join(reasons) or 'reported'}; {now_text}"
               + (f"; zones affected: {', '.join(zones)}" if zones else "")
               + (f"; rules without input: {', '.join(blind)}" if blind else "")
               + (f". Check: {' '.join(checks)}" if checks else ""))
        kind = "device_offline" if device == subject else "sensor_fault"
        out.recommendations.append(Recommendation(
            kind=kind, zone=zones[0] if len(zones) == 1 else None, point_ids=still or [subject], severity=sev,
            message=msg, evidence=out.inputs | {"checks": checks}, mode=DecisionMode.DEGRADED,
        ))
        out.answer = msg
        return out

    async def _ask(self, trigger: Trigger, decision_id: str) -> Outcome:
        q = (trigger.question or "").strip()
        plan = PlanResult()
        catalog = await self.planner.discover(plan) if not self.planner.catalog else self.planner.catalog
        zones = sorted({p.zone for p in catalog.values() if p.zone})
        zone = zone_in_question(q, zones)
        low = q.lower()
        if zone is not None:
            inner = Trigger(("comfort", "energy"), source="ask", subject=zone, question=q)
            out = await self._zones(inner, decision_id, write=False)
        elif any(w in low for w in ("demand", "peak", "load", "kw")):
            out = await self._demand(Trigger(("demand",), source="ask", question=q), decision_id, write=False)
        elif any(w in low for w in ("waste", "saving", "save", "energy", "setback", "empty")):
            out = await self._zones(Trigger(("energy",), source="ask", question=q), decision_id, write=False)
        else:
            known = ", ".join(zones) or "none found"
            out = Outcome(complete=False, errors=plan.errors)
            out.answer = (f"Without a model I cannot map \"{q}\" to a zone or a workflow. I can answer: why is "
                          f"<zone> warm/cold? (zones: {known}); where is energy wasted?; what drives demand? "
                          "For sensors and devices, see the data-quality findings (`eaio agent` records them).")
        out.complete = False
        return out


# -- synthesis and helpers ------------------------------------------------------------------------
def zone_in_question(question: str, zones: Sequence[str]) -> str | None:
    """The zone a question names: 'zone 2', 'Zone2', 'zone-2' -> 'zone2' (when the site has it)."""
    squeezed = re.sub(r"[\s_\-]+", "", question.lower())
    for z in sorted(zones, key=len, reverse=True):  # zone12 before zone1
        if re.search(re.escape(re.sub(r"[\s_\-]+", "", z.lower())) + r"(?!\d)", squeezed):
            return z
    return None


def forecast_text(f: dict[str, Any]) -> str:
    if f.get("in_30_min") is None:
        return f"no forecast ({f.get('method', 'no data')})"
    direction = "rising" if f["per_hour"] > 0.05 else "falling" if f["per_hour"] < -0.05 else "steady"
    return f"{direction} {abs(f['per_hour']):.1f} degC/h; about {f['in_30_min']:.1f} degC in 30 min ({f['method']})"


def _zones_text(zones: dict[str, ZoneView], out: Outcome, band: float) -> str:
    """Plain sentences: each zone's state, the findings, the forecast, what was done."""
    lines: list[str] = []
    by_zone: dict[str | None, list[Recommendation]] = {}
    for r in out.recommendations:
        by_zone.setdefault(r.zone, []).append(r)
    for z in zones.values():
        v = z.values
        if "temp" not in v:
            lines.append(f"{z.name}: its temperature could not be read, so I cannot say whether it is comfortable.")
            continue
        sp = []
        if "cool_sp" in v:
            sp.append(f"cooling setpoint {v['cool_sp']:g}")
        if "heat_sp" in v:
            sp.append(f"heating setpoint {v['heat_sp']:g}")
        occ_mode = {True: "in occupied mode", False: "in unoccupied mode"}.get(_b(v.get("occ_mode")), "mode unknown")
        occ = {True: "people present", False: "nobody present"}.get(_b(v.get("occ")), "presence unknown")
        line = f"{z.name} is {v['temp']:.1f} degC ({', '.join(sp) or 'no setpoints read'}; band {band:g} degC), " \
               f"{occ_mode}, {occ}."
        extra = []
        if isinstance(v.get("damper"), int | float):
            extra.append(f"VAV damper {v['damper']:.0f} %" + (" (wide open: the box gives all it can)"
                                                               if v["damper"] >= 95 else ""))
        if isinstance(v.get("reheat"), int | float) and v["reheat"] > 0:
            extra.append(f"reheat {v['reheat']:.1f} kW")
        if extra:
            line += " " + "; ".join(extra) + "."
        found = [r for r in by_zone.get(z.name, []) if r.kind != "data_quality"]
        line += " " + (" ".join(f"{r.message}." for r in found) if found else "Within its comfort band.")
        if z.name in out.forecast:
            line += f" Trend: {forecast_text(out.forecast[z.name])}."
        lines.append(line)
    for r in out.recommendations:
        if r.kind == "data_quality":
            lines.append(f"Data quality: {r.message}.")
    return "\n".join(lines) or "No zones found (check the points' Brick classes and zone fields)."


def _from_plan(plan: PlanResult) -> Outcome:
    return Outcome(recommendations=list(plan.recommendations), inputs=dict(plan.inputs), errors=list(plan.errors))


def _checks(reasons: list[str], bad: dict[str, str], device: str | None, state: dict[str, Any]) -> list[str]:
    """What a technician should look at, by reason."""
    text = " ".join(reasons + list(bad.values()))
    out: list[str] = []
    if "device_offline" in text or "comm_failure" in text or state.get("online") is False:
        where = f" at {state['connection']}" if state.get("connection") else ""
        out.append(f"Is {device or 'the device'} powered and reachable{where} (network, address, unit id)?")
    if "stale" in text:
        out.append("The sensor stopped updating: check its wiring or gateway and the poll/publish interval.")
    if "flatline" in text:
        out.append("The value has not moved: a stuck or disconnected sensor, or a frozen controller value.")
    if "range" in text or "spike" in text:
        out.append("Values outside the plausible range or jumping: check sensor calibration and scaling.")
    return out


def _summary(out: Outcome, resolved: int) -> str:
    s = f"{len(out.recommendations)} recommendation(s), {len(out.new)} new, {resolved} resolved"
    if out.writes:
        s += ", " + ", ".join(f"{w['point_id']} {w['status']}" for w in out.writes)
    if out.errors:
        s += f", {len(out.errors)} failed call(s)"
    return s


def _write_summary(row: Any) -> dict[str, Any]:
    return {"approval_id": row.id, "tool": row.tool, "point_id": row.point_id, "value": row.value,
            "duration_s": row.duration_s, "policy": row.policy, "status": row.status, "note": row.note}


def _status_of(result: dict[str, Any]) -> str:
    if result.get("status") == "pending_approval":
        return f"pending approval {result.get('approval_id')}"
    if result.get("status") in ("denied", "error"):
        return f"{result['status']}: {result.get('code') or result.get('reason', '')}"
    return str(result.get("outcome", "done"))


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _b(x: Any) -> bool | None:
    return None if x is None else bool(x)
