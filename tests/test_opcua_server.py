"""The OPC-UA MCP server on the wire: a real `eaio serve opcua` child against the sim's OPC-UA
server (asyncua on 127.0.0.1), driven by the real `mcp` Client over stdio."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.models import WriteOutcome, utcnow
from eaio.servers import CORE_TOOLS, ToolName
from eaio.servers.audit import read_audit
from eaio.sim.runner import SimThread
from helpers import call, error_of, eventually, stdio_session

pytestmark = pytest.mark.anyio

OPCUA_EXTRAS = {ToolName.BROWSE, ToolName.READ_NODES, ToolName.READ_HISTORY, ToolName.SERVER_STATUS}
CHW = ["chw.dp", "chw.dp_sp", "chw.pump_cmd", "chw.pump_speed", "chw.flow", "chw.rt", "chw.pump_power"]


@pytest.fixture
def opc_site(site_file: Callable[..., Path]) -> SiteConfig:
    cfg = load_config(site_file(opcua=True))
    raw = cfg.model_dump(mode="json", exclude={"source"})
    raw["devices"] = [d for d in raw["devices"] if d["protocol"] == "opcua"]
    for dev in raw["devices"]:
        dev["connection"].update({"timeout_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5,
                                  "breaker_reset_s": 0.5})
        for p in dev["points"]:
            p.pop("device_id", None)
    assert cfg.source is not None
    cfg.source.write_text(json.dumps(raw))
    return load_config(cfg.source)


@pytest.fixture
def building(opc_site: SiteConfig) -> Iterator[SimThread]:
    with SimThread(opc_site) as sim:
        yield sim


async def test_tools_points_and_raw_nodes(opc_site: SiteConfig, building: SimThread) -> None:
    async with stdio_session(opc_site, "opcua") as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == {t.value for t in CORE_TOOLS} | {t.value for t in OPCUA_EXTRAS}
        readings = (await call(c, "read_points", {"point_ids": CHW}))["readings"]
        assert [r["quality"] for r in readings] == ["good"] * len(CHW)
        by_id = {r["point_id"]: r["value"] for r in readings}
        assert by_id["chw.pump_cmd"] is building.value("chw.pump_cmd")
        assert by_id["chw.dp_sp"] == pytest.approx(building.value("chw.dp_sp"))
        tree = await call(c, "browse", {"device_id": "plant-plc", "depth": 2})
        ids = {n["node_id"] for n in tree["nodes"]}
        assert "ns=2;s=ChwLoop" in ids
        assert {p.address.node_id for p in opc_site.points()} <= ids
        assert (await call(c, "browse", {"device_id": "plant-plc", "depth": 2, "limit": 1}))["truncated"] is True
        raw = await call(c, "read_nodes", {"device_id": "plant-plc",
                                           "node_ids": ["ns=2;s=ChwLoop.Flow", "ns=2;s=ChwLoop.Nope"]})
        flow, nope = raw["values"]
        assert flow["status"] == "Good"
        assert flow["value"] == pytest.approx(building.value("chw.flow"), rel=0.05)
        assert nope["status"] == "BadNodeIdUnknown"
        for args in ({"device_id": "plant-plc", "node_ids": ["ChwLoop.Flow"]},
                     {"device_id": "plant-plc", "node_ids": []}):
            assert (await error_of(c, "read_nodes", args)).startswith("invalid_argument: ")
        assert (await error_of(c, "browse", {"device_id": "plant-plc", "depth": 9})).startswith("invalid_argument: ")
        status = (await call(c, "server_status", {}))["servers"]
        assert [(s["device_id"], s["connected"]) for s in status] == [("plant-plc", True)]
        assert status[0]["state"] == "Running"


async def test_writes_are_coerced_guarded_and_restored(opc_site: SiteConfig, building: SimThread) -> None:
    before = building.value("chw.dp_sp")
    async with stdio_session(opc_site, "opcua") as c:
        done = await call(c, "write_point", {"point_id": "chw.dp_sp", "value": 80})  # an int for a Double node
        assert done["outcome"] == "accepted"
        assert done["readback_value"] == pytest.approx(80.0)
        assert building.true_value("chw.dp_sp") == pytest.approx(80.0)
        await call(c, "write_point", {"point_id": "chw.pump_cmd", "value": False, "duration_s": 1})
        assert building.true_value("chw.pump_cmd") is False
        await eventually(lambda: building.true_value("chw.pump_cmd") is True, 10)  # restored after 1 s
        assert (await error_of(c, "write_point", {"point_id": "chw.dp_sp", "value": 150})).startswith(
            "out_of_bounds: ")
        assert (await error_of(c, "write_point", {"point_id": "chw.flow", "value": 3})).startswith("not_writable: ")
        await call(c, "write_point", {"point_id": "chw.dp_sp", "value": before})
    outcomes = [r.outcome for r in read_audit(opc_site.audit_path("opcua"))]
    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.ACCEPTED, WriteOutcome.RESTORED, WriteOutcome.REFUSED,
                        WriteOutcome.REFUSED, WriteOutcome.ACCEPTED]


async def test_history_of_a_historized_point(opc_site: SiteConfig, building: SimThread) -> None:
    start = utcnow() - timedelta(minutes=5)
    async with stdio_session(opc_site, "opcua") as c:
        async def some() -> Any:
            got = await call(c, "read_history", {"point_id": "chw.rt", "start": start.isoformat(),
                                                 "end": (utcnow() + timedelta(minutes=1)).isoformat()})
            return got if got["count"] >= 3 else None

        history = await eventually(some, 15)
        assert history["node_id"] == "ns=2;s=ChwLoop.ReturnTemp"
        times = [v["ts"] for v in history["values"]]
        assert times == sorted(times)
        assert all(v["status"] == "Good" for v in history["values"])
        text = await error_of(c, "read_history", {"point_id": "chw.rt", "start": utcnow().isoformat(),
                                                  "end": start.isoformat()})
        assert text.startswith("invalid_argument: ")


async def test_a_stopped_server_is_device_offline_and_comes_back(opc_site: SiteConfig, building: SimThread) -> None:
    async with stdio_session(opc_site, "opcua") as c:
        await call(c, "read_points", {"point_ids": ["chw.flow"]})
        building.inject(SimFaultSpec(kind="offline", target="plant-plc"))

        async def offline() -> str | None:
            result = await c.call_tool("read_points", {"point_ids": ["chw.flow", "chw.rt"]})
            return result.content[0].text if result.is_error else None

        text = await eventually(offline, 15)
        assert text.startswith("device_offline: "), text
        building.clear_faults("plant-plc")

        async def back() -> bool:
            result = await c.call_tool("read_points", {"point_ids": ["chw.flow"]})
            return not result.is_error and result.structured_content["readings"][0]["quality"] == "good"

        await eventually(back, 20)
