"""Records (SQLite) and the periodic runtime; last, ``eaio agent --once`` as a real process."""

from __future__ import annotations

import functools
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from eaio.agents.base import ToolSpec
from eaio.agents.host import CallLog, McpHost
from eaio.agents.planner import Planner
from eaio.agents.records import Records
from eaio.agents.runtime import Runtime, format_new
from eaio.agents.triggers import Dedup, trigger_for
from eaio.agents.workflows import Trigger
from eaio.config import SimFaultSpec, SiteConfig
from eaio.models import Decision, DecisionMode, Event, Recommendation, Severity
from eaio.servers.audit import read_audit

ROOT = Path(__file__).resolve().parent.parent


def _rec(kind: str = "comfort_violation", zone: str | None = "zone2", msg: str = "too warm") -> Recommendation:
    return Recommendation(kind=kind, zone=zone, message=msg, severity=Severity.WARNING)


# -- records -------------------------------------------------------------------------------------


def test_repeated_findings_are_one_open_recommendation(tmp_path: Path) -> None:
    with Records(tmp_path / "agent.db") as records:
        first = _rec(msg="26.0 degC")
        assert records.upsert(first) is True
        assert records.upsert(_rec(msg="26.4 degC")) is False
        assert records.upsert(_rec(zone="zone3")) is True
        assert records.upsert(_rec(kind="data_quality", zone=None)) is True
        assert records.upsert(_rec(kind="data_quality", zone=None)) is False
        stored = {(r.recommendation.kind, r.recommendation.zone): r for r in records.list_recommendations()}
        zone2 = stored[("comfort_violation", "zone2")]
        assert zone2.count == 2
        assert zone2.recommendation.id == first.id  # the id a reader first saw stays
        assert zone2.recommendation.message == "26.4 degC"  # the latest evidence wins
        assert zone2.first_seen <= zone2.last_seen
        assert records.counts() == {"open": 3, "resolved": 0, "decisions": 0, "pending": 0}


def test_findings_no_longer_seen_are_resolved_and_can_reopen(tmp_path: Path) -> None:
    with Records(tmp_path / "agent.db", reopen_within_s=900) as records:
        first = _rec()
        records.upsert(first)
        records.upsert(_rec(zone="zone3"))
        assert records.resolve_absent([_rec(zone="zone3")]) == 1
        assert [r.recommendation.zone for r in records.list_recommendations()] == ["zone3"]
        assert [r.recommendation.zone for r in records.list_recommendations("resolved")] == ["zone2"]

        # Back ten minutes later: the same problem flapping, its row reopened and not announced again.
        flap = _rec(msg="back again")
        flap.ts = first.ts + timedelta(minutes=10)
        assert records.upsert(flap) is False
        assert records.counts() == {"open": 2, "resolved": 0, "decisions": 0, "pending": 0}
        zone2 = next(r for r in records.list_recommendations() if r.recommendation.zone == "zone2")
        assert (zone2.recommendation.id, zone2.count, zone2.recommendation.message) == (first.id, 2, "back again")

        # Resolved again, and back only after the window: a new recommendation.
        assert records.resolve_absent([_rec(zone="zone3")]) == 1
        late = _rec()
        late.ts = flap.ts + timedelta(minutes=16)
        assert records.upsert(late) is True
        assert records.counts() == {"open": 2, "resolved": 1, "decisions": 0, "pending": 0}


def test_decisions_round_trip_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "data" / "agent.db"
    decision = Decision(trigger="start", mode=DecisionMode.DEGRADED, inputs={"zones": {}},
                        tool_calls=[{"tool": "modbus__read_points", "duration_ms": 3.2}], outputs=[_rec()],
                        outcome="1 recommendation(s)")
    with Records(path) as records:
        records.record_decision(decision)
        assert records.list_decisions() == [decision]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- runtime with a fake host ---------------------------------------------------------------------


