"""One decision cycle without an LLM for a 50-point site (target: p50/p95 <= 200 ms).

The site is the demo building's Modbus part (46 points) plus a 4-point controller, served by
the sim in a child process and by ``eaio serve modbus`` over stdio. A cycle is what the
scheduled agent does (``Runtime.cycle``: list_points, ONE read_points, the comfort and energy
rules, the forecast, the approval policy for a setback, the Decision written to SQLite).

The raw figure is the same tool calls (list_points, then read_points of the same ids) made
directly with the mcp Client on a second server child in the same run: the ratio is what the
agent adds on top of the MCP round trips.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters

from eaio.agents.approvals import ApprovalPolicy
from eaio.agents.host import McpHost
from eaio.agents.planner import Planner
from eaio.agents.records import Records
from eaio.agents.runtime import Runtime, agent_db_path
from eaio.config import load_config

from .common import EXAMPLE, percentile, scattered_device, sim_process, tempdir, write_site

N_POINTS = 50
CYCLES = 150
WARMUP = 10


def _devices() -> list[dict[str, Any]]:
    import yaml

    demo = [d for d in yaml.safe_load(EXAMPLE.read_text())["devices"] if d["protocol"] == "modbus"]
    extra = N_POINTS - sum(len(d["points"]) for d in demo)
    return demo + ([scattered_device(extra, 32)] if extra > 0 else [])


async def _cycles(site: str) -> tuple[list[float], list[str], int]:
    cfg = load_config(site)
    times: list[float] = []
    async with McpHost.from_config(cfg) as host:
        planner = Planner(host.call_tool, host.servers, comfort_band_c=cfg.agent.comfort_band_c)
        with Records(agent_db_path(cfg)) as records:
            runtime = Runtime(host, planner, records, echo=lambda _: None, policy=ApprovalPolicy.from_config(cfg))
            last = None
            for i in range(WARMUP + CYCLES):
                t0 = time.perf_counter()
                last = await runtime.cycle()
                if i >= WARMUP:
                    times.append(time.perf_counter() - t0)
            assert last is not None
            read = [pid for z in last.inputs["zones"].values() for pid in z] + ["meter.power"]
            points = len(planner.catalog)
    return times, read, points


async def _raw(site: str, read_ids: list[str]) -> list[float]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "eaio", "serve", "modbus", "--config", site],
                                   env=dict(os.environ, EAIO_LOG_LEVEL="WARNING"))
    times: list[float] = []
    async with Client(params) as client:
        for i in range(WARMUP + CYCLES):
            t0 = time.perf_counter()
            listed = await client.call_tool("list_points", {})
            got = await client.call_tool("read_points", {"point_ids": read_ids})
            dt = time.perf_counter() - t0
            assert not listed.is_error and not got.is_error, got.content
            if i >= WARMUP:
                times.append(dt)
    return times


def run() -> dict[str, Any]:
    with tempdir() as tmp:
        site = write_site(tmp, devices=_devices())
        os.environ.setdefault("EAIO_LOG_LEVEL", "WARNING")
        with sim_process(site):
            cycle, read_ids, points = asyncio.run(_cycles(str(site)))
            raw = asyncio.run(_raw(str(site), read_ids))
    p50, p95 = percentile(cycle, 50) * 1e3, percentile(cycle, 95) * 1e3
    raw50, raw95 = percentile(raw, 50) * 1e3, percentile(raw, 95) * 1e3
    return {
        "points": points,
        "points_read_per_cycle": len(read_ids),
        "cycles": len(cycle),
        "cycle_p50_ms": round(p50, 2),
        "cycle_p95_ms": round(p95, 2),
        "raw_mcp_calls_p50_ms": round(raw50, 2),
        "raw_mcp_calls_p95_ms": round(raw95, 2),
        "ratio_p50_to_raw": round(p50 / raw50, 2),
        "target_ms": 200,
        "target_met": p95 <= 200,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
