"""Records (SQLite) and the periodic runtime; last, ``eaio agent --once`` as a real process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eaio.agents.base import ToolSpec
from eaio.agents.host import CallLog
from eaio.agents.planner import Planner
from eaio.agents.records import Records
from eaio.agents.runtime import Runtime, format_new
from eaio.config import SimFaultSpec, SiteConfig
from eaio.models import Decision, DecisionMode, Recommendation, Severity

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
        assert records.counts() == {"open": 3, "resolved": 0, "decisions": 0}


def test_findings_no_longer_seen_are_resolved_and_can_reopen(tmp_path: Path) -> None:
    with Records(tmp_path / "agent.db") as records:
        records.upsert(_rec())
        records.upsert(_rec(zone="zone3"))
        assert records.resolve_absent([_rec(zone="zone3")]) == 1
        assert [r.recommendation.zone for r in records.list_recommendations()] == ["zone3"]
        assert [r.recommendation.zone for r in records.list_recommendations("resolved")] == ["zone2"]
        assert records.upsert(_rec()) is True  # it came back: a new open recommendation
        assert records.counts() == {"open": 2, "resolved": 1, "decisions": 0}


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
        assert records.counts() == {"open": 0, "resolved": 1, "decisions": 3}


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
    # One discovery and one read through the site's Modbus server; nothing else (v0 never writes).
    assert {c["tool"] for c in decision.tool_calls} == {"modbus__list_points", "modbus__read_points"}


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
