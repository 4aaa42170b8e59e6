"""The sim's Modbus face over loopback, read and written with a raw pymodbus client."""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pymodbus.client import AsyncModbusTcpClient

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.protocol_adapters.modbus_codec import decode, encode
from eaio.sim.runner import SimThread, Simulation

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
    assert await c.connect()
    try:
        yield c
    finally:
        c.close()


async def until(cond: Callable[[], Any], limit_s: float = 5.0) -> None:
    """Poll a condition (sync or async) until it holds."""
    deadline = time.monotonic() + limit_s
    while True:
        result = cond()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.02)


async def accepts(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def read_point(c: AsyncModbusTcpClient, site: SiteConfig, point_id: str) -> Any:
    p = site.point(point_id)
    a = p.address
    read = {
        "holding": c.read_holding_registers, "input": c.read_input_registers,
        "coil": c.read_coils, "discrete": c.read_discrete_inputs,
    }[a.table]
    rr = await read(a.register, count=a.count, device_id=a.unit or 1)
    assert not rr.isError(), rr
    return decode(a, rr.bits if a.type == "bool" else rr.registers)


async def test_values_decode_to_what_the_physics_holds(site: SiteConfig, sim: SimThread) -> None:
    for dev in site.devices:
        async with client(sim.ports[dev.id]) as c:
            for p in dev.points:
                served = sim.value(p.id)
                got = await read_point(c, site, p.id)
                if p.is_binary:
                    assert got == served, p.id
                else:
                    # the physics may step between the two reads; one step moves little
                    assert got == pytest.approx(served, rel=0.02, abs=0.1 + 2 * p.address.scale), p.id


async def test_setpoint_write_reaches_the_physics(site: SiteConfig, sim: SimThread) -> None:
    async with client(sim.ports["zones-ctrl"]) as c:
        cool = site.point("zone1.cool_sp")
        rr = await c.write_register(cool.address.register, encode(cool.address, 26.5)[0], device_id=1)
        assert not rr.isError()
        assert sim.true_value("zone1.cool_sp") == 26.5
        assert await read_point(c, site, "zone1.cool_sp") == 26.5
    async with client(sim.ports["ahu1-ctrl"]) as c:
        assert not (await c.write_coil(0, False, device_id=1)).isError()
        await until(lambda: sim.value("ahu1.fan_speed") == 0.0)
        assert sim.value("ahu1.fan_status") is False
        sat_sp = site.point("ahu1.sat_sp")
        await c.write_registers(0, encode(sat_sp.address, 14.5), device_id=1)
        assert sim.true_value("ahu1.sat_sp") == 14.5


async def test_request_count_counts_requests_on_the_wire(sim: SimThread) -> None:
    sim.reset_counts()
    async with client(sim.ports["plant-ctrl"]) as c:
        for _ in range(3):
            await c.read_input_registers(0, count=4, device_id=1)
        await c.read_input_registers(40, count=1, device_id=1)  # refused requests count too
    assert sim.request_count("plant-ctrl") == 4
    assert sim.request_count("main-meter") == 0


async def test_gaps_read_as_zero_and_outside_the_map_is_illegal(sim: SimThread) -> None:
    async with client(sim.ports["zones-ctrl"]) as c:
        rr = await c.read_input_registers(0, count=12, device_id=1)  # zone1 block, a gap, zone2.temp
        assert not rr.isError()
        assert rr.registers[4:10] == [0] * 6  # unmapped registers inside the table's block
        rr = await c.read_discrete_inputs(0, count=3, device_id=1)  # bit 2 belongs to nobody: reads False
        assert not rr.isError()
        assert rr.bits[2] is False
        rr = await c.read_input_registers(30, count=1, device_id=1)  # past the last mapped register
        assert rr.isError()
        assert rr.exception_code == 2
        rr = await c.write_register(5, 1, device_id=1)  # a write must land on a mapped register
        assert rr.isError()
        assert rr.exception_code == 2


async def test_strict_device_refuses_reads_through_gaps(site_file: Callable[..., Path]) -> None:
    cfg = load_config(site_file(sim={"strict_gaps": ["zones-ctrl"], "control_port": None}))
    with SimThread(cfg) as strict:
        async with client(strict.ports["zones-ctrl"]) as c:
            rr = await c.read_input_registers(4, count=1, device_id=1)  # between zone1.reheat and zone2.temp
            assert rr.isError()
            assert rr.exception_code == 2
            rr = await c.read_discrete_inputs(0, count=3, device_id=1)
            assert rr.isError()
            rr = await c.read_input_registers(0, count=4, device_id=1)  # a block of mapped ones is fine
            assert not rr.isError()


async def test_offline_drops_connections_and_recovers(sim: SimThread) -> None:
    port = sim.ports["plant-ctrl"]
    async with client(port) as c:
        sim.inject(SimFaultSpec(kind="offline", target="plant-ctrl"))
        await until(lambda: not c.connected)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sim.clear_faults("plant-ctrl")
    await until(lambda: accepts(port))
    async with client(port) as c:
        assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()


async def test_memory_points_round_trip_every_type(site_file: Callable[..., Path], tmp_path: Path) -> None:
    extra = [
        {"id": f"mem.{t}", "address": {"table": "holding", "register": 100 + 4 * i, "type": t,
                                       "word_order": "little", "scale": 0.5 if t == "int32" else 1.0}}
        for i, t in enumerate(["int16", "uint16", "int32", "uint32", "float32", "float64"])
    ] + [{"id": "mem.coil", "address": {"table": "coil", "register": 50, "type": "bool"}}]
    base = load_config(site_file())
    devices = [d.model_dump(mode="json") for d in base.devices]
    for d in devices:
        for p in d["points"]:
            p.pop("device_id", None)
    devices[0]["points"] += extra
    cfg = load_config(site_file(devices=devices))
    values = {"mem.int16": -123, "mem.uint16": 65000, "mem.int32": -1234.5, "mem.uint32": 4_000_000_000,
              "mem.float32": 1.5, "mem.float64": math.pi, "mem.coil": True}
    async with Simulation(cfg) as sim, client(sim.ports["ahu1-ctrl"]) as c:
        for pid, value in values.items():
            a = cfg.point(pid).address
            assert await read_point(c, cfg, pid) == (False if a.type == "bool" else 0)  # plain memory starts at 0
            if a.type == "bool":
                await c.write_coil(a.register, value, device_id=1)
            else:
                await c.write_registers(a.register, encode(a, value), device_id=1)
            assert await read_point(c, cfg, pid) == value
            assert sim.value(pid) == value


async def test_unknown_unit_gets_a_gateway_exception(sim: SimThread) -> None:
    async with client(sim.ports["main-meter"]) as c:
        rr = await c.read_input_registers(0, count=2, device_id=7)
        assert rr.isError()
        assert rr.exception_code == 11


async def test_scheduled_offline_fault_from_the_site_file(site_file: Callable[..., Path]) -> None:
    fault = {"kind": "offline", "target": "main-meter", "start_s": 600, "duration_s": 300}
    cfg = load_config(site_file(sim={"faults": [fault], "speed": 1}))
    async with Simulation(cfg) as sim:
        port = sim.ports["main-meter"]
        async with client(port) as c:
            sim.advance(600)  # the fault strikes
            await until(lambda: not c.connected)
        sim.advance(300)  # and ends
        await until(lambda: accepts(port))
        async with client(port) as c:  # back on the same port
            assert not (await c.read_input_registers(0, count=4, device_id=1)).isError()
