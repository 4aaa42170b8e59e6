"""(b) read_points of 100 points through the Modbus MCP server over stdio: p50/p95 over 200+
calls, with the same read done by the adapter in-process as the baseline in the same run."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters

from eaio.config import load_config
from eaio.protocol_adapters.modbus import ModbusAdapter

from .common import percentile, scattered_device, sim_process, tempdir, write_site

N_POINTS = 100
CALLS = 300
WARMUP = 20


async def _via_mcp(site: str, ids: list[str]) -> list[float]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "eaio", "serve", "modbus", "--config", site], env=dict(os.environ)
    )
    times: list[float] = []
    async with Client(params) as client:
        for i in range(WARMUP + CALLS):
            t0 = time.perf_counter()
            result = await client.call_tool("read_points", {"point_ids": ids})
            dt = time.perf_counter() - t0
            assert not result.is_error, result.content
            if i >= WARMUP:
                times.append(dt)
    return times


async def _via_adapter(cfg: Any) -> list[float]:
    times: list[float] = []
    async with ModbusAdapter(cfg.devices) as adapter:
        points = adapter.points()
        for i in range(WARMUP + CALLS):
            t0 = time.perf_counter()
            await adapter.read(points)
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
    return times


def run() -> dict[str, Any]:
    with tempdir() as tmp:
        device = scattered_device(N_POINTS, 400)
        site = write_site(tmp, devices=[device])
        cfg = load_config(site)
        ids = [p["id"] for p in device["points"]]
        with sim_process(site):
            mcp_t = asyncio.run(_via_mcp(str(site), ids))
            raw_t = asyncio.run(_via_adapter(cfg))
        p50, p95 = percentile(mcp_t, 50) * 1e3, percentile(mcp_t, 95) * 1e3
        a50 = percentile(raw_t, 50) * 1e3
        return {
            "points": N_POINTS,
            "calls": CALLS,
            "p50_ms": p50,
            "p95_ms": p95,
            "adapter_p50_ms": a50,
            "mcp_overhead_p50_ms": p50 - a50,
            "targets": {"p50_ms": "<= 2"},
        }
