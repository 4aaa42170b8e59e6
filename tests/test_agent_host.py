"""The MCP host: namespaced discovery, structured results, errors as EAIO errors.

Most tests use a small in-process MCPServer; the dead-server test runs a real stdio child that
exits; the last tests run the real ``eaio serve modbus`` child against the virtual building.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import StdioServerParameters
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from conftest import free_port
from eaio.agents.host import McpHost, error_from_text
from eaio.agents.planner import Planner
from eaio.config import AgentServerRef, SiteConfig
from eaio.errors import ConnectionFailed, DeviceError, ValidationFailed


class Echo(BaseModel):
    text: str


def _tiny_server() -> MCPServer:
    server = MCPServer("tiny")

    async def echo(text: str) -> Echo:
        return Echo(text=text)

    async def refuse(point_id: str) -> Echo:
        raise ToolError(f"not_writable: {point_id} is read-only")

    async def hang() -> Echo:
        await anyio.sleep(60)
        return Echo(text="late")

    server.add_tool(echo, name="echo", annotations=ToolAnnotations(read_only_hint=True))
    server.add_tool(refuse, name="refuse")
    server.add_tool(hang, name="hang")
    return server


@pytest.mark.anyio
async def test_tools_are_discovered_under_namespaced_names() -> None:
    async with McpHost({"tiny": _tiny_server()}) as host:
        assert set(host.tools) == {"tiny__echo", "tiny__refuse", "tiny__hang"}
        assert host.tools["tiny__echo"].read_only is True
        assert host.tools["tiny__refuse"].read_only is False
        assert host.tools["tiny__echo"].input_schema["required"] == ["text"]
        assert await host.call_tool("tiny__echo", {"text": "hi"}) == {"text": "hi"}
        calls = host.drain_calls()
        assert [(c.tool, c.ok) for c in calls] == [("tiny__echo", True)]
        assert calls[0].correlation_id
        assert calls[0].duration_ms >= 0
    assert host.tools == {}


@pytest.mark.anyio
async def test_errors_carry_the_tool_code() -> None:
    async with McpHost({"tiny": _tiny_server()}) as host:
        with pytest.raises(DeviceError) as err:
            await host.call_tool("tiny__refuse", {"point_id": "zone1.temp"})
        assert err.value.code == "not_writable"
        assert "read-only" in err.value.message
        with pytest.raises(ValidationFailed):
            await host.call_tool("tiny__echo", {"text": ["not", "a", "string"]})
        assert [c.code for c in host.drain_calls()] == ["not_writable", "invalid_argument"]


@pytest.mark.anyio
async def test_unknown_tool_is_refused_before_any_call() -> None:
    async with McpHost({"tiny": _tiny_server()}) as host:
        with pytest.raises(ValidationFailed, match="unknown tool 'tiny__nope'"):
            await host.call_tool("tiny__nope", {})
        with pytest.raises(ValidationFailed):
            await host.call_tool("echo", {"text": "no namespace"})
        assert host.drain_calls() == []


@pytest.mark.anyio
async def test_a_call_that_never_answers_times_out() -> None:
    async with McpHost({"tiny": _tiny_server()}, call_timeout_s=0.2) as host:
        with pytest.raises(ConnectionFailed) as err:
            await host.call_tool("tiny__hang", {})
        assert err.value.code == "timeout"


def test_error_text_parsing() -> None:
    err = error_from_text("Error executing tool read_points: device_offline: zones-ctrl did not answer")
    assert isinstance(err, DeviceError)
    assert (err.code, err.message) == ("device_offline", "zones-ctrl did not answer")
    assert isinstance(error_from_text("invalid_argument: point_ids is empty"), ValidationFailed)
    assert error_from_text("Error executing tool boom").code == "tool_error"


DYING_SERVER = """
import os
import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("dying")

async def die() -> str:
    os._exit(3)

async def ping() -> str:
    return "pong"

