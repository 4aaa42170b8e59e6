"""The MCP host: namespaced discovery, structured results, errors as EAIO errors.

Most tests use a small in-process MCPServer; the dead-server test runs a real stdio child that
exits; the last tests run the real ``eaio serve modbus`` child against the virtual building.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import StdioServerParameters
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp.types import ToolAnnotations
from pydantic import BaseModel

from conftest import free_port
from eaio.agents.host import CORRELATION_META_KEY, McpHost, SessionLost, error_from_text, trim_result
from eaio.agents.planner import Planner
from eaio.config import AgentServerRef, SiteConfig
from eaio.errors import ConnectionFailed, DeviceError, ValidationFailed
from helpers import eventually


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


def _changing_server(bus: InMemorySubscriptionBus) -> MCPServer:
    """A server whose tool list changes at run time: ``grow`` adds ``extra`` and says so."""
    server = MCPServer("changing", subscriptions=bus)

    async def extra() -> Echo:
        return Echo(text="extra")

    async def grow(ctx: Context) -> Echo:
        server.add_tool(extra, name="extra", annotations=ToolAnnotations(read_only_hint=True))
        await ctx.notify_tools_changed()
        return Echo(text="grown")

    async def ping() -> Echo:
        return Echo(text="pong")

    server.add_tool(grow, name="grow")
    server.add_tool(ping, name="ping", annotations=ToolAnnotations(read_only_hint=True))
    return server


@pytest.mark.anyio
async def test_tools_are_rediscovered_when_the_server_says_they_changed() -> None:
    bus = InMemorySubscriptionBus()
    server = _changing_server(bus)
    async with McpHost({"chg": server, "tiny": _tiny_server()}) as host:
        tools = host.tools  # holders of the dict see the change: it is updated in place
        assert "chg__extra" not in tools
        # A tool call that changes the list: the server notifies, the host re-lists.
        assert await host.call_tool("chg__grow") == {"text": "grown"}
        await eventually(lambda: "chg__extra" in tools)
        assert tools["chg__extra"].read_only is True
        assert await host.call_tool("chg__extra") == {"text": "extra"}
        # A change the server makes on its own (no call of ours): ping removed, announced on the bus.
        server.remove_tool("ping")
        await bus.publish(ToolsListChanged())
        await eventually(lambda: "chg__ping" not in tools)
        with pytest.raises(ValidationFailed, match="unknown tool 'chg__ping'"):
            await host.call_tool("chg__ping")
        assert {"chg__grow", "chg__extra"} <= set(tools)
        assert {n for n in tools if n.startswith("tiny__")} == {"tiny__echo", "tiny__refuse", "tiny__hang"}
        assert host.server_status()["chg"]["sessions"] == 1  # re-discovery, not a reconnect


@pytest.mark.anyio
async def test_the_correlation_id_reaches_the_server() -> None:
    server = MCPServer("meta")
    seen: list[Any] = []

    async def whoami(ctx: Context) -> Echo:
        meta = ctx.request_context.meta or {}
        seen.append(meta.get(CORRELATION_META_KEY))
        return Echo(text="ok")

    server.add_tool(whoami, name="whoami", annotations=ToolAnnotations(read_only_hint=True))
    async with McpHost({"meta": server}) as host:
        await host.call_tool("meta__whoami")
        await host.call_tool("meta__whoami")
        ids = [c.correlation_id for c in host.drain_calls()]
    assert seen == ids
    assert len(set(ids)) == 2


def test_trim_result_keeps_what_fits_and_says_what_was_cut() -> None:
    small = {"readings": [{"id": "a", "v": 1}], "errors": []}
    assert trim_result(small, 200) == '{"readings":[{"id":"a","v":1}],"errors":[]}'

    big = {"readings": [{"point_id": f"zone{i}.temp", "value": 21.5 + i} for i in range(300)], "errors": []}
    text = trim_result(big, 1000)
    assert len(text) <= 1000
    shown = json.loads(text)  # still valid JSON: whole items, not a cut in the middle of one
    n = len(shown["readings"])
    assert 0 < n < 300
    assert shown["readings"] == big["readings"][:n]
    assert shown["_trimmed"].startswith(f"readings: {n} of 300 items shown")
    assert "narrower arguments" in shown["_trimmed"]

    blob = {"text": "x" * 5000}  # no list to shorten: the text is cut, with a marker
    cut = trim_result(blob, 300)
    assert len(cut) <= 300
    assert cut.startswith('{"text":"xxx')
    assert cut.endswith("chars cut; call again with narrower arguments (fewer ids, a shorter range, a filter) "
                        "to see the rest]")
    assert f"of {len(json.dumps(blob, separators=(',', ':')))} chars cut" in cut


DYING_SERVER = """
import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

