"""The BACnet MCP server on the wire: a real `eaio serve bacnet` child against the sim's BACnet
face (a bacpypes3 device on 127.0.0.1), driven by the real `mcp` Client over stdio.

The device listens on a free UDP port that ``site_file`` picks, not on BACnet's 47808: test
modules run in parallel (and next to a running demo), and two devices cannot share one port on one
address, so a fixed port would make them fail each other. 47808 itself is exercised by
test_bacnet_netns, inside private network namespaces where nothing else can hold it."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from conftest import free_port
from eaio.config import SiteConfig, load_config
from eaio.models import WriteOutcome
from eaio.servers import CORE_TOOLS, ToolName
from eaio.servers.audit import read_audit
from eaio.sim.runner import SimThread
from helpers import call, error_of, eventually, serve_http, stdio_session

pytestmark = pytest.mark.anyio

BACNET_EXTRAS = {ToolName.WHO_IS, ToolName.LIST_OBJECTS, ToolName.READ_PROPERTY, ToolName.READ_PRIORITY_ARRAY,
                 ToolName.RELINQUISH}


@pytest.fixture
def bac_site(site_file: Callable[..., Path]) -> SiteConfig:
    """The demo site with its BACnet controller; a short APDU timeout so a dead device fails fast."""
    path = site_file(bacnet=True)
    cfg = load_config(path)
    raw = cfg.model_dump(mode="json", exclude={"source"})
    for dev in raw["devices"]:
        if dev["protocol"] == "bacnet":
            dev["connection"].update({"timeout_s": 0.5, "retries": 0, "breaker_reset_s": 0.5})
            for p in dev["points"]:
                p.pop("device_id", None)
        else:
            for p in dev["points"]:
                p.pop("device_id", None)
    path.write_text(json.dumps(raw))
    return load_config(path)


@pytest.fixture
def building(bac_site: SiteConfig) -> Iterator[SimThread]:
    with SimThread(bac_site) as sim:
        yield sim


async def priorities(client: Any, point_id: str) -> dict[int, Any]:
    pa = await call(client, "read_priority_array", {"point_id": point_id})
    return {s["priority"]: s["value"] for s in pa["priorities"]}


async def test_tools_discovery_objects_and_raw_properties(bac_site: SiteConfig, building: SimThread) -> None:
    device = bac_site.devices_for("bacnet")[0]
    async with stdio_session(bac_site, "bacnet") as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert names == {t.value for t in CORE_TOOLS} | {t.value for t in BACNET_EXTRAS}
        found = await call(c, "who_is", {"address": device.connection.address, "timeout_s": 2})
        assert [(d["device_instance"], d["device_id"]) for d in found["devices"]] == [(1004, "zone4-vav")]
        objects = await call(c, "list_objects", {"device_id": "zone4-vav"})
        by_point = {o["point_id"]: o["object_id"] for o in objects["objects"] if o["point_id"]}
        assert by_point == {p.id: p.address.object_id for p in device.points}
        assert any(o["type"] == "device" for o in objects["objects"])
        pv = await call(c, "read_property", {"device_id": "zone4-vav", "object_id": "analog-input,1",
                                             "property": "present-value"})
        assert pv["value"] == pytest.approx(building.value("zone4.temp"), abs=0.05)
        units = await call(c, "read_property", {"device_id": "zone4-vav", "object_id": "analog-input,1",
                                                "property": "units"})
        assert units["value"] == "degrees-celsius"
        readings = await call(c, "read_points", {"point_ids": ["zone4.temp", "zone4.occ", "zone4.cool_sp"]})
        assert [r["quality"] for r in readings["readings"]] == ["good"] * 3
        assert readings["readings"][1]["value"] is building.value("zone4.occ")
        for args, code in [
            ({"object_id": "analog-input,99", "property": "present-value"}, "invalid_argument"),
            ({"object_id": "analog-input,1", "property": "file-size"}, "invalid_argument"),
            ({"object_id": "analog-input", "property": "present-value"}, "invalid_argument"),
            ({"object_id": "analog-input,1", "property": "Present Value"}, "invalid_argument"),
        ]:
            text = await error_of(c, "read_property", {"device_id": "zone4-vav", **args})
            assert text.startswith(f"{code}: "), text
        assert (await error_of(c, "list_objects", {"device_id": "nope"})).startswith("unknown_device: ")


async def test_writes_at_a_priority_and_the_timed_relinquish(bac_site: SiteConfig, building: SimThread) -> None:
    before = building.value("zone4.cool_sp")
    async with stdio_session(bac_site, "bacnet") as c:
        result = await call(c, "write_point", {"point_id": "zone4.cool_sp", "value": 25.5, "duration_s": 1.5,
                                               "reason": "pre-cool test"})
        assert result["outcome"] == "accepted"
        assert result["readback_value"] == pytest.approx(25.5)
        assert building.true_value("zone4.cool_sp") == pytest.approx(25.5)
        pa = await call(c, "read_priority_array", {"point_id": "zone4.cool_sp"})
        assert {s["priority"]: s["value"] for s in pa["priorities"]} == {8: pytest.approx(25.5)}
        assert pa["active_priority"] == 8
        assert pa["pending_relinquish"] is not None
        # When the duration ends the server relinquishes priority 8: the device's own value is back.
        await eventually(lambda: _empty(c, "zone4.cool_sp"), 10)
        assert building.true_value("zone4.cool_sp") == pytest.approx(before)
        health = await call(c, "server_health")
        assert health["pending_restores"] == []
    outcomes = [(r.point_id, r.outcome) for r in read_audit(bac_site.audit_path("bacnet"))]
    assert outcomes == [("zone4.cool_sp", WriteOutcome.ACCEPTED), ("zone4.cool_sp", WriteOutcome.RESTORED)]
    assert not bac_site.resolve("bacnet/overrides.json").exists() or json.loads(
        bac_site.resolve("bacnet/overrides.json").read_text()) == []


async def _empty(c: Any, point_id: str) -> bool:
    return await priorities(c, point_id) == {}


async def test_relinquish_tool_and_refusals(bac_site: SiteConfig, building: SimThread) -> None:
    before = building.value("zone4.heat_sp")
    async with stdio_session(bac_site, "bacnet") as c:
        await call(c, "write_point", {"point_id": "zone4.heat_sp", "value": 18.0})
        assert building.true_value("zone4.heat_sp") == pytest.approx(18.0)
        done = await call(c, "relinquish", {"point_id": "zone4.heat_sp", "reason": "back to schedule"})
        assert (done["priority"], done["outcome"]) == (8, "accepted")
        assert done["readback_value"] == pytest.approx(before)
        assert await priorities(c, "zone4.heat_sp") == {}
        for args, code in [
            ({"point_id": "zone4.heat_sp", "priority": 17}, "invalid_argument"),
            ({"point_id": "zone4.temp"}, "not_writable"),
            ({"point_id": "nope.x"}, "unknown_point"),
        ]:
            assert (await error_of(c, "relinquish", args)).startswith(f"{code}: ")
        assert (await error_of(c, "write_point", {"point_id": "zone4.cool_sp", "value": 40})).startswith(
            "out_of_bounds: ")
        assert (await error_of(c, "read_priority_array", {"point_id": "zone4.temp"})).startswith("invalid_argument: ")
    outcomes = [r.outcome for r in read_audit(bac_site.audit_path("bacnet"))]
    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.ACCEPTED, WriteOutcome.REFUSED, WriteOutcome.REFUSED,
                        WriteOutcome.REFUSED, WriteOutcome.REFUSED]


async def test_a_killed_server_still_relinquishes_after_restart(bac_site: SiteConfig, building: SimThread) -> None:
    before = building.value("zone4.cool_sp")
    book = bac_site.resolve("bacnet/overrides.json")
    port = free_port()
    with serve_http(bac_site, "bacnet", port) as proc:
        async with Client(f"http://127.0.0.1:{port}/mcp") as c:
            await call(c, "write_point", {"point_id": "zone4.cool_sp", "value": 26.0, "duration_s": 2})
            await call(c, "write_point", {"point_id": "zone4.occ_end", "value": 22, "duration_s": 3600})
            entries = {o["point_id"]: o["priority"] for o in json.loads(book.read_text())}
            assert entries == {"zone4.cool_sp": 8, "zone4.occ_end": 8}
            # Killed outright: no shutdown, so nothing is relinquished by this server.
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    assert building.true_value("zone4.cool_sp") == pytest.approx(26.0)
    await anyio.sleep(2.2)  # past the 2 s override while no server runs: what this test is about
    async with stdio_session(bac_site, "bacnet") as c:
        # The expired override is relinquished at start; the other one is scheduled again.
        assert await priorities(c, "zone4.cool_sp") == {}
        assert building.true_value("zone4.cool_sp") == pytest.approx(before)
        assert await priorities(c, "zone4.occ_end") == {8: 22}
        health = await call(c, "server_health")
        assert [p["point_id"] for p in health["pending_restores"]] == ["zone4.occ_end"]
    # ... and a clean stop relinquishes what is still pending.
    assert building.true_value("zone4.occ_end") == pytest.approx(19)
    restored = [r for r in read_audit(bac_site.audit_path("bacnet")) if r.outcome == WriteOutcome.RESTORED]
    assert [(r.point_id, "after a restart" in (r.reason or "")) for r in restored] == [
        ("zone4.cool_sp", True), ("zone4.occ_end", False)]
    assert json.loads(book.read_text()) == []


async def test_an_offline_device_is_a_clear_error(bac_site: SiteConfig, building: SimThread) -> None:
    from eaio.config import SimFaultSpec

    async with stdio_session(bac_site, "bacnet") as c:
        await call(c, "read_points", {"point_ids": ["zone4.temp"]})
        building.inject(SimFaultSpec(kind="offline", target="zone4-vav"))
        text = await error_of(c, "read_points", {"point_ids": ["zone4.temp", "zone4.damper"]})
        assert text.startswith("device_offline: "), text
        building.clear_faults("zone4-vav")
        await eventually(lambda: _reads(c), 15)


async def _reads(c: Any) -> bool:
    result = await c.call_tool("read_points", {"point_ids": ["zone4.temp"]})
    return not result.is_error


async def test_a_second_server_takes_a_free_port(bac_site: SiteConfig, building: SimThread) -> None:
    """Two servers of one site (the demo's and an MCP client's own): the second cannot have the
    configured UDP port and takes a free one; both reach the device."""
    async with stdio_session(bac_site, "bacnet") as first, stdio_session(bac_site, "bacnet") as second:
        for c in (first, second):
            result = await call(c, "read_points", {"point_ids": ["zone4.temp"]})
            assert result["readings"][0]["quality"] == "good"
            assert result["readings"][0]["value"] == pytest.approx(building.value("zone4.temp"), abs=0.05)
