"""The MCP host's overhead per tool call over stdio: ``McpHost.call_tool("modbus__server_health")``
against the raw SDK ``mcp.Client.call_tool("server_health")``, each on its own ``eaio serve modbus``
child started from the same command, in the same run, calls interleaved in blocks so machine load
hits both alike. ``server_health`` does no device I/O: what is measured is the MCP path alone.

The host adds: the namespaced-name lookup, a correlation id (also sent in the request ``_meta``),
the per-call deadline, error mapping, the structured result and the call journal; and it holds a
``subscriptions/listen`` stream open on the same session (as it always does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from eaio.agents.host import McpHost

from .common import percentile, tempdir, write_site

CALLS = 400  # per side
BLOCK = 50  # calls per side per round, alternating
WARMUP = 30
TOOL = "server_health"


def _params(site: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "eaio", "serve", "modbus", "--config", site],
        env=dict(os.environ, EAIO_LOG_LEVEL="WARNING"),
    )


def _ping_server() -> MCPServer:
    server = MCPServer("ping")

    async def ping() -> str:
        return "pong"

    server.add_tool(ping, name="ping", annotations=ToolAnnotations(read_only_hint=True))
    return server


async def _interleaved(host: McpHost, raw: Client, server: str, tool: str) -> tuple[list[float], list[float]]:
    """Per-call seconds through the host and through the raw client, alternating blocks."""
    host_t: list[float] = []
    raw_t: list[float] = []

    async def via_host() -> None:
        await host.call_tool(f"{server}__{tool}")

    async def via_raw() -> None:
        result = await raw.call_tool(tool, {})
        assert not result.is_error, result.content

    for _ in range(WARMUP):
        await via_host()
        await via_raw()
    for _ in range(CALLS // BLOCK):
        for call, times in ((via_host, host_t), (via_raw, raw_t)):
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
    journal = host.drain_calls()
    assert all(c.ok for c in journal), [c for c in journal if not c.ok][:3]
    return host_t, raw_t


async def _measure(site: str) -> dict[str, Any]:
    async with McpHost({"modbus": _params(site)}, call_timeout_s=30) as host, Client(_params(site)) as raw:
        host_t, raw_t = await _interleaved(host, raw, "modbus", TOOL)
    # The host's own code, without the stdio wire's jitter: both against one in-process server.
    server = _ping_server()
    async with McpHost({"ping": server}) as host, Client(server) as raw:
        inproc_host, inproc_raw = await _interleaved(host, raw, "ping", "ping")
    ms = 1e3
    host_p50, raw_p50 = percentile(host_t, 50) * ms, percentile(raw_t, 50) * ms
    return {
        "tool": TOOL,
        "calls_each": len(host_t),
        "host_p50_ms": host_p50,
        "host_p95_ms": percentile(host_t, 95) * ms,
        "raw_p50_ms": raw_p50,
        "raw_p95_ms": percentile(raw_t, 95) * ms,
        "overhead_p50_ms": host_p50 - raw_p50,
        "ratio_p50": host_p50 / raw_p50,
        "inproc_host_p50_ms": percentile(inproc_host, 50) * ms,
        "inproc_raw_p50_ms": percentile(inproc_raw, 50) * ms,
        "inproc_overhead_p50_ms": (percentile(inproc_host, 50) - percentile(inproc_raw, 50)) * ms,
        "targets": {"overhead_p50_ms": "<= 3"},
    }


def run() -> dict[str, Any]:
    logging.getLogger("eaio").setLevel(logging.WARNING)  # per-call INFO lines are not part of the cost
    with tempdir() as tmp:
        site = write_site(tmp)
        return asyncio.run(_measure(str(site)))


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