# argv[1]: a file where the server notes each call that has a side effect worth counting.
NOTES = Path(sys.argv[1])
if NOTES.with_suffix(".refuse").exists():  # the test wants this server unable to start
    sys.exit(1)
READ = ToolAnnotations(read_only_hint=True)
server = MCPServer("dying")

def note(what: str) -> int:
    with NOTES.open("a") as f:
        f.write(what + "\\n")
    return NOTES.read_text().splitlines().count(what)

async def die() -> str:
    os._exit(3)

async def record(value: int) -> str:
    note(f"record {value}")  # the write reached the server, then the server dies before answering
    os._exit(3)

async def flaky_read() -> str:
    # Dies the first time it is called; answers on the next server process.
    if note("flaky_read") == 1:
        os._exit(3)
    return "read on the second try"

async def ping() -> str:
    return "pong"

async def pid() -> int:
    return os.getpid()

server.add_tool(die, name="die")
server.add_tool(record, name="record")
server.add_tool(flaky_read, name="flaky_read", annotations=READ)
server.add_tool(ping, name="ping", annotations=READ)
server.add_tool(pid, name="pid", annotations=READ)
anyio.run(server.run_stdio_async)
"""


def _dying(tmp_path: Path) -> tuple[StdioServerParameters, Path]:
    script, notes = tmp_path / "dying.py", tmp_path / "notes.txt"
    script.write_text(textwrap.dedent(DYING_SERVER))
    return StdioServerParameters(command=sys.executable, args=[str(script), str(notes)]), notes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.anyio
async def test_a_killed_stdio_child_is_reopened_and_the_next_read_succeeds(tmp_path: Path) -> None:
    params, _ = _dying(tmp_path)
    async with McpHost({"dying": params, "tiny": _tiny_server()}, call_timeout_s=20) as host:
        first = (await host.call_tool("dying__pid"))["result"]
        os.kill(int(first), signal.SIGKILL)
        # The next read succeeds on a new child, whether the host saw the death first or the call did.
        assert await host.call_tool("dying__ping") == {"result": "pong"}
        second = (await host.call_tool("dying__pid"))["result"]
        assert second != first
        status = host.server_status()
        assert status["dying"]["up"] is True
        assert status["dying"]["sessions"] == 2
        assert "dying__ping" in host.tools  # re-discovered on the new session
        # The other server never noticed.
        assert status["tiny"]["sessions"] == 1
        assert await host.call_tool("tiny__echo", {"text": "still here"}) == {"text": "still here"}
    assert not _alive(int(second)), "the reopened child outlived the host"


@pytest.mark.anyio
async def test_a_write_that_meets_a_dying_server_fails_and_is_not_repeated(tmp_path: Path) -> None:
    params, notes = _dying(tmp_path)
    async with McpHost({"dying": params}, call_timeout_s=20) as host:
        assert host.tools["dying__record"].read_only is False
        with pytest.raises(SessionLost) as err:
            await host.call_tool("dying__record", {"value": 7})
        assert err.value.code == "connection_failed"
        assert "may or may not have taken effect" in err.value.message
        # The session comes back for the next call; the write was delivered once and never again.
        assert await host.call_tool("dying__ping") == {"result": "pong"}
        assert notes.read_text().splitlines() == ["record 7"]
        assert host.server_status()["dying"]["sessions"] == 2
        calls = host.drain_calls()
        assert [(c.tool, c.ok, c.code, c.retried) for c in calls] == [
            ("dying__record", False, "connection_failed", False),
            ("dying__ping", True, None, False),
        ]


@pytest.mark.anyio
async def test_a_read_that_meets_a_dying_server_is_retried_once_on_the_new_session(tmp_path: Path) -> None:
    params, notes = _dying(tmp_path)
    async with McpHost({"dying": params}, call_timeout_s=20) as host:
        assert await host.call_tool("dying__flaky_read") == {"result": "read on the second try"}
        assert notes.read_text().splitlines() == ["flaky_read", "flaky_read"]
        [call] = host.drain_calls()
        assert (call.tool, call.ok, call.retried) == ("dying__flaky_read", True, True)
        assert host.server_status()["dying"]["sessions"] == 2


@pytest.mark.anyio
async def test_a_server_that_stays_down_fails_calls_until_it_is_back(tmp_path: Path) -> None:
    params, notes = _dying(tmp_path)
    refuse = notes.with_suffix(".refuse")
    async with McpHost({"dying": params}, call_timeout_s=2) as host:
        refuse.touch()  # from now on a new child exits at once: every reopen fails
        with pytest.raises(SessionLost):
            await host.call_tool("dying__die")
        with pytest.raises(ConnectionFailed) as err:
            await host.call_tool("dying__ping")
        assert err.value.code == "connection_failed"
        assert "is down" in err.value.message
        status = host.server_status()["dying"]
        assert status["up"] is False
        assert status["last_error"]
        refuse.unlink()  # the backoff keeps trying: the server comes back by itself
        await eventually(lambda: host.server_status()["dying"]["up"], limit_s=15)
        assert await host.call_tool("dying__ping") == {"result": "pong"}


@pytest.mark.anyio
async def test_a_host_cancelled_from_outside_still_ends_its_children(tmp_path: Path) -> None:
    params, _ = _dying(tmp_path)
    pid = 0
    with anyio.CancelScope() as scope:  # e.g. `eaio agent --duration` running out, or a signal
        async with McpHost({"dying": params}) as host:
            pid = int((await host.call_tool("dying__pid"))["result"])
            scope.cancel()
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert pid
    assert not _alive(pid)


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


async def _serve_http(tg: anyio.abc.TaskGroup, app: Any, port: int) -> Callable[[], Awaitable[None]]:
    """uvicorn serving ``app`` on ``port``; returns a coroutine function that stops it and waits.

    The host holds a ``subscriptions/listen`` stream open, which a graceful stop would wait on for
    seconds: stop the way a restart does, cutting open streams after a short grace.
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    done = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            done.set()

    tg.start_soon(serve)
    with anyio.fail_after(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no start event
            await anyio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        with anyio.fail_after(10):
            await done.wait()

    return stop


@pytest.mark.anyio
async def test_an_http_server_restarted_on_the_same_port_is_reopened() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    async with anyio.create_task_group() as tg:
        stop = await _serve_http(tg, _tiny_server().streamable_http_app(), port)
        async with McpHost({"tiny": AgentServerRef(name="tiny", url=url)}, call_timeout_s=3) as host:
            assert await host.call_tool("tiny__echo", {"text": "before"}) == {"text": "before"}
            await stop()
            with pytest.raises(ConnectionFailed) as err:  # nobody answers on the port now
                await host.call_tool("tiny__echo", {"text": "during"})
            assert err.value.code == "connection_failed"
            await eventually(lambda: not host.server_status()["tiny"]["up"])
            stop = await _serve_http(tg, _tiny_server().streamable_http_app(), port)
            await eventually(lambda: host.server_status()["tiny"]["up"], limit_s=15)
            assert await host.call_tool("tiny__echo", {"text": "after"}) == {"text": "after"}
            assert host.server_status()["tiny"]["sessions"] == 2
        await stop()


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
