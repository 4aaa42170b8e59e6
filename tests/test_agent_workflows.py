"""The workflows end to end without a model: the sim, the real Modbus MCP server over stdio, the
real McpHost, records in SQLite. Then `eaio agent ask` as a process, and the model chain against
the Ollama stand-in (full when the model answers, degraded when it is gone)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from eaio.agents.approvals import ApprovalPolicy
from eaio.agents.host import McpHost
from eaio.agents.planner import Planner
from eaio.agents.records import Records
from eaio.agents.runtime import Runtime, agent_db_path
from eaio.agents.workflows import Trigger, zone_in_question
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.models import DecisionMode
from eaio.servers.audit import read_audit

ROOT = Path(__file__).resolve().parent.parent
AUTO_SETPOINTS = {"approvals": [{"points": ["zone*.cool_sp"], "policy": "auto"}]}


@asynccontextmanager
async def opened(cfg: SiteConfig, **kw: Any) -> AsyncIterator[tuple[Runtime, Records, McpHost]]:
    """The runtime as `eaio agent` builds it (without the schedule loop)."""
    async with McpHost.from_config(cfg) as host:
        planner = Planner(host.call_tool, ["modbus"], comfort_band_c=cfg.agent.comfort_band_c)
        with Records(agent_db_path(cfg)) as records:
            runtime = Runtime(host, planner, records, echo=lambda _: None, policy=ApprovalPolicy.from_config(cfg),
                              demand_interval_s=cfg.energy.demand_interval_s,
                              demand_peak_kw=cfg.agent.demand_peak_kw, **kw)
            yield runtime, records, host


def too_warm(sim: Any, zone: str = "zone2", temp: float = 27.5) -> None:
    """Hold a zone occupied and too warm (the sim's occupancy is a seeded pattern otherwise)."""
    def hold(s: Any) -> None:
        s.set_value(f"{zone}.temp", temp)
        s.set_value(f"{zone}.occ", True)
        s.inject(SimFaultSpec(kind="stuck", target=f"{zone}.temp"))
        s.inject(SimFaultSpec(kind="stuck", target=f"{zone}.occ"))
    sim.call(hold)


def test_zone_names_in_questions() -> None:
    zones = ["zone1", "zone2", "zone12"]
    assert zone_in_question("why is zone 2 warm?", zones) == "zone2"
    assert zone_in_question("Why is Zone-12 so cold", zones) == "zone12"
    assert zone_in_question("what about zone 3?", zones) is None
    assert zone_in_question("is the chiller ok?", zones) is None


@pytest.mark.anyio
async def test_comfort_finds_the_warm_zone_with_evidence_and_a_forecast(site: SiteConfig, sim: Any) -> None:
    too_warm(sim)
    async with opened(site) as (runtime, _records, _):
        first, _ = await runtime.handle(Trigger(("comfort",), source="manual"))
        decision, outcome = await runtime.handle(Trigger(("comfort",), source="manual"))
    comfort = {r.zone: r for r in decision.outputs if r.kind == "comfort_violation"}
    assert "zone2" in comfort
    assert comfort["zone2"].evidence["temp"] == pytest.approx(27.5, abs=0.05)
    assert decision.mode == DecisionMode.DEGRADED
    assert decision.inputs["workflow"] == "comfort"
    # the first run had one reading: no trend, and it says so; the second has a line through two
    assert first.inputs["forecast"]["zone2"]["in_30_min"] is None
    assert "fewer than two readings" in first.inputs["forecast"]["zone2"]["method"]
    f = decision.inputs["forecast"]["zone2"]
    assert f["in_30_min"] == pytest.approx(27.5, abs=0.2)  # held: the line is flat
    assert "least-squares" in f["method"]
    assert "zone2 is 27.5 degC" in outcome.answer
    # comfort alone never writes, and the energy rule did not run
    assert not any(c["tool"].endswith("write_point") for c in decision.tool_calls)
    assert not any(r.kind == "unoccupied_conditioning" for r in decision.outputs)
    with Records(agent_db_path(site)) as rec:
        assert rec.decision_model(decision.id) == (None, "comfort")


@pytest.mark.anyio
async def test_energy_setback_auto_approved_reaches_the_device_and_the_audit(
    site_file: Callable[..., Path], tmp_path: Path
) -> None:
    from eaio.sim.runner import SimThread

    cfg = load_config(site_file(agent=AUTO_SETPOINTS))
    with SimThread(cfg) as sim:
        async with opened(cfg) as (runtime, records, host):
            decision, outcome = await runtime.handle(Trigger(("energy",), source="manual"))
            # zone3 (a meeting room nobody uses) is conditioned in occupied mode: set back at once
            [write] = [w for w in outcome.writes if w["point_id"] == "zone3.cool_sp"]
            assert write["status"] == "executed"
            assert write["policy"] == "auto"
            assert write["value"] == 28.0
            assert write["duration_s"] == 3600
            back = await host.call_tool("modbus__read_points", {"point_ids": ["zone3.cool_sp"]})
            assert back["readings"][0]["value"] == pytest.approx(28.0)
            assert sim.value("zone3.cool_sp") == pytest.approx(28.0)
            [row] = records.list_approvals(None)
            assert row.status == "executed"
            assert row.decision_id == decision.id
            assert row.result is not None
            assert row.result["outcome"] == "accepted"
        audit = read_audit(cfg.audit_path("modbus"))
    accepted = [r for r in audit if r.outcome == "accepted"]
    assert [(r.point_id, r.requested_value) for r in accepted] == [("zone3.cool_sp", 28.0)]
    assert accepted[0].reason
    assert "nobody is there" in accepted[0].reason
    assert accepted[0].duration_s == 3600
    # the server restores a temporary write when it stops (here: when the agent closed it)
    assert any(r.outcome == "restored" and r.point_id == "zone3.cool_sp" for r in audit)
    assert "zone3.cool_sp executed" in decision.outcome


@pytest.mark.anyio
async def test_data_quality_on_an_offline_device(site: SiteConfig, sim: Any) -> None:
    sim.inject(SimFaultSpec(kind="offline", target="zones-ctrl"))
    event = {"kind": "fault", "subject": "zones-ctrl", "code": "device_offline", "device_id": "zones-ctrl",
             "message": "zones-ctrl stopped answering"}
    async with opened(site) as (runtime, _records, _):
        decision, _outcome = await runtime.handle(Trigger(("data_quality",), source="event", subject="zones-ctrl",
                                                         event=event))
    [rec] = decision.outputs
    assert rec.kind == "device_offline"
    assert decision.trigger == "event:fault:zones-ctrl"
    assert {"zone1.temp", "zone2.cool_sp", "zone3.occ"} <= set(rec.point_ids)  # what it affects
    assert "zone1" in rec.message
    assert "zone3" in rec.message
    assert "powered and reachable" in rec.message  # what to check
    assert "zone1: temp" in rec.message  # the comfort rule of zone1 is blind now
    assert {c["tool"] for c in decision.tool_calls} >= {"modbus__list_devices", "modbus__read_points"}
    assert not any(c["tool"].endswith("write_point") for c in decision.tool_calls)
    assert decision.inputs["forecast"]["method"].startswith("none")


@pytest.mark.anyio
async def test_demand_peak_ranks_loads_and_queues_what_to_shed(site_file: Callable[..., Path]) -> None:
    from eaio.sim.runner import SimThread

    cfg = load_config(site_file(agent={"demand_peak_kw": 5.0}))
    with SimThread(cfg):
        async with opened(cfg) as (runtime, records, _):
            event = {"kind": "demand", "subject": "meter.power.demand", "value": 120.0}
            decision, outcome = await runtime.handle(Trigger(("demand",), source="event",
                                                             subject="meter.power.demand", event=event))
            pending = records.list_approvals("pending")
    [rec] = [r for r in decision.outputs if r.kind == "demand_peak"]
    assert rec.severity == "warning"
    loads = rec.evidence["loads"]
    assert "chiller.power" in loads
    assert "zone1.reheat" in loads
    assert list(loads.values()) == sorted(loads.values(), reverse=True)  # ranked
    assert "120.0 kW" in rec.message
    assert "peak threshold 5 kW" in rec.message
    assert decision.inputs["forecast"]["seconds_left"] <= cfg.energy.demand_interval_s
    # default policy "approve": each shed is checked by the server (dry run) and queued, not written
    assert pending, outcome.answer
    assert {p.point_id for p in pending} <= {"zone1.cool_sp", "zone2.cool_sp", "zone3.cool_sp"}
    assert all(p.duration_s == cfg.energy.demand_interval_s for p in pending)
    assert all(r.outcome == "dry_run" for r in read_audit(cfg.audit_path("modbus")))


@pytest.mark.anyio
async def test_ask_without_a_model_answers_from_evidence(site: SiteConfig, sim: Any) -> None:
    too_warm(sim)
    async with opened(site) as (runtime, _, _host):
        decision, outcome = await runtime.handle(Trigger(("ask",), source="ask", question="why is zone 2 warm?"))
        _, unknown = await runtime.handle(Trigger(("ask",), source="ask", question="is the boiler ok?"))
        peak, peak_out = await runtime.handle(Trigger(("ask",), source="ask", question="what drives our demand?"))
    assert decision.trigger == "ask"
    assert decision.mode == DecisionMode.DEGRADED
    assert "zone2 is 27.5 degC" in outcome.answer
    assert "above its cooling setpoint" in outcome.answer
    assert "zone1" not in outcome.answer  # only the zone asked about
    assert not any(c["tool"].endswith("write_point") for c in decision.tool_calls)  # asking never writes
    assert "cannot map" in unknown.answer
    assert "zone1, zone2, zone3" in unknown.answer
    assert "largest loads: " in peak_out.answer
    assert "chiller.power" in peak_out.answer
    assert not any(c["tool"].endswith("write_point") for c in peak.tool_calls)  # a question sheds nothing


def test_agent_ask_as_a_process(site: SiteConfig, sim: Any) -> None:
    too_warm(sim)
    assert site.source is not None
    proc = subprocess.run(
        [sys.executable, "-m", "eaio", "agent", "ask", "why is zone 2 warm?", "--config", str(site.source)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zone2 is 27.5 degC" in proc.stdout
    assert "mode degraded" in proc.stderr
    with Records(agent_db_path(site)) as records:
        [decision] = records.list_decisions(workflow="ask")
    assert decision.inputs["question"] == "why is zone 2 warm?"


# -- with a model: the Ollama stand-in --------------------------------------------------------------


def _llm_site(site_file: Callable[..., Path], url: str) -> SiteConfig:
    return load_config(site_file(agent={"llm": {"backend": "ollama", "url": url, "max_steps": 4},
                                        "memory": {"enabled": False}}))


@pytest.mark.anyio
async def test_a_model_that_reads_then_answers_is_recorded_full(site_file: Callable[..., Path]) -> None:
    from eaio.agents.fallback import ModelChain
    from eaio.sim.runner import SimThread
    from ollama_standin import OllamaStandIn

    with OllamaStandIn() as ollama:
        cfg = _llm_site(site_file, ollama.url)
        ollama.script(
            {"tool_calls": [{"name": "modbus__read_points", "arguments": {"point_ids": ["zone2.temp"]}}]},
            {"content": "zone2 is warm because the afternoon sun heats it; its damper is open."},
        )
        with SimThread(cfg):
            async with opened(cfg, chain=ModelChain.from_config(cfg)) as (runtime, records, _):
                decision, outcome = await runtime.handle(
                    Trigger(("ask",), source="ask", question="why is zone 2 warm?"))
                model = records.decision_model(decision.id)
    assert decision.mode == DecisionMode.FULL
    assert model == ("qwen2.5:7b", "ask")
    assert outcome.answer.startswith("zone2 is warm because")
    assert [c["tool"] for c in decision.tool_calls] == ["modbus__read_points"]  # the model chose it
    assert decision.inputs["llm"]["tool_calls"][0]["ok"] is True
    first = ollama.requests[0]
    offered = {t["function"]["name"] for t in first["tools"]}
    # the ask workflow's tools: reads, and write_point only because the Actuator is the write hook
    assert {"modbus__read_points", "modbus__list_points", "modbus__write_point"} <= offered
    assert "modbus__read_registers" not in offered
    assert any("why is zone 2 warm?" in m.get("content", "") for m in first["messages"])


@pytest.mark.anyio
async def test_without_the_model_server_the_planner_runs_degraded(site_file: Callable[..., Path]) -> None:
    from eaio.agents.fallback import ModelChain
    from eaio.sim.runner import SimThread
    from ollama_standin import OllamaStandIn

    with OllamaStandIn() as ollama:
        cfg = _llm_site(site_file, ollama.url)
        ollama.stop()  # the server is gone: every model in the chain fails
        with SimThread(cfg) as sim:
            too_warm(sim)
            async with opened(cfg, chain=ModelChain.from_config(cfg)) as (runtime, records, _):
                decision, outcome = await runtime.handle(
                    Trigger(("ask",), source="ask", question="why is zone 2 warm?"))
                model = records.decision_model(decision.id)
    assert decision.mode == DecisionMode.DEGRADED
    assert model == (None, "ask")
    assert "llm_error" in decision.inputs
    assert "zone2 is 27.5 degC" in outcome.answer  # the planner's procedure answered instead


@pytest.mark.anyio
async def test_decisions_are_remembered_and_recalled_into_the_next_prompt(site_file: Callable[..., Path]) -> None:
    from eaio.agents.fallback import ModelChain
    from eaio.agents.memory import Memory
    from eaio.sim.runner import SimThread
    from ollama_standin import OllamaStandIn

    with OllamaStandIn() as ollama:
        cfg = load_config(site_file(agent={"llm": {"backend": "ollama", "url": ollama.url, "max_steps": 3}}))
        ollama.script({"content": "zone2 overheats in the afternoon: the blinds were open."},
                      {"content": "Same as last time: check the blinds."})
        memory = Memory.from_config(cfg)
        assert memory is not None
        with SimThread(cfg):
            async with memory, opened(cfg, chain=ModelChain.from_config(cfg), memory=memory) as (runtime, _, _h):
                await runtime.handle(Trigger(("ask",), source="ask", question="why is zone 2 warm?"))
                assert await memory.count() == 1
                second, _ = await runtime.handle(Trigger(("ask",), source="ask", question="zone 2 is warm again"))
                hits = await memory.recall("zone 2 warm", kinds=["decision"])
    assert len(hits) == 2  # both decisions
    first = next(h for h in hits if "blinds were open" in h.text)
    assert first.metadata["workflow"] == "ask"
    assert first.metadata["mode"] == "full"
    prompt = " ".join(m.get("content", "") for m in ollama.requests[-1]["messages"])
    assert "Similar past situations" in prompt
    assert "blinds were open" in prompt
    assert "blinds were open" in second.inputs["context"]
