"""The Modbus MCP server on the wire: a real `eaio serve modbus` child against the sim.

stdio (the default transport) and streamable HTTP, driven by the real `mcp` Client. The sim
serves every device on 127.0.0.1 with private ports; each test has its own data dir (audit).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp import Client

from conftest import free_port
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.models import WriteOutcome
from eaio.protocol_adapters.modbus_codec import decode
from eaio.servers import CORE_TOOLS, ToolName
from eaio.servers.audit import read_audit
from helpers import call, error_of, eventually, serve_http, stdio_session

MODBUS_TOOLS = {t.value for t in CORE_TOOLS | {ToolName.READ_REGISTERS}}

pytestmark = pytest.mark.anyio


@pytest.fixture
def wire_site(site_file: Callable[..., Path]) -> SiteConfig:
    """The demo site with quick failure detection, so offline/recovery tests take a second, not ten."""
    path = site_file()
    raw = yaml.safe_load(path.read_text())
    for dev in raw["devices"]:
        dev["connection"].update(timeout_s=0.5, retries=0, breaker_failures=1, breaker_reset_s=0.3)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


@pytest.fixture
def wire_sim(wire_site: SiteConfig) -> Iterator[Any]:
    from eaio.sim.runner import SimThread

    with SimThread(wire_site) as running:
        yield running


# -- tools and schemas ---------------------------------------------------------------------------
async def test_tools_annotations_and_schemas(wire_sim: Any, wire_site: SiteConfig) -> None:
    async with stdio_session(wire_site, "modbus") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == MODBUS_TOOLS
    for name, tool in tools.items():
        ann = tool.annotations
        assert tool.description, name
        assert tool.output_schema, name
        assert tool.output_schema.get("type") == "object", name
        assert ann is not None
        assert ann.read_only_hint is (name != "write_point"), name
        assert ann.destructive_hint is (name == "write_point"), name
        assert ann.idempotent_hint is True, name
        assert ann.open_world_hint is (name in ("read_points", "write_point", "read_registers")), name
    assert set(tools["write_point"].input_schema["required"]) == {"point_id", "value"}
    assert "readback_value" in tools["write_point"].output_schema["properties"]
    assert "readings" in tools["read_points"].output_schema["properties"]


# -- reading -------------------------------------------------------------------------------------
async def test_list_and_read_real_values(wire_sim: Any, wire_site: SiteConfig) -> None:
    async with stdio_session(wire_site, "modbus") as c:
        devices = (await call(c, "list_devices"))["devices"]
        assert [d["id"] for d in devices] == ["ahu1-ctrl", "zones-ctrl", "plant-ctrl", "main-meter"]
        assert devices[0]["connection"] == f"127.0.0.1:{wire_sim.ports['ahu1-ctrl']} unit 1"

        zone1 = (await call(c, "list_points", {"zone": "zone1"}))["points"]
        assert {p["id"] for p in zone1} >= {"zone1.temp", "zone1.cool_sp", "zone1.heat_sp"}
        cool = next(p for p in zone1 if p["id"] == "zone1.cool_sp")
        assert cool["writable"] is True
        assert cool["write_bounds"] == {"low": 21.0, "high": 28.0}
        assert cool["device_id"] == "zones-ctrl"

        ids = ["zone1.cool_sp", "ahu1.sat_sp", "chiller.enable", "zone1.temp"]
        result = await call(c, "read_points", {"point_ids": ids})
        by_id = {r["point_id"]: r for r in result["readings"]}
        assert result["errors"] == []
        assert all(r["quality"] == "good" for r in by_id.values())
        for pid in ids[:3]:  # setpoints and commands hold still; compare exactly
            assert by_id[pid]["value"] == pytest.approx(wire_sim.value(pid), abs=1e-3), pid
        assert by_id["zone1.temp"]["unit"] == "degC"
        assert 10 < by_id["zone1.temp"]["value"] < 40

        assert (await error_of(c, "read_points", {"point_ids": ["zone1.temp", "zone9.temp"]})).startswith(
            "unknown_point: "
        )
        assert "zone9.temp" in await error_of(c, "read_points", {"point_ids": ["zone9.temp"]})
        assert (await error_of(c, "read_points", {"point_ids": []})).startswith("invalid_argument: ")


async def test_read_registers(wire_sim: Any, wire_site: SiteConfig) -> None:
    point = wire_site.point("ahu1.sat_sp")
    async with stdio_session(wire_site, "modbus") as c:
        raw = await call(c, "read_registers", {"device_id": "ahu1-ctrl", "table": "holding",
                                               "address": point.address.register, "count": 2})
        assert raw["unit"] == 1
        assert len(raw["values"]) == 2
        assert decode(point.address, raw["values"]) == pytest.approx(wire_sim.value("ahu1.sat_sp"), abs=1e-3)
        coil = await call(c, "read_registers", {"device_id": "plant-ctrl", "table": "coil", "address": 0, "count": 1})
        assert coil["values"] == [wire_sim.value("chiller.enable")]

        bad = {"device_id": "ahu1-ctrl", "table": "holding", "address": 0}
        assert (await error_of(c, "read_registers", {**bad, "count": 126})).startswith("invalid_argument: ")
        assert (await error_of(c, "read_registers", {**bad, "address": 65530, "count": 10})).startswith(
            "invalid_argument: "
        )
        assert (await error_of(c, "read_registers", {**bad, "table": "flash", "count": 1})).startswith(
            "invalid_argument: "
        )
        assert (await error_of(c, "read_registers", {**bad, "device_id": "nope", "count": 1})).startswith(
            "unknown_device: "
        )


# -- writing -------------------------------------------------------------------------------------
async def test_write_guards_and_audit(wire_sim: Any, wire_site: SiteConfig) -> None:
    before = wire_sim.value("zone1.cool_sp")
    async with stdio_session(wire_site, "modbus") as c:
        assert (await error_of(c, "write_point", {"point_id": "zone1.temp", "value": 22})).startswith("not_writable: ")
        assert (await error_of(c, "write_point", {"point_id": "zone1.cool_sp", "value": 35})).startswith(
            "out_of_bounds: "
        )
        assert (await error_of(c, "write_point", {"point_id": "chiller.enable", "value": 2})).startswith(
            "out_of_bounds: "
        )
        assert (await error_of(c, "write_point", {"point_id": "zone9.cool_sp", "value": 24})).startswith(
            "unknown_point: "
        )
        dry = await call(c, "write_point", {"point_id": "zone1.cool_sp", "value": 26, "dry_run": True})
        assert dry["outcome"] == "dry_run"
        assert dry["previous_value"] == pytest.approx(before)
        assert wire_sim.value("zone1.cool_sp") == pytest.approx(before)  # nothing written

        done = await call(c, "write_point", {"point_id": "zone1.cool_sp", "value": 26.5, "reason": "test"})
        assert done["outcome"] == "accepted"
        assert done["readback_value"] == pytest.approx(26.5)
        assert wire_sim.value("zone1.cool_sp") == pytest.approx(26.5)

    records = read_audit(wire_site.audit_path("modbus"))
    assert [(r.point_id, r.outcome, r.code) for r in records] == [
        ("zone1.temp", WriteOutcome.REFUSED, "not_writable"),
        ("zone1.cool_sp", WriteOutcome.REFUSED, "out_of_bounds"),
        ("chiller.enable", WriteOutcome.REFUSED, "out_of_bounds"),
        ("zone9.cool_sp", WriteOutcome.REFUSED, "unknown_point"),
        ("zone1.cool_sp", WriteOutcome.DRY_RUN, None),
        ("zone1.cool_sp", WriteOutcome.ACCEPTED, None),
    ]
    assert records[-1].reason == "test"
    assert records[-1].actor != ""


async def test_temporary_write_is_restored(wire_sim: Any, wire_site: SiteConfig) -> None:
    original = wire_sim.value("ahu1.sat_sp")
    audit = wire_site.audit_path("modbus")
    async with stdio_session(wire_site, "modbus") as c:
        result = await call(c, "write_point", {"point_id": "ahu1.sat_sp", "value": 18.5, "duration_s": 1})
        assert result["restore_at"] is not None
        assert wire_sim.value("ahu1.sat_sp") == pytest.approx(18.5)
        await eventually(lambda: abs(wire_sim.value("ahu1.sat_sp") - original) < 1e-3)
        await eventually(lambda: len(read_audit(audit)) == 2)
        health = await call(c, "server_health")
        assert health["pending_restores"] == []
        assert health["tool_calls"]["write_point"] == 1

        # A long override is still undone when the client goes away (the server shuts down).
        await call(c, "write_point", {"point_id": "chiller.enable", "value": False, "duration_s": 3600})
        assert wire_sim.value("chiller.enable") is False
    await eventually(lambda: wire_sim.value("chiller.enable") is True)
    outcomes = [r.outcome for r in read_audit(audit)]
    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.RESTORED, WriteOutcome.ACCEPTED, WriteOutcome.RESTORED]


async def test_sigterm_restores_before_exit_over_stdio(wire_sim: Any, wire_site: SiteConfig) -> None:
    import psutil

    original = wire_sim.value("zone3.cool_sp")
    async with stdio_session(wire_site, "modbus") as c:
        await call(c, "write_point", {"point_id": "zone3.cool_sp", "value": 27, "duration_s": 3600})
        assert wire_sim.value("zone3.cool_sp") == pytest.approx(27)
        (child,) = [p for p in psutil.Process().children(recursive=True) if str(wire_site.source) in p.cmdline()]
        child.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: child.wait(10))
    assert wire_sim.value("zone3.cool_sp") == pytest.approx(original)
    assert read_audit(wire_site.audit_path("modbus"))[-1].outcome == WriteOutcome.RESTORED


# -- a device goes offline -----------------------------------------------------------------------
async def test_device_offline_and_recovery(wire_sim: Any, wire_site: SiteConfig) -> None:
    ahu = ["ahu1.sat", "ahu1.sat_sp"]
    async with stdio_session(wire_site, "modbus") as c:
        await call(c, "read_points", {"point_ids": ahu})
        wire_sim.inject(SimFaultSpec(kind="offline", target="ahu1-ctrl"))

        async def offline_error() -> str | None:
            r = await c.call_tool("read_points", {"point_ids": ahu})
            return r.content[0].text if r.is_error else None

        assert (await eventually(offline_error)).startswith("device_offline: ")
        partial = await call(c, "read_points", {"point_ids": [*ahu, "zone1.temp"]})
        assert [e["device_id"] for e in partial["errors"]] == ["ahu1-ctrl"]
        assert partial["errors"][0]["code"] in ("device_offline", "timeout")
        assert partial["readings"][2]["quality"] == "good"
        assert (await error_of(c, "write_point", {"point_id": "ahu1.sat_sp", "value": 15})).startswith(
            ("device_offline: ", "timeout: ")
        )
        health = await call(c, "server_health")
        assert health["status"] == "degraded"

        wire_sim.clear_faults()

        async def recovered() -> bool:
            r = await c.call_tool("read_points", {"point_ids": ahu})
            return not r.is_error and all(x["quality"] == "good" for x in r.structured_content["readings"])

        await eventually(recovered)
    assert read_audit(wire_site.audit_path("modbus"))[-1].outcome == WriteOutcome.FAILED


# -- streamable HTTP -----------------------------------------------------------------------------
@pytest.fixture
def http_server(wire_sim: Any, wire_site: SiteConfig) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with serve_http(wire_site, "modbus", port) as proc:
        yield f"http://127.0.0.1:{port}/mcp", proc


async def test_http_transport(http_server: tuple[str, subprocess.Popen[bytes]], wire_sim: Any,
                              wire_site: SiteConfig) -> None:
    url, proc = http_server
    original = wire_sim.value("zone2.heat_sp")
    async with Client(url) as c:
        assert {t.name for t in (await c.list_tools()).tools} == MODBUS_TOOLS
        r = await call(c, "read_points", {"point_ids": ["zone2.heat_sp"]})
        assert r["readings"][0]["value"] == pytest.approx(original)
        await call(c, "write_point", {"point_id": "zone2.heat_sp", "value": 16, "duration_s": 3600})
        assert wire_sim.value("zone2.heat_sp") == pytest.approx(16)
        assert (await error_of(c, "write_point", {"point_id": "zone2.temp", "value": 1})).startswith("not_writable: ")

    # Stopping the server undoes the temporary override instead of leaving it in place.
    proc.send_signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(lambda: proc.wait(10))
    assert wire_sim.value("zone2.heat_sp") == pytest.approx(original)
    outcomes = [r.outcome for r in read_audit(wire_site.audit_path("modbus"))]
    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.REFUSED, WriteOutcome.RESTORED]
