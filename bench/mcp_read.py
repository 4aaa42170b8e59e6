"""(b) read_points of 100 points through the Modbus MCP server over stdio: p50/p95 over 200+
calls, three ways in the same run: with the SDK's Client (which checks every result against
the tool's output schema with jsonschema), as raw JSON-RPC lines on the same stdio wire, and
the same read done by the adapter in-process (the device round trips alone)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.types import LATEST_PROTOCOL_VERSION

from eaio.config import load_config
from eaio.protocol_adapters.modbus import ModbusAdapter

from .common import percentile, scattered_device, sim_process, tempdir, write_site

N_POINTS = 100
CALLS = 300
WARMUP = 20


async def _via_mcp(site: str, ids: list[str]) -> list[float]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "eaio", "serve", "modbus", "--config", site],
        env=dict(os.environ, EAIO_LOG_LEVEL="WARNING"),
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


async def _via_raw_stdio(site: str, ids: list[str]) -> list[float]:
    """The same calls as plain JSON-RPC lines on the server's stdin/stdout: what the server
    and the stdio wire cost, without the SDK client's jsonschema check of every result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eaio", "serve", "modbus", "--config", site,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        limit=2**24,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def rpc(msg_id: int | None, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
        if msg_id is not None:
            msg["id"] = msg_id
        stdin.write(json.dumps(msg).encode() + b"\n")
        await stdin.drain()
        if msg_id is None:
            return None
        while True:  # skip notifications the server may send first
            reply = json.loads(await stdout.readline())
            if reply.get("id") == msg_id:
                return reply

    try:
        init = await rpc(0, "initialize", {
            "protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "bench-raw", "version": "0"},
        })
        assert init and "result" in init, init
        await rpc(None, "notifications/initialized", {})
        times: list[float] = []
        for i in range(WARMUP + CALLS):
            t0 = time.perf_counter()
            reply = await rpc(i + 1, "tools/call", {"name": "read_points", "arguments": {"point_ids": ids}})
            dt = time.perf_counter() - t0
            assert reply and not reply["result"].get("isError"), reply
            if i >= WARMUP:
                times.append(dt)
        return times
    finally:
        stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()


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
            sdk_t = asyncio.run(_via_mcp(str(site), ids))
            wire_t = asyncio.run(_via_raw_stdio(str(site), ids))
            adapter_t = asyncio.run(_via_adapter(cfg))
        ms = {name: (percentile(t, 50) * 1e3, percentile(t, 95) * 1e3)
              for name, t in (("sdk", sdk_t), ("wire", wire_t), ("adapter", adapter_t))}
        return {
            "points": N_POINTS,
            "calls": CALLS,
            "p50_ms": ms["sdk"][0],
            "p95_ms": ms["sdk"][1],
            "wire_p50_ms": ms["wire"][0],
            "wire_p95_ms": ms["wire"][1],
            "adapter_p50_ms": ms["adapter"][0],
            "server_overhead_p50_ms": ms["wire"][0] - ms["adapter"][0],
            "sdk_client_validation_p50_ms": ms["sdk"][0] - ms["wire"][0],
            "targets": {"p50_ms": "<= 2"},
        }
