"""(a) A scan of 1,000 scattered points on one device: EAIO's planned, coalesced read against
raw pymodbus reading the same points one request per point, in the same run, same sim."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from eaio.config import load_config
from eaio.protocol_adapters.modbus import ModbusAdapter

from .common import scattered_device, sim_process, tempdir, write_site

N_POINTS = 1000
SPAN = 5000  # points scattered over holding registers 0..4999 (a large controller's map)
ROUNDS = 5


async def _raw(host: str, port: int, registers: list[int]) -> tuple[float, int]:
    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
    await client.connect()
    try:
        t0 = time.perf_counter()
        for r in registers:
            rr = await client.read_holding_registers(r, count=1, device_id=1)
            assert not rr.isError(), rr
        return time.perf_counter() - t0, len(registers)
    finally:
        client.close()


async def _eaio(adapter: ModbusAdapter) -> tuple[float, int]:
    points = adapter.points()
    before = adapter.request_count()
    t0 = time.perf_counter()
    readings = await adapter.read(points)
    elapsed = time.perf_counter() - t0
    bad = [r for r in readings if r.value is None]
    assert not bad, bad[:3]
    return elapsed, adapter.request_count() - before


def run() -> dict[str, Any]:
    with tempdir() as tmp:
        device = scattered_device(N_POINTS, SPAN)
        site = write_site(tmp, devices=[device])
        cfg = load_config(site)
        with sim_process(site):
            registers = [p["address"]["register"] for p in device["points"]]
            port = device["connection"]["port"]

            async def both() -> dict[str, Any]:
                raw_t, eaio_t = [], []
                raw_n = eaio_n = 0
                async with ModbusAdapter(cfg.devices) as adapter:
                    await _eaio(adapter)  # connect and warm up outside the timing
                    for _ in range(ROUNDS):  # interleaved, so load on the machine hits both alike
                        t, raw_n = await _raw("127.0.0.1", port, registers)
                        raw_t.append(t)
                        t, eaio_n = await _eaio(adapter)
                        eaio_t.append(t)
                raw_best, eaio_best = min(raw_t), min(eaio_t)
                return {
                    "points": N_POINTS,
                    "span_registers": SPAN,
                    "raw_requests": raw_n,
                    "eaio_requests": eaio_n,
                    "request_ratio": raw_n / eaio_n,
                    "raw_s": raw_best,
                    "eaio_s": eaio_best,
                    "speedup": raw_best / eaio_best,
                    "raw_requests_per_s": raw_n / raw_best,
                    "targets": {"request_ratio": ">= 20", "speedup": ">= 10"},
                }

            return asyncio.run(both())