class FakeHost:
    """Answers list_points/read_points for one zone; ``temp`` decides whether it is too warm."""

    def __init__(self) -> None:
        self.temp = 25.5
        self.tools = {n: ToolSpec(name=n, read_only=True) for n in ("modbus__list_points", "modbus__read_points")}
        self._journal: list[CallLog] = []

    async def call_tool(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        self._journal.append(CallLog("c1", name, 1.5, True))
        if name == "modbus__list_points":
            pts = [("zone1.temp", "Zone_Air_Temperature_Sensor"),
                   ("zone1.cool_sp", "Zone_Air_Cooling_Temperature_Setpoint"),
                   ("zone1.occ_mode", "Occupancy_Status")]
            return {"points": [{"id": pid, "brick": brick, "zone": "zone1"} for pid, brick in pts]}
        values = {"zone1.temp": self.temp, "zone1.cool_sp": 24.0, "zone1.occ_mode": True}
        return {"readings": [{"point_id": p, "value": values[p], "quality": "good"} for p in (args or {})["point_ids"]]}

    def drain_calls(self) -> list[CallLog]:
        calls, self._journal = self._journal, []
        return calls


@pytest.mark.anyio
async def test_each_cycle_records_a_decision_and_announces_only_new_findings(tmp_path: Path) -> None:
    host, lines = FakeHost(), []
    with Records(tmp_path / "agent.db") as records:
        runtime = Runtime(host, Planner(host.call_tool, ["modbus"]), records, echo=lines.append)
        first = await runtime.cycle("start")
        await runtime.cycle()
        assert len(lines) == 1
        assert lines[0].startswith("eaio agent: NEW warning comfort_violation zone1:")
        assert first.mode == DecisionMode.DEGRADED
        assert [c["tool"] for c in first.tool_calls] == ["modbus__list_points", "modbus__read_points"]
        assert all(c["duration_ms"] >= 0 for c in first.tool_calls)
        assert first.inputs["zones"]["zone1"]["zone1.temp"] == 25.5
        assert [r.kind for r in first.outputs] == ["comfort_violation"]
        [open_rec] = records.list_recommendations()
        assert open_rec.count == 2
        host.temp = 23.0  # comfortable again: the next complete cycle resolves it
        cleared = await runtime.cycle()
        assert "1 resolved" in cleared.outcome
        assert records.counts() == {"open": 0, "resolved": 1, "decisions": 3, "pending": 0}


@pytest.mark.anyio
async def test_run_cycles_until_the_duration_ends(tmp_path: Path) -> None:
    host = FakeHost()
    with Records(tmp_path / "agent.db") as records:
        runtime = Runtime(host, Planner(host.call_tool, ["modbus"]), records, echo=lambda _: None)
        assert await runtime.run(60, once=True, signals=False) == 1
        cycles = await runtime.run(0.05, duration=1.0, signals=False)
        assert cycles >= 2
        assert records.counts()["decisions"] == 1 + cycles


def test_new_line_mentions_the_saving() -> None:
    rec = _rec(kind="unoccupied_conditioning", zone="zone3", msg="nobody there")
    rec.estimated_saving_kw = 4.1
    assert format_new(rec) == "eaio agent: NEW warning unoccupied_conditioning zone3: nobody there (~4.1 kW)"


# -- the real thing: `eaio agent --once` against the virtual building ----------------------------


def test_agent_once_as_a_process_leaves_recommendations(site: SiteConfig, sim: Any) -> None:
    # The meter going offline is a finding the planner must make whatever the weather in the sim.
    sim.inject(SimFaultSpec(kind="offline", target="main-meter"))
    assert site.source is not None
    proc = subprocess.run(
        [sys.executable, "-m", "eaio", "agent", "--config", str(site.source), "--once"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eaio agent: NEW" in proc.stderr
    with Records(site.data_dir / "agent.db") as records:
        found = {(r.recommendation.kind, r.recommendation.zone): r for r in records.list_recommendations()}
        [decision] = records.list_decisions()
    assert ("data_quality", None) in found, proc.stderr[-3000:]
    assert "meter.power" in found[("data_quality", None)].recommendation.point_ids
    assert decision.trigger == "start"
    # One discovery and one read through the site's Modbus server. The default policy is
    # "approve": a setback the planner proposes is only checked (dry run) and queued, never written.
    tools = [c["tool"] for c in decision.tool_calls]
    assert tools[:2] == ["modbus__list_points", "modbus__read_points"]
    assert set(tools[2:]) <= {"modbus__write_point"}
    audit = read_audit(site.audit_path("modbus"))
    assert all(r.outcome == "dry_run" for r in audit), audit
    with Records(site.data_dir / "agent.db") as records:
        pending = records.list_approvals("pending")
    assert len(pending) == len(audit)


def test_agent_exits_1_with_one_line_when_a_server_cannot_start(site_file: Any) -> None:
    broken = {"name": "modbus", "command": [sys.executable, "-c", "import sys; sys.exit(1)"]}
    path = site_file(agent={"servers": [broken], "call_timeout_s": 5})
    proc = subprocess.run(
        [sys.executable, "-m", "eaio", "agent", "--config", str(path), "--once"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1
    assert "eaio agent: connection_failed: MCP server 'modbus' did not start or answer" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- event triggers ---------------------------------------------------------------------------------


def _event(kind: str, subject: str, **kw: Any) -> Event:
    return Event(kind=kind, site="demo-office", subject=subject, **kw)


def test_which_events_start_which_workflow() -> None:
    stale = _event("quality", "zone1.temp", quality="bad", reasons=["stale"])
    assert trigger_for(stale, None) == Trigger(("data_quality",), source="event", subject="zone1.temp",
                                               event=stale.model_dump(mode="json"))
    assert trigger_for(_event("quality", "zone1.temp", quality="uncertain", reasons=["flatline"]), None)
    assert trigger_for(_event("quality", "zone1.temp", quality="good", reasons=[]), None) is None  # recovered
    assert trigger_for(_event("quality", "zone1.temp", quality="bad", reasons=["range_high"]), None) is None
    offline = trigger_for(_event("fault", "zones-ctrl", code="device_offline", device_id="zones-ctrl"), None)
    assert offline is not None
    assert offline.name == "data_quality"
    assert offline.subject == "zones-ctrl"
    assert offline.label == "event:fault:zones-ctrl"
    assert trigger_for(_event("fault", "zones-ctrl", code="device_online"), None) is None
    peak = _event("demand", "meter.power.demand", value=95.0, unit="kW")
    assert trigger_for(peak, 80.0) is not None
    assert trigger_for(peak, 100.0) is None  # under the threshold
    assert trigger_for(peak, None) is None  # no threshold configured: demand events start nothing
    assert trigger_for(_event("reading", "zone1.temp", value=30.0), 1.0) is None


def test_bursts_run_once_per_window() -> None:
    dedup = Dedup(window_s=300)
    t = Trigger(("data_quality",), source="event", subject="zone1.temp")
    assert dedup.fresh(t, now=0.0) is True
    assert dedup.fresh(t, now=10.0) is False
    assert dedup.fresh(Trigger(("data_quality",), source="event", subject="zone2.temp"), now=10.0) is True
    assert dedup.fresh(t, now=301.0) is True  # the problem outlived the window: look again


def _publish(port: int, events: list[Event]) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-events-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for e in events:
            client.publish(e.topic, e.model_dump_json(), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.anyio
async def test_events_on_the_bus_run_the_right_workflow_once(
    site_file: Any, mosquitto: Any
) -> None:
    from eaio.agents.triggers import EventTriggers
    from eaio.config import load_config
    from eaio.sim.runner import SimThread
    from helpers import until

    cfg = load_config(site_file(events={"mqtt": {"port": mosquitto.port}}, agent={"demand_peak_kw": 50.0}))
    with SimThread(cfg) as sim:
        sim.inject(SimFaultSpec(kind="stuck", target="zone1.temp"))
        async with McpHost.from_config(cfg) as host, EventTriggers(cfg) as triggers:
            with Records(cfg.data_dir / "agent.db") as records:
                runtime = Runtime(host, Planner(host.call_tool, ["modbus"]), records, echo=lambda _: None,
                                  demand_peak_kw=50.0)
                with anyio.fail_after(10):
                    await triggers.subscribed.wait()
                burst = [_event("quality", "zone1.temp", quality="bad", reasons=["flatline"]) for _ in range(5)]
                ignored = [_event("quality", "zone2.temp", quality="good"),
                           _event("demand", "meter.power.demand", value=20.0)]
                marker = [_event("demand", "meter.power.demand", value=120.0)]
                await anyio.to_thread.run_sync(_publish, mosquitto.port, burst + ignored + marker)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(runtime.run, 600, signals=False, triggers=triggers))

                    async def both_ran() -> bool:
                        return len(records.list_decisions()) >= 3  # start cycle + two event runs

                    await until(both_ran, "the event workflows")
                    tg.cancel_scope.cancel()
                decisions = records.list_decisions()
    by_trigger = sorted(d.trigger for d in decisions)
    assert by_trigger == ["event:demand:meter.power.demand", "event:quality:zone1.temp", "start"]
    assert triggers.received == 8
    assert triggers.ignored == 6  # four repeats inside the window, a recovery, a demand under the threshold
    dq = next(d for d in decisions if d.trigger.startswith("event:quality"))
    assert dq.inputs["workflow"] == "data_quality"
    assert dq.outputs[0].kind == "sensor_fault"
    assert "flatline" in dq.outputs[0].message
    demand = next(d for d in decisions if d.trigger.startswith("event:demand"))
    assert demand.inputs["workflow"] == "demand"
    assert demand.inputs["event_kw"] == 120.0
