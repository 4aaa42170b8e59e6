"""The core tool logic against an in-memory adapter: guards, audit, restores, and the MCP layer.

The wire tests (test_modbus_server.py) repeat the important paths over a real sim; these pin
the logic down exactly and run in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import Implementation

from eaio.config import SiteConfig
from eaio.errors import DeviceError, ValidationFailed
from eaio.models import Point, Reading, Value, WriteOutcome
from eaio.servers import CORE_TOOLS, CoreService, ToolName, build_server
from eaio.servers.audit import read_audit

MODBUS_TOOLS = {t.value for t in CORE_TOOLS | {ToolName.READ_REGISTERS}}

pytestmark = pytest.mark.anyio


class FakeAdapter:
    """Holds one value per point; a device can be taken offline."""

    protocol = "modbus"

    def __init__(self, cfg: SiteConfig) -> None:
        self._devices = cfg.devices_for("modbus")
        self.values: dict[str, Value] = {
            p.id: (False if p.is_binary else (p.write_bounds.low if p.write_bounds else 1.5))  # type: ignore[misc]
            for d in self._devices for p in d.points
        }
        self.offline: set[str] = set()
        self.silent: set[str] = set()  # points that have reported nothing yet (as a pushed point may)
        self.writes: list[tuple[str, Value]] = []
        self.entered = self.exited = 0

    async def __aenter__(self) -> FakeAdapter:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited += 1

    def devices(self) -> Sequence[Any]:
        return self._devices

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        out = []
        for p in points:
            if p.device_id in self.offline:
                out.append(Reading(point_id=p.id, value=None, unit=p.unit, quality="bad", reasons=["comm_failure"],
                                   device_id=p.device_id, detail=f"device_offline: {p.device_id} did not answer"))
            elif p.id in self.silent:
                out.append(Reading(point_id=p.id, value=None, unit=p.unit, quality="uncertain", reasons=["stale"],
                                   device_id=p.device_id, detail=f"no_data: nothing received for {p.id} yet"))
            else:
                out.append(Reading(point_id=p.id, value=self.values[p.id], unit=p.unit, device_id=p.device_id))
        return out

    async def write(self, point: Point, value: Value) -> None:
        if point.device_id in self.offline:
            raise DeviceError(f"{point.device_id} did not answer", code="device_offline", device=point.device_id)
        self.writes.append((point.id, value))
        self.values[point.id] = value

    async def subscribe(self, points: Sequence[Point], callback: Any) -> None:
        raise NotImplementedError

    def health(self) -> list[dict[str, object]]:
        return [{"device_id": d.id, "online": d.id not in self.offline, "last_error": None} for d in self._devices]

    async def read_registers(
        self, device_id: str, table: str, address: int, count: int, unit: int | None = None
    ) -> list[int]:
        return list(range(address, address + count))


@pytest.fixture
def fake(site: SiteConfig) -> FakeAdapter:
    return FakeAdapter(site)


@pytest.fixture
async def service(site: SiteConfig, fake: FakeAdapter) -> AsyncIterator[CoreService]:
    from eaio.servers.modbus import build_modbus_service

    async with build_modbus_service(site, fake) as svc:
        yield svc


async def wait_for(cond: Any, limit_s: float = 5.0) -> None:
    """Poll a condition another task makes true (a timer); fail after ``limit_s``."""
    with anyio.fail_after(limit_s):
        while not cond():  # noqa: ASYNC110 - the condition is plain state, there is no event to wait on
            await anyio.sleep(0.02)


# -- listing -------------------------------------------------------------------------------------
async def test_list_devices_and_points(service: CoreService, site: SiteConfig) -> None:
    devices = service.list_devices().devices
    assert [d.id for d in devices] == [d.id for d in site.devices]
    ahu = devices[0]
    assert ahu.connection == f"127.0.0.1:{site.devices[0].connection.port} unit 1"
    assert ahu.point_count == len(site.devices[0].points)
    assert ahu.online is True

    assert service.list_points().count == len(site.points())
    zone1 = service.list_points(zone="zone1").points
    assert zone1
    assert all(p.zone == "zone1" for p in zone1)
    sp = next(p for p in service.list_points(kind="setpoint").points if p.id == "ahu1.sat_sp")
    assert sp.writable
    assert sp.write_bounds is not None
    assert sp.write_bounds.high == 20
    assert sp.address["table"] == "holding"
    assert sp.brick == "Supply_Air_Temperature_Setpoint"


async def test_list_points_rejects_unknown_filters(service: CoreService) -> None:
    with pytest.raises(DeviceError) as e:
        service.list_points(device_id="nope")
    assert e.value.code == "unknown_device"
    with pytest.raises(ValidationFailed, match="kind 'warmth'"):
        service.list_points(kind="warmth")


# -- reading -------------------------------------------------------------------------------------
async def test_read_points(service: CoreService, fake: FakeAdapter) -> None:
    fake.values["ahu1.sat"] = 13.25
    result = await service.read_points(["ahu1.sat", "zone1.temp", "ahu1.sat"])
    assert [r.point_id for r in result.readings] == ["ahu1.sat", "zone1.temp"]
    assert result.readings[0].value == 13.25
    assert result.readings[0].unit == "degC"
    assert not result.errors


async def test_read_points_argument_errors(service: CoreService) -> None:
    with pytest.raises(DeviceError, match=r"nope\.a, nope\.b") as e:
        await service.read_points(["ahu1.sat", "nope.a", "nope.b"])
    assert e.value.code == "unknown_point"
    with pytest.raises(ValidationFailed):
        await service.read_points([])
    with pytest.raises(ValidationFailed, match="1 to 500"):
        await service.read_points([f"p{i}" for i in range(501)])


async def test_read_points_partial_and_total_failure(service: CoreService, fake: FakeAdapter) -> None:
    fake.offline.add("ahu1-ctrl")
    partial = await service.read_points(["ahu1.sat", "ahu1.rat", "zone1.temp"])
    assert [e.model_dump() for e in partial.errors] == [{
        "device_id": "ahu1-ctrl", "code": "device_offline", "message": "ahu1-ctrl did not answer",
        "point_ids": ["ahu1.sat", "ahu1.rat"],
    }]
    assert partial.readings[2].value is not None
    with pytest.raises(DeviceError) as e:
        await service.read_points(["ahu1.sat", "ahu1.rat"])
    assert e.value.code == "device_offline"


# -- writing -------------------------------------------------------------------------------------
async def test_write_guards_refuse_and_audit(service: CoreService, fake: FakeAdapter) -> None:
    cases = [
        ("ahu1.sat", 14.0, "not_writable"),
        ("ahu1.sat_sp", 25.0, "out_of_bounds"),
        ("ahu1.sat_sp", True, "invalid_argument"),
        ("chiller.enable", 2, "out_of_bounds"),
        ("nope.x", 1, "unknown_point"),
    ]
    for pid, value, code in cases:
        with pytest.raises(DeviceError) as e:
            await service.write_point(pid, value, actor="tester")
        assert e.value.code == code, pid
        assert "(audit " in str(e.value)
    assert fake.writes == []
    records = read_audit(service.audit.path)
    assert [(r.point_id, r.outcome, r.code, r.actor) for r in records] == [
        (pid, WriteOutcome.REFUSED, code, "tester") for pid, _, code in cases
    ]


async def test_dry_run_writes_nothing(service: CoreService, fake: FakeAdapter) -> None:
    result = await service.write_point("ahu1.sat_sp", 15.0, dry_run=True, reason="check")
    assert result.outcome == WriteOutcome.DRY_RUN
    assert result.previous_value == 12
    assert fake.writes == []
    assert fake.values["ahu1.sat_sp"] == 12
    (record,) = read_audit(service.audit.path)
    assert record.outcome == WriteOutcome.DRY_RUN
    assert record.reason == "check"
    assert record.id == result.audit_id


async def test_accepted_write_reads_back(service: CoreService, fake: FakeAdapter) -> None:
    result = await service.write_point("ahu1.sat_sp", 15.5, actor="tester")
    assert (result.outcome, result.previous_value, result.readback_value) == (WriteOutcome.ACCEPTED, 12, 15.5)
    assert result.restore_at is None
    on = await service.write_point("chiller.enable", 1)
    assert on.requested_value is True
    assert fake.values["chiller.enable"] is True
    assert [r.outcome for r in read_audit(service.audit.path)] == [WriteOutcome.ACCEPTED] * 2


async def test_write_to_offline_device_fails_and_is_audited(service: CoreService, fake: FakeAdapter) -> None:
    fake.offline.add("ahu1-ctrl")
    with pytest.raises(DeviceError) as e:
        await service.write_point("ahu1.sat_sp", 15.0)
    assert e.value.code == "device_offline"
    (record,) = read_audit(service.audit.path)
    assert record.outcome == WriteOutcome.FAILED
    assert record.code == "device_offline"


async def test_protocol_value_check_refuses_before_writing(site: SiteConfig, fake: FakeAdapter) -> None:
    def too_big(point: Point, value: Value) -> None:
        raise ValueError(f"{value!r} does not fit the register")

    async with CoreService(site, "modbus", fake, value_check=too_big) as svc:
        with pytest.raises(DeviceError) as e:
            await svc.write_point("ahu1.sat_sp", 15.0, dry_run=True)
    assert e.value.code == "out_of_bounds"
    assert "does not fit" in e.value.message
    assert fake.writes == []


async def test_temporary_write_is_restored(service: CoreService, fake: FakeAdapter) -> None:
    result = await service.write_point("ahu1.sat_sp", 16.0, duration_s=0.2)
    assert result.restore_at is not None
    assert fake.values["ahu1.sat_sp"] == 16.0
    assert [p.point_id for p in service.health().pending_restores] == ["ahu1.sat_sp"]
    await wait_for(lambda: fake.values["ahu1.sat_sp"] == 12)
    await wait_for(lambda: len(read_audit(service.audit.path)) == 2)
    restored = read_audit(service.audit.path)[-1]
    assert (restored.outcome, restored.requested_value, restored.previous_value) == (WriteOutcome.RESTORED, 12, 16.0)
    assert service.health().pending_restores == []


async def test_overlapping_overrides_restore_the_original(service: CoreService, fake: FakeAdapter) -> None:
    await service.write_point("ahu1.sat_sp", 16.0, duration_s=30)
    second = await service.write_point("ahu1.sat_sp", 17.0, duration_s=0.2)
    assert second.previous_value == 16.0  # what the device had; the restore goes further back
    await wait_for(lambda: fake.values["ahu1.sat_sp"] == 12)
    assert [w for w in fake.writes if w[0] == "ahu1.sat_sp"] == [
        ("ahu1.sat_sp", 16.0), ("ahu1.sat_sp", 17.0), ("ahu1.sat_sp", 12)
    ]


async def test_permanent_write_cancels_pending_restore(service: CoreService, fake: FakeAdapter) -> None:
    await service.write_point("ahu1.sat_sp", 16.0, duration_s=30)
    await service.write_point("ahu1.sat_sp", 18.0)
    assert service.health().pending_restores == []


async def test_shutdown_runs_pending_restores(site: SiteConfig, fake: FakeAdapter) -> None:
    from eaio.servers.modbus import build_modbus_service

    async with build_modbus_service(site, fake) as svc:
        await svc.write_point("zone1.cool_sp", 26.0, duration_s=3600)
        await svc.write_point("chiller.enable", True, duration_s=3600)
    assert fake.values["zone1.cool_sp"] == 21
    assert fake.values["chiller.enable"] is False
    assert fake.exited == 1
    outcomes = [r.outcome for r in read_audit(svc.audit.path)]
    assert outcomes == [WriteOutcome.ACCEPTED] * 2 + [WriteOutcome.RESTORED] * 2


async def test_failed_restore_is_audited(site: SiteConfig, fake: FakeAdapter) -> None:
    from eaio.servers.modbus import build_modbus_service

    async with build_modbus_service(site, fake) as svc:
        await svc.write_point("zone1.cool_sp", 26.0, duration_s=3600)
        fake.offline.add("zones-ctrl")
    last = read_audit(svc.audit.path)[-1]
    assert last.outcome == WriteOutcome.RESTORE_FAILED
    assert last.code == "device_offline"


# -- the MCP layer, in process -------------------------------------------------------------------
async def test_tools_over_mcp_in_process(site: SiteConfig, fake: FakeAdapter) -> None:
    server, svc = build_server("modbus", site, adapter=fake)
    async with Client(server, client_info=Implementation(name="pytest-agent", version="1")) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == MODBUS_TOOLS
        assert tools["write_point"].annotations.destructive_hint is True
        assert all(tools[n].annotations.read_only_hint for n in tools if n != "write_point")
        assert all(t.output_schema and t.description for t in tools.values())

        ok = await c.call_tool("read_points", {"point_ids": ["ahu1.sat_sp"]})
        assert not ok.is_error
        assert ok.structured_content["readings"][0]["value"] == 12

        bad = await c.call_tool("write_point", {"point_id": "ahu1.sat_sp", "value": 99})
        assert bad.is_error
        assert bad.content[0].text.startswith("out_of_bounds: ")
        none = await c.call_tool("read_points", {"point_ids": ["x.y"]})
        assert none.is_error
        assert none.content[0].text.startswith("unknown_point: ")
        regs = await c.call_tool("read_registers", {"device_id": "ahu1-ctrl", "table": "coil", "address": 0,
                                                    "count": 2001})
        assert regs.is_error
        assert regs.content[0].text.startswith("invalid_argument: ")

        typo = await c.call_tool("read_registers", {"device_id": "ahu1-ctrl", "table": "holding", "address": "x",
                                                    "count": 1})
        assert typo.is_error
        assert typo.content[0].text.startswith("invalid_argument: address: ")

        fake.read = _explode  # type: ignore[method-assign]
        crash = await c.call_tool("read_points", {"point_ids": ["ahu1.sat"]})
        assert crash.is_error
        assert crash.content[0].text.startswith("internal_error: ")

        health = await c.call_tool("server_health", {})
        assert health.structured_content["tool_calls"]["read_points"] == 3
    assert fake.entered == fake.exited == 1
    assert read_audit(svc.audit.path)[0].actor == "pytest-agent"


async def _explode(points: Sequence[Point]) -> list[Reading]:
    raise RuntimeError("boom")


async def test_timed_restore_failure_is_audited(service: CoreService, fake: FakeAdapter) -> None:
    await service.write_point("zone2.cool_sp", 25.0, duration_s=0.1)
    fake.offline.add("zones-ctrl")
    await wait_for(lambda: read_audit(service.audit.path)[-1].outcome == WriteOutcome.RESTORE_FAILED)
    assert fake.values["zone2.cool_sp"] == 25.0  # still overridden, and the audit says so
    assert service.health().pending_restores == []


async def test_a_point_that_never_reported_can_be_set_but_not_temporarily(
    service: CoreService, fake: FakeAdapter
) -> None:
    # A command-only point of a push protocol has no value to read first: a permanent write is
    # fine (nothing to restore), a temporary one is refused because it could not be undone.
    fake.silent.add("zone1.cool_sp")
    with pytest.raises(DeviceError) as info:
        await service.write_point("zone1.cool_sp", 24.0, duration_s=60)
    assert info.value.code == "invalid_argument"
    assert "nothing to restore" in info.value.message
    assert fake.writes == []
    result = await service.write_point("zone1.cool_sp", 24.0)
    assert result.outcome == WriteOutcome.ACCEPTED
    assert result.previous_value is None
    assert fake.writes == [("zone1.cool_sp", 24.0)]
    outcomes = [(r.outcome, r.code) for r in read_audit(service.audit.path)]
    assert outcomes == [(WriteOutcome.REFUSED, "invalid_argument"), (WriteOutcome.ACCEPTED, None)]