server.add_tool(die, name="die")
server.add_tool(ping, name="ping")
anyio.run(server.run_stdio_async)
"""


@pytest.mark.anyio
async def test_a_dead_server_is_a_connection_failure(tmp_path: Path) -> None:
    script = tmp_path / "dying.py"
    script.write_text(textwrap.dedent(DYING_SERVER))
    params = StdioServerParameters(command=sys.executable, args=[str(script)])
    async with McpHost({"dying": params}, call_timeout_s=10) as host:
        assert await host.call_tool("dying__ping", {}) == {"result": "pong"}
        with pytest.raises(ConnectionFailed):
            await host.call_tool("dying__die", {})
        with pytest.raises(ConnectionFailed):
            await host.call_tool("dying__ping", {})


@pytest.mark.anyio
async def test_a_server_that_cannot_start_is_a_connection_failure() -> None:
    params = StdioServerParameters(command=sys.executable, args=["-c", "import sys; sys.exit(1)"])
    with pytest.raises(ConnectionFailed, match="'broken'"):
        async with McpHost({"broken": params}, call_timeout_s=5):
            pass


class _RequireBearer:
    """ASGI wrapper: 401 unless the request carries the expected bearer token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()
        self.seen: list[bytes | None] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization")
            self.seen.append(auth)
            if auth != self.expected:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


@pytest.mark.anyio
async def test_http_server_with_a_bearer_token() -> None:
    app = _RequireBearer(_tiny_server().streamable_http_app(), "s3cret")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
                await anyio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            async with McpHost({"tiny": AgentServerRef(name="tiny", url=url, token="s3cret")}) as host:
                assert await host.call_tool("tiny__echo", {"text": "over http"}) == {"text": "over http"}
            with pytest.raises(ConnectionFailed):
                async with McpHost({"tiny": AgentServerRef(name="tiny", url=url, token="wrong")}, call_timeout_s=5):
                    pass
        finally:
            server.should_exit = True
    assert app.seen[0] == b"Bearer s3cret"


# -- on the wire: the real Modbus MCP server (stdio child) against the virtual building ---------


@pytest.mark.anyio
async def test_modbus_server_tools_are_discovered(site: SiteConfig, sim: Any) -> None:
    async with McpHost.from_config(site) as host:
        assert {"modbus__list_points", "modbus__read_points", "modbus__write_point"} <= set(host.tools)
        assert host.tools["modbus__read_points"].read_only is True
        assert host.tools["modbus__write_point"].read_only is False
        with pytest.raises(DeviceError) as err:
            await host.call_tool("modbus__read_points", {"point_ids": ["no.such_point"]})
        assert err.value.code == "unknown_point"
        with pytest.raises(DeviceError) as err:
            await host.call_tool("modbus__write_point", {"point_id": "zone1.cool_sp", "value": 99, "dry_run": True})
        assert err.value.code == "out_of_bounds"


@pytest.mark.anyio
async def test_one_cycle_on_the_demo_building(site: SiteConfig, sim: Any) -> None:
    # The demo is built this way (a sunny zone2, an empty meeting room in zone3); say so
    # explicitly so the test states its premise rather than relying on the sim's clock.
    assert sim.value("zone2.temp") > sim.value("zone2.cool_sp") + site.agent.comfort_band_c
    assert sim.value("zone3.occ") is False
    assert sim.value("zone3.occ_mode") is True
    async with McpHost.from_config(site) as host:
        result = await Planner(host.call_tool, ["modbus"], comfort_band_c=site.agent.comfort_band_c).cycle()
    found = {(r.kind, r.zone): r for r in result.recommendations}
    assert result.errors == []
    assert ("comfort_violation", "zone2") in found, result.recommendations
    setback = found[("unoccupied_conditioning", "zone3")]
    assert setback.action is not None
    assert setback.action.point_id == "zone3.cool_sp"
    assert setback.action.value == 28.0
    assert not any(kind == "data_quality" for kind, _ in found), result.inputs["bad"]
