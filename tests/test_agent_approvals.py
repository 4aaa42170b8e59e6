"""The approval policy and flow: auto / approve (queued -> `eaio approve` / `eaio reject`) / deny,
expiry and unknown ids, against the sim through the real Modbus MCP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from eaio.agents.approvals import Actuator, ApprovalPolicy
from eaio.agents.host import McpHost
from eaio.agents.planner import Planner
from eaio.agents.records import ApprovalRow, Records
from eaio.agents.runtime import Runtime, agent_db_path
from eaio.agents.workflows import Trigger
from eaio.config import AgentServerRef, ApprovalRule, SiteConfig, load_config
from eaio.models import utcnow
from eaio.servers.audit import read_audit
from helpers import serve_http

ROOT = Path(__file__).resolve().parent.parent


def eaio(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eaio", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


@asynccontextmanager
async def opened(cfg: SiteConfig) -> AsyncIterator[tuple[Runtime, Records]]:
    async with McpHost.from_config(cfg) as host:
        planner = Planner(host.call_tool, ["modbus"], comfort_band_c=cfg.agent.comfort_band_c)
        with Records(agent_db_path(cfg)) as records:
            yield Runtime(host, planner, records, echo=lambda _: None, policy=ApprovalPolicy.from_config(cfg)), records


# -- the policy ------------------------------------------------------------------------------------


def test_first_matching_rule_decides_and_the_default_covers_the_rest() -> None:
    policy = ApprovalPolicy([
        ApprovalRule(points=["chiller.*"], policy="deny"),
        ApprovalRule(kinds=["setpoint"], brick=["Zone_Air_Cooling_Temperature_Setpoint"], policy="auto"),
        ApprovalRule(kinds=["setpoint"], policy="approve"),
        ApprovalRule(points=["zone*.occ_*"], kinds=["schedule"], policy="deny"),
    ], default="approve")
    cool = {"id": "zone2.cool_sp", "kind": "setpoint", "brick": "Zone_Air_Cooling_Temperature_Setpoint"}
    assert policy.decide(cool) == "auto"
    assert policy.decide({**cool, "id": "chiller.chwst_sp"}) == "deny"  # the first rule wins
    assert policy.decide({"id": "zone2.heat_sp", "kind": "setpoint", "brick": "X"}) == "approve"
    assert policy.decide({"id": "zone1.occ_end", "kind": "schedule"}) == "deny"
    assert policy.decide({"id": "ahu1.fan_cmd", "kind": "command"}) == "approve"  # no rule: the default
    assert policy.decide(None, point_id="chiller.enable") == "deny"  # unknown to the servers: globs still apply
    assert ApprovalPolicy([], "auto").decide(None) == "auto"


# -- approve: queued, then `eaio approve` through a long-running server ---------------------------


@pytest.mark.anyio
async def test_approve_queues_then_eaio_approve_writes_through_the_server(
    site_file: Callable[..., Path], tmp_path: Path
) -> None:
    from eaio.sim.runner import SimThread

    cfg = load_config(site_file())  # default_approval: approve
    port = cfg.server_settings("modbus").port
    url = f"http://127.0.0.1:{port}/mcp"
    # The server runs on its own (as in the demo): a temporary write outlives the approving command.
    cfg.agent.servers = [AgentServerRef(name="modbus", url=url)]
    env = {"EAIO_AGENT__SERVERS": json.dumps([{"name": "modbus", "url": url}])}
    assert cfg.source is not None
    conf = str(cfg.source)
    with SimThread(cfg) as sim, serve_http(cfg, "modbus", port):
        async with opened(cfg) as (runtime, records):
            decision, outcome = await runtime.handle(Trigger(("energy",), source="manual"))
            again, _ = await runtime.handle(Trigger(("energy",), source="manual"))
            [row] = records.list_approvals("pending")
        assert row.point_id == "zone3.cool_sp"
        assert row.value == 28.0
        assert row.decision_id == decision.id
        assert outcome.writes[0]["status"] == "pending"
        assert len(records_rows(cfg)) == 1  # the second cycle did not queue the same write again
        assert sim.value("zone3.cool_sp") != 28.0  # nothing written yet

        listed = eaio("approvals", "--config", conf, env=env)
        assert listed.returncode == 0, listed.stderr
        assert row.id in listed.stdout
        assert "zone3.cool_sp = 28.0 for 60 min" in listed.stdout

        done = eaio("approve", row.id, "--config", conf, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{row.id}: zone3.cool_sp = 28.0 written" in done.stdout
        assert sim.value("zone3.cool_sp") == pytest.approx(28.0)  # it reached the device, and stays

        twice = eaio("approve", row.id, "--config", conf, env=env)
        assert twice.returncode == 1
        assert "executed, not pending" in twice.stderr
    audit = read_audit(cfg.audit_path("modbus"))
    assert [r.outcome for r in audit if r.point_id == "zone3.cool_sp"][:2] == ["dry_run", "accepted"]
    accepted = next(r for r in audit if r.outcome == "accepted")
    assert accepted.requested_value == 28.0
    assert accepted.duration_s == 3600
    assert accepted.reason
    assert "approved by" in accepted.reason
    assert row.id in accepted.reason
    with Records(agent_db_path(cfg)) as records:
        settled = records.get_approval(row.id)
    assert settled is not None
    assert settled.status == "executed"
    assert settled.result is not None
    assert settled.result["outcome"] == "accepted"
    assert again.outcome.startswith("1 recommendation(s)")


def records_rows(cfg: SiteConfig) -> list[ApprovalRow]:
    with Records(agent_db_path(cfg)) as records:
        return records.list_approvals(None)


# -- reject, deny, refused by the server, expired, unknown ---------------------------------------


@pytest.mark.anyio
async def test_reject_marks_it_and_nothing_is_written(site: SiteConfig, sim: Any) -> None:
    async with opened(site) as (runtime, records):
        await runtime.handle(Trigger(("energy",), source="manual"))
        [row] = records.list_approvals("pending")
    conf = str(site.source)
    out = eaio("reject", row.id, "--reason", "meeting at 3 pm", "--config", conf, env={"LOGNAME": "sam"})
    assert out.returncode == 0, out.stderr
    assert "rejected" in out.stdout
    late = eaio("approve", row.id, "--config", conf)
    assert late.returncode == 1
    assert "rejected, not pending" in late.stderr
    [settled] = records_rows(site)
    assert (settled.status, settled.decided_by) == ("rejected", "sam")
    assert "meeting at 3 pm" in settled.note
    assert [r.outcome for r in read_audit(site.audit_path("modbus"))] == ["dry_run"]
    assert sim.value("zone3.cool_sp") != 28.0


@pytest.mark.anyio
async def test_deny_never_calls_the_server(site_file: Callable[..., Path]) -> None:
    from eaio.sim.runner import SimThread

    cfg = load_config(site_file(agent={"approvals": [{"kinds": ["setpoint"], "policy": "deny"}],
                                       "default_approval": "auto"}))
    with SimThread(cfg):
        async with opened(cfg) as (runtime, _records):
            decision, outcome = await runtime.handle(Trigger(("energy",), source="manual"))
    [w] = outcome.writes
    assert w["status"] == "denied"
    assert w["policy"] == "deny"
    assert not any(c["tool"].endswith("write_point") for c in decision.tool_calls)
    assert read_audit(cfg.audit_path("modbus")) == []
    assert records_rows(cfg)[0].note.startswith("writes to zone3.cool_sp are denied")


@pytest.mark.anyio
async def test_a_write_the_server_would_refuse_is_not_queued(site: SiteConfig, sim: Any) -> None:
    async with McpHost.from_config(site) as host:
        with Records(agent_db_path(site)) as records:
            actuator = Actuator(host, records, ApprovalPolicy([], "approve"))
            out = await actuator.request("modbus__write_point", {"point_id": "zone3.cool_sp", "value": 35.0})
            ro = await actuator.request("modbus__write_point", {"point_id": "zone3.temp", "value": 20.0})
            assert records.list_approvals("pending") == []
    assert out["status"] == "error"
    assert out["code"] == "out_of_bounds"
    assert ro["code"] == "not_writable"
    assert [r.status for r in records_rows(site)] == ["refused", "refused"]


def test_an_old_approval_expires_and_an_unknown_id_is_exit_2(site: SiteConfig) -> None:
    with Records(agent_db_path(site)) as records:
        records.add_approval(ApprovalRow(
            id="old0approval", created=utcnow() - timedelta(hours=2), tool="modbus__write_point",
            point_id="zone3.cool_sp", arguments={"point_id": "zone3.cool_sp", "value": 28.0}, policy="approve",
            status="pending"))
    conf = str(site.source)
    out = eaio("approve", "old0approval", "--config", conf)
    assert out.returncode == 1
    assert "expired" in out.stderr
    assert "120 min ago" in out.stderr
    [row] = records_rows(site)
    assert row.status == "expired"
    for cmd in ("approve", "reject"):
        unknown = eaio(cmd, "no-such-id", "--config", conf)
        assert unknown.returncode == 2
        assert "no approval with id 'no-such-id'" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    assert "no pending approvals" in eaio("approvals", "--config", conf).stdout


@pytest.mark.anyio
async def test_with_stdio_servers_a_temporary_write_is_handed_to_the_running_agent(
    site_file: Callable[..., Path],
) -> None:
    """The agent's default servers are its stdio children: a server `eaio approve` started itself
    would restore the temporary write as the command exits. So the request is marked approved and
    the running agent writes it through its own servers, where it stays for its duration."""
    from eaio.sim.runner import SimThread

    cfg = load_config(site_file())  # default servers (stdio children), default_approval: approve
    assert cfg.source is not None
    with SimThread(cfg) as sim:
        async with opened(cfg) as (runtime, records):
            await runtime.handle(Trigger(("energy",), source="manual"))
            [row] = records.list_approvals("pending")
            assert row.duration_s == 3600

            done = eaio("approve", row.id, "--config", str(cfg.source), env={"LOGNAME": "dana"})
            assert done.returncode == 0, done.stderr[-2000:]
            assert f"{row.id}: approved; the running agent (eaio agent) writes zone3.cool_sp = 28.0" in done.stdout
            assert sim.value("zone3.cool_sp") != 28.0  # not by the command itself
            approved = records.get_approval(row.id)
            assert approved is not None
            assert (approved.status, approved.decided_by) == ("approved", "dana")

            # The agent's loop (not --once) picks it up within a poll or two.
            await runtime.run(3600, duration=6, signals=False)
            settled = records.get_approval(row.id)
            assert settled is not None
            assert settled.status == "executed", settled.note
            assert settled.decided_by == "dana"  # the approver, not the agent that wrote it
            assert sim.value("zone3.cool_sp") == pytest.approx(28.0)  # written, and there while the agent runs
    accepted = [r for r in read_audit(cfg.audit_path("modbus")) if r.outcome == "accepted"]
    assert [(r.point_id, r.requested_value, r.duration_s) for r in accepted] == [("zone3.cool_sp", 28.0, 3600)]
    assert row.id in (accepted[0].reason or "")
    assert "approved by dana" in (accepted[0].reason or "")


def test_an_agent_db_from_before_decided_by_is_upgraded_on_open(tmp_path: Path) -> None:
    """agent.db outlives upgrades: a file whose approvals table has no decided_by column gets it,
    its old rows read with none, and new decisions record who made them."""
    import sqlite3

    path = tmp_path / "agent.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE approvals (id TEXT PRIMARY KEY, created TEXT NOT NULL, tool TEXT NOT NULL,"
                   " point_id TEXT, arguments TEXT NOT NULL, reason TEXT NOT NULL, decision_id TEXT,"
                   " policy TEXT NOT NULL, status TEXT NOT NULL, decided TEXT, note TEXT NOT NULL DEFAULT '',"
                   " result TEXT)")
        db.execute("INSERT INTO approvals VALUES ('old', ?, 'modbus__write_point', 'zone3.cool_sp', ?, 'warm',"
                   " NULL, 'approve', 'pending', NULL, '', NULL)",
                   (utcnow().isoformat(), json.dumps({"point_id": "zone3.cool_sp", "value": 26.0})))
    with Records(path) as records:
        [old] = records.list_approvals("pending")
        assert (old.id, old.decided_by, old.value) == ("old", None, 26.0)
        assert records.settle_approval("old", "rejected", note="rejected by ops", by="ops")
        settled = records.get_approval("old")
        assert settled is not None
        assert (settled.status, settled.note, settled.decided_by) == ("rejected", "rejected by ops", "ops")
        assert settled.decided is not None
