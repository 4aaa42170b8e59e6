"""The Modbus adapter on the wire: against the virtual building's Modbus faces, a closed port
and a silent server, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import DeviceError
from eaio.models import ModbusAddress, ModbusDevice, ModbusPoint, Quality
from eaio.models.point import REGISTER_COUNT
from eaio.protocol_adapters import build_adapter
from eaio.protocol_adapters.breaker import CircuitBreaker
from eaio.protocol_adapters.modbus import ModbusAdapter
from eaio.sim.runner import SimThread

pytestmark = pytest.mark.anyio

FAST = {"timeout_s": 0.3, "retries": 1, "breaker_failures": 2, "breaker_reset_s": 0.5}


def device(port: int, points: list[dict[str, Any]] | None = None, **conn: Any) -> ModbusDevice:
    raw = {"id": "dev", "protocol": "modbus", "connection": {"port": port, **FAST, **conn}}
    return ModbusDevice.model_validate({**raw, "points": points or [
        {"id": "dev.a", "unit": "degC", "address": {"register": 0, "type": "float32"}},
        {"id": "dev.b", "address": {"register": 2}},
        {"id": "dev.c", "address": {"table": "coil", "register": 0, "type": "bool"}},
    ]})


async def poll(check: Callable[[], Any], within_s: float = 10.0) -> Any:
    """Await ``check()`` (sync or async) until it is truthy; fail after ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that accepts and never answers: a wedged device. Yields (port, [connections])."""
    accepted = [0]
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writers.append(writer)
        while await reader.read(1024):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        for writer in writers:  # 3.11's server.close() leaves accepted connections open
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


# --- no device needed --------------------------------------------------------------------


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=lambda: now[0])
    breaker.failure()
    assert (breaker.state, breaker.allow()) == ("closed", True)
    breaker.failure()
    assert (breaker.state, breaker.allow(), breaker.retry_in()) == ("open", False, 5.0)
    now[0] = 5.0
    assert (breaker.state, breaker.allow()) == ("half_open", True)
    breaker.failure()  # the trial failed: open again for a full reset period
    assert (breaker.state, breaker.retry_in()) == ("open", 5.0)
    now[0] = 10.0
    breaker.success()
    assert (breaker.state, breaker.count) == ("closed", 0)


def test_build_adapter_gives_a_modbus_adapter() -> None:
    adapter = build_adapter("modbus", [device(1)])
    assert isinstance(adapter, ModbusAdapter)
    assert [p.id for p in adapter.points()] == ["dev.a", "dev.b", "dev.c"]
    assert adapter.point("dev.b") is not None
    assert adapter.point("nope") is None
    assert adapter.health()[0] == {
        "device_id": "dev", "address": "127.0.0.1:1", "online": None, "last_error": None,
        "requests": 0, "failures": 0, "breaker": "closed", "last_ok": None,
    }


async def test_arguments_are_checked_before_any_io() -> None:
    async with ModbusAdapter([device(free_port())]) as adapter:
        input_pt = ModbusPoint(id="dev.in", device_id="dev", address=ModbusAddress(table="input", register=1))
        cases: list[tuple[Any, str]] = [
            (adapter.write(ModbusPoint(id="x.y", address=ModbusAddress(register=1)), 1), "unknown_point"),
            (adapter.write(input_pt, 1), "not_writable"),
            (adapter.write(adapter.point("dev.b"), 70000), "invalid_argument"),  # uint16
            (adapter.write(adapter.point("dev.b"), "warm"), "invalid_argument"),
            (adapter.write(adapter.point("dev.c"), "on"), "invalid_argument"),  # a coil
            (adapter.write(adapter.point("dev.c"), 2), "invalid_argument"),
            (adapter.read_registers("nope", "holding", 0, 1), "invalid_argument"),
            (adapter.read_registers("dev", "flash", 0, 1), "invalid_argument"),
            (adapter.read_registers("dev", "holding", 0, 126), "invalid_argument"),
            (adapter.read_registers("dev", "coil", 65535, 2), "invalid_argument"),
        ]
        for call, code in cases:
            with pytest.raises(DeviceError) as err:
                await call
            assert err.value.code == code, str(err.value)
        with pytest.raises(NotImplementedError, match="poll"):
            await adapter.subscribe(adapter.points(), lambda readings: asyncio.sleep(0))
        assert adapter.request_count() == 0


async def test_closed_port_is_device_offline_and_the_breaker_opens() -> None:
    port = free_port()
    async with ModbusAdapter([device(port)]) as adapter:
        readings = await adapter.read(adapter.points())
        assert [r.point_id for r in readings] == ["dev.a", "dev.b", "dev.c"]
        for r in readings:
            assert (r.value, r.quality, r.reasons, r.device_id) == (None, Quality.BAD, ["comm_failure"], "dev")
            assert r.detail.startswith(f"device_offline: dev at 127.0.0.1:{port}: cannot connect")
        assert readings[0].unit == "degC"
        await adapter.read(adapter.points())
        health = adapter.health()[0]
        assert (health["online"], health["breaker"], health["failures"]) == (False, "open", 2)
        readings = await adapter.read(adapter.points())
        assert "circuit open" in readings[0].detail
        with pytest.raises(DeviceError) as err:
            await adapter.write(adapter.point("dev.b"), 3)
        assert (err.value.code, err.value.device) == ("device_offline", "dev")


async def test_silent_device_is_timeout_within_bound_and_costs_nothing_once_open() -> None:
    async with silent_server() as (port, accepted), ModbusAdapter([device(port)]) as adapter:
        started = time.monotonic()
        readings = await adapter.read(adapter.points())
        elapsed = time.monotonic() - started
        # A correctness bound (never minutes), not a speed claim.
        assert elapsed < 3 * FAST["timeout_s"] * (FAST["retries"] + 1)
        assert all(r.detail.startswith(f"timeout: dev at 127.0.0.1:{port}: no answer") for r in readings)
        # Two requests (holding, coil) were planned, but a dead device is not asked twice per read.
        assert adapter.request_count() == FAST["retries"] + 1
        await adapter.read(adapter.points())
        assert adapter.health()[0]["breaker"] == "open"
        sent, conns = adapter.request_count(), accepted[0]
        readings = await adapter.read(adapter.points())
        assert readings[0].detail.startswith("device_offline:")
        assert "circuit open" in readings[0].detail
        assert (adapter.request_count(), accepted[0]) == (sent, conns)
        with pytest.raises(DeviceError) as err:
            await adapter.read_registers("dev", "holding", 0, 1)
        assert err.value.code == "device_offline"
        # After breaker_reset_s one trial goes through (half-open) and fails again.
        await poll(lambda: adapter.health()[0]["breaker"] == "half_open")
        with pytest.raises(DeviceError) as err:
            await adapter.read_registers("dev", "holding", 0, 1)
        assert err.value.code == "timeout"
        assert adapter.health()[0]["breaker"] == "open"


# --- against the virtual building ---------------------------------------------------------


async def test_coalesced_reads_send_the_planned_requests_on_the_wire(site: SiteConfig, sim: Any) -> None:
    devices = site.devices_for("modbus")
    async with ModbusAdapter(devices) as adapter:
        # The first read also learns which devices refuse to read through unused registers.
        await adapter.read(adapter.points())
        for dev in devices:
            plans = adapter.plan(dev.points)
            sim.reset_counts()
            sent = adapter.request_count()
            readings = await adapter.read(dev.points)
            assert [r.point_id for r in readings] == [p.id for p in dev.points]
            bad = [(r.point_id, r.detail) for r in readings if r.quality is not Quality.GOOD]
            assert bad == []
            assert all(r.device_id == dev.id and r.value is not None for r in readings)
            assert sim.request_count(dev.id) == len(plans) == adapter.request_count() - sent
            assert len(plans) < len(dev.points)
        total_points = sum(len(d.points) for d in devices)
        assert len(adapter.plan(adapter.points())) <= total_points / 2
        health = {h["device_id"]: h for h in adapter.health()}
        assert all(h["online"] and h["breaker"] == "closed" and h["last_ok"] for h in health.values())


async def test_readings_carry_unit_device_and_response_time(site: SiteConfig, sim: Any) -> None:
    async with ModbusAdapter(site.devices_for("modbus")) as adapter:
        sp = adapter.point("ahu1.sat_sp")
        assert sp is not None
        await adapter.write(sp, 16.5)
        before = datetime.now(UTC)
        (reading, again) = await adapter.read([sp, sp])
        assert (reading.value, reading.unit, reading.device_id) == (16.5, sp.unit, "ahu1-ctrl")
        assert reading.ts.tzinfo is not None
        assert reading.ts >= before
        assert again == reading
        assert again is not reading
        assert sim.value("ahu1.sat_sp") == pytest.approx(16.5)


TYPE_VALUES = {"int16": -1234, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_000,
               "float32": 21.5, "float64": math.pi}
SECOND_VALUES = {"int16": 77, "uint16": 7, "int32": 2_000_000_000, "uint32": 1, "float32": -0.25, "float64": -1e300}
SCALED = [  # id, type, scale, offset, a value to write
    ("typed.int16_scaled", "int16", 0.1, -40.0, 21.7),
    ("typed.uint32_scaled", "uint32", 0.01, 0.0, 12345.67),
    ("typed.int32_offset", "int32", 0.001, 100.0, 99.125),
    ("typed.float32_scaled", "float32", 2.0, 1.0, 43.0),
]


def typed_points() -> list[dict[str, Any]]:
    """Writable holding registers of every type x word order x byte order, plus scaled ones,
    a coil, an input register and a discrete input."""
    wide = {"writable": True, "write_bounds": {"low": -1e301, "high": 1e301}}
    points: list[dict[str, Any]] = []
    register = 0
    for type_ in TYPE_VALUES:
        for word in ("big", "little"):
            for byte in ("big", "little"):
                address = {"register": register, "type": type_, "word_order": word, "byte_order": byte}
                points.append({"id": f"typed.{type_}_{word[0]}{byte[0]}", **wide, "address": address})
                register += REGISTER_COUNT[type_]
    for pid, type_, scale, offset, _ in SCALED:
        points.append({"id": pid, **wide, "address": {"register": register, "type": type_, "scale": scale,
                                                      "offset": offset, "word_order": "little"}})
        register += REGISTER_COUNT[type_]
    points.append({"id": "typed.coil", "writable": True, "address": {"table": "coil", "register": 3, "type": "bool"}})
    points.append({"id": "typed.input", "address": {"table": "input", "register": 5, "type": "float32",
                                                    "word_order": "little"}})
    points.append({"id": "typed.discrete", "address": {"table": "discrete", "register": 9, "type": "bool"}})
    return points


@pytest.fixture
def typed_sim(site_file: Callable[..., Path]) -> Iterator[tuple[SiteConfig, Any]]:
    from eaio.sim.runner import SimThread

    dev = {"id": "typed", "protocol": "modbus", "connection": {"port": free_port(), **FAST},
           "points": typed_points()}
    cfg = load_config(site_file(devices=[dev]))
    with SimThread(cfg) as running:
        yield cfg, running


async def test_every_type_and_order_round_trips(typed_sim: tuple[SiteConfig, Any]) -> None:
    cfg, sim = typed_sim
    async with ModbusAdapter(cfg.devices_for("modbus")) as adapter:
        for type_, value in TYPE_VALUES.items():
            for suffix in ("bb", "bl", "lb", "ll"):
                point = adapter.point(f"typed.{type_}_{suffix}")
                assert point is not None
                await adapter.write(point, value)
                assert sim.value(point.id) == pytest.approx(value), point.id
                sim.set_value(point.id, SECOND_VALUES[type_])
        for pid, _, _, _, value in SCALED:
            point = adapter.point(pid)
            assert point is not None
            await adapter.write(point, value)
            assert sim.value(pid) == pytest.approx(value, abs=point.address.scale / 2)
        await adapter.write(adapter.point("typed.coil"), True)
        assert sim.value("typed.coil") is True
        sim.set_value("typed.input", 18.25)
        sim.set_value("typed.discrete", True)
        readings = {r.point_id: r for r in await adapter.read(adapter.points())}
        assert [(pid, r.detail) for pid, r in readings.items() if r.quality is not Quality.GOOD] == []
        for type_, value in SECOND_VALUES.items():
            for suffix in ("bb", "bl", "lb", "ll"):
                got = readings[f"typed.{type_}_{suffix}"].value
                assert got == pytest.approx(value, rel=1e-7), f"{type_}_{suffix}"
                assert type(got) is (float if type_.startswith("float") else int)
        for pid, _, scale, _, value in SCALED:
            assert readings[pid].value == pytest.approx(value, abs=scale / 2), pid
        assert (readings["typed.coil"].value, readings["typed.discrete"].value) == (True, True)
        assert readings["typed.input"].value == 18.25


async def test_wire_images_of_float32_in_each_order(typed_sim: tuple[SiteConfig, Any]) -> None:
    # Pinned register images: a symmetric mistake in encode and decode cannot pass this.
    cfg, _sim = typed_sim
    async with ModbusAdapter(cfg.devices_for("modbus")) as adapter:
        expected = {"bb": [0x41AC, 0x0000], "bl": [0xAC41, 0x0000], "lb": [0x0000, 0x41AC], "ll": [0x0000, 0xAC41]}
        for suffix, image in expected.items():
            point = adapter.point(f"typed.float32_{suffix}")
            assert point is not None
            await adapter.write(point, 21.5)
            assert await adapter.read_registers("typed", "holding", point.address.register, 2) == image
        await adapter.write(adapter.point("typed.coil"), False)
        assert await adapter.read_registers("typed", "coil", 3, 1) == [False]


async def test_unconfigured_address_is_a_protocol_error_and_other_requests_go_on(
    site: SiteConfig, sim: Any
) -> None:
    async with ModbusAdapter(site.devices_for("modbus")) as adapter:
        with pytest.raises(DeviceError) as err:
            await adapter.read_registers("ahu1-ctrl", "holding", 60000, 4)
        assert err.value.code == "protocol_error"
        assert "illegal_address" in err.value.message
        ghost = ModbusPoint(id="ahu1.ghost", device_id="ahu1-ctrl", address=ModbusAddress(register=60000))
        sat_sp = adapter.point("ahu1.sat_sp")
        readings = await adapter.read([ghost, sat_sp])
        assert (readings[0].quality, readings[0].reasons) == (Quality.BAD, ["protocol_status:illegal_address"])
        assert readings[0].detail.startswith("protocol_error: ahu1-ctrl at 127.0.0.1:")
        assert (readings[1].quality, readings[1].value) == (Quality.GOOD, pytest.approx(sim.value("ahu1.sat_sp")))
        # A refusal is an answer: the device is online and its breaker stays closed.
        health = next(h for h in adapter.health() if h["device_id"] == "ahu1-ctrl")
        assert (health["online"], health["breaker"], health["failures"]) == (True, "closed", 0)


async def test_device_that_refuses_gaps_is_read_without_them(site_file: Callable[..., Path]) -> None:
    # zones-ctrl has unmapped registers between zones; a strict device refuses reads through
    # them, so the adapter must fall back to gap-free requests once and remember it.
    cfg = load_config(site_file(sim={"strict_gaps": ["zones-ctrl"], "control_port": None}))
    with SimThread(cfg) as strict:
        async with ModbusAdapter(cfg.devices_for("modbus")) as adapter:
            points = [p for p in adapter.points() if p.device_id == "zones-ctrl"]
            gappy = len(adapter.plan(points))
            first = await adapter.read(points)
            assert all(r.quality == Quality.GOOD for r in first), [r.detail for r in first if r.detail]
            strict.reset_counts()
            second = await adapter.read(points)
            assert all(r.quality == Quality.GOOD for r in second)
            assert strict.request_count("zones-ctrl") == len(adapter.plan(points)) > gappy
            for r in second:  # setpoints and schedules hold still, so they compare exactly
                if adapter.point(r.point_id).kind in ("setpoint", "schedule"):  # type: ignore[union-attr]
                    assert r.value == pytest.approx(strict.value(r.point_id))


async def test_offline_device_fails_within_bound_and_recovers(site_file: Callable[..., Path]) -> None:
    from eaio.sim.runner import SimThread

    path = site_file()
    raw = load_config(path).model_dump(mode="json")
    for dev in raw["devices"]:
        dev["connection"].update(FAST)
    cfg = load_config(path, devices=raw["devices"])
    dev = cfg.devices_for("modbus")[0]
    conn = dev.connection
    with SimThread(cfg) as sim:
        async with ModbusAdapter(cfg.devices_for("modbus")) as adapter:
            assert all(r.quality is Quality.GOOD for r in await adapter.read(dev.points))
            sim.inject(SimFaultSpec(kind="offline", target=dev.id))
            started = time.monotonic()
            readings = await adapter.read(adapter.points())
            elapsed = time.monotonic() - started
            assert elapsed < 3 * conn.timeout_s * (conn.retries + 1)  # a bound, not a speed claim
            mine = [r for r in readings if r.device_id == dev.id]
            others = [r for r in readings if r.device_id != dev.id]
            assert len(mine) == len(dev.points)
            for r in mine:
                assert (r.value, r.quality, r.reasons) == (None, Quality.BAD, ["comm_failure"])
                assert r.detail.startswith(f"device_offline: {dev.id} at {conn.host}:{conn.port}:")
            assert all(r.quality is Quality.GOOD for r in others)
            with pytest.raises(DeviceError) as err:
                await adapter.write(adapter.point("ahu1.sat_sp"), 15.0)
            assert err.value.code == "device_offline"
            sim.clear_faults(dev.id)

            async def recovered() -> bool:
                return all(r.quality is Quality.GOOD for r in await adapter.read(dev.points))

            await poll(recovered)
            health = next(h for h in adapter.health() if h["device_id"] == dev.id)
            assert (health["online"], health["breaker"]) == (True, "closed")
