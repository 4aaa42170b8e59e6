"""The MCP host: one client session per protocol server, tools under namespaced names.

Every session lives in one AsyncExitStack, so leaving ``async with McpHost(...)`` closes each
session and ends each stdio child, whatever happened inside. Tools are exposed as
``<server>__<tool>`` (``modbus__read_points``): names stay unique when several protocol
servers offer the same core tools.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from ..config import AgentServerRef, SiteConfig
from ..errors import ConnectionFailed, DeviceError, EaioError, ValidationFailed
from .base import ToolSpec

__all__ = ["SEP", "CallLog", "McpHost", "ServerTarget", "error_from_text", "server_refs"]

log = logging.getLogger(__name__)

SEP = "__"
# What a session can be opened on: a stdio command, an HTTP ref (url + token), or (tests) a server object.
ServerTarget = StdioServerParameters | AgentServerRef | MCPServer
_CODE = re.compile(r"^([a-z][a-z0-9_]*): (.*)$", re.DOTALL)
_PREFIX = re.compile(r"^Error executing tool \S+: ", re.DOTALL)


@dataclass(frozen=True)
class CallLog:
    """One tool call, as the runtime records it in a Decision."""

    correlation_id: str
    tool: str
    duration_ms: float
    ok: bool
    code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.correlation_id, "tool": self.tool, "duration_ms": round(self.duration_ms, 1),
                "ok": self.ok, "code": self.code}


def server_refs(cfg: SiteConfig) -> dict[str, ServerTarget]:
    """The servers to open: cfg.agent.servers, else one stdio child per protocol in use."""
    if cfg.agent.servers is not None:
        out: dict[str, ServerTarget] = {}
        for ref in cfg.agent.servers:
            if ref.command is not None:
                cmd = ref.command
                out[ref.name] = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
            else:
                out[ref.name] = ref
        return out
    config = str(cfg.source) if cfg.source else "config/site.example.yaml"
    return {
        proto: StdioServerParameters(
            command=sys.executable, args=["-m", "eaio", "serve", proto, "--config", config], env=dict(os.environ)
        )
        for proto in cfg.protocols()
    }


def error_from_text(text: str) -> EaioError:
    """A tool's error result ("<code>: <sentence>") as the EAIO error it stands for."""
    body = _PREFIX.sub("", text.strip(), count=1)
    match = _CODE.match(body)
    if match is None:
        if "validation error" in body:
            return ValidationFailed(body)
        return DeviceError(body or "the tool failed without a message", code="tool_error")
    code, message = match.groups()
    if code == ValidationFailed.code:
        return ValidationFailed(message)
    return DeviceError(message, code=code)


class McpHost:
    """``async with McpHost(targets) as host:`` discovers tools; ``await host.call_tool(name, args)``."""

    def __init__(self, targets: dict[str, ServerTarget], *, call_timeout_s: float = 10.0) -> None:
        for name in targets:
            if SEP in name or not name:
                raise ValidationFailed(f"server name '{name}' must be non-empty and not contain '{SEP}'")
        self.targets = targets
        self.call_timeout_s = call_timeout_s
        self.tools: dict[str, ToolSpec] = {}
        self._clients: dict[str, Client] = {}
        self._stack: AsyncExitStack | None = None
        self._journal: list[CallLog] = []

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> McpHost:
        return cls(server_refs(cfg), call_timeout_s=cfg.agent.call_timeout_s)

    @property
    def servers(self) -> list[str]:
        return list(self._clients)

    async def __aenter__(self) -> McpHost:
        # Servers open in order; if one fails, the stack closes those already open.
        async with AsyncExitStack() as stack:
            try:
                for name, target in self.targets.items():
                    await self._open(stack, name, target)
            except BaseException:
                self._clients.clear()
                self.tools.clear()
                raise
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        self._clients.clear()
        self.tools.clear()
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def call_tool(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a namespaced tool; its structured result, or an EaioError subclass."""
        if name not in self.tools:
            raise ValidationFailed(f"unknown tool '{name}'; known: {', '.join(sorted(self.tools)) or 'none'}")
        server, tool = name.split(SEP, 1)
        cid, start, code = uuid.uuid4().hex[:12], time.perf_counter(), None
        try:
            result = await self._call(server, tool, args or {})
            if result.is_error:
                raise error_from_text(_text(result))
            return _structured(result)
        except EaioError as err:
            code = err.code
            raise
        finally:
            entry = CallLog(cid, name, (time.perf_counter() - start) * 1000, code is None, code)
            self._journal.append(entry)
            log.info("call %s %s %.1f ms %s", cid, name, entry.duration_ms, code or "ok")

    def drain_calls(self) -> list[CallLog]:
        """The calls made since the last drain (the runtime puts them in each Decision)."""
        calls, self._journal = self._journal, []
        return calls

    # -- internals ----------------------------------------------------------------------------
    async def _open(self, stack: AsyncExitStack, name: str, target: ServerTarget) -> None:
        try:
            client = await stack.enter_async_context(await self._client(stack, target))
            listed = await self._list_tools(client)
        except Exception as err:  # whatever it is, the server is not usable: say which and why
            raise ConnectionFailed(f"MCP server '{name}' did not start or answer: {_leaf(err)}") from err
        self._clients[name] = client
        for spec in listed:
            spec.name = f"{name}{SEP}{spec.name}"
            self.tools[spec.name] = spec
        log.info("server %s: %d tools: %s", name, len(listed), ", ".join(s.name for s in listed))

    async def _call(self, server: str, tool: str, args: dict[str, Any]) -> CallToolResult:
        client = self._clients[server]
        try:
            with anyio.fail_after(self.call_timeout_s):
                return await client.call_tool(tool, args)
        except TimeoutError as err:
            raise ConnectionFailed(
                f"{server}{SEP}{tool} gave no answer within {self.call_timeout_s:g} s", code="timeout"
            ) from err
        except MCPError as err:
            raise ConnectionFailed(f"{server}{SEP}{tool}: {err.message}") from err
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as err:
            raise ConnectionFailed(f"MCP server '{server}' is gone ({type(err).__name__})") from err
        except ExceptionGroup as group:  # a transport task group failing underneath the call
            raise ConnectionFailed(f"MCP server '{server}' is gone ({_leaf(group)})") from group

    async def _client(self, stack: AsyncExitStack, target: ServerTarget) -> Client:
        if isinstance(target, AgentServerRef):
            assert target.url is not None  # the config allows exactly one of command and url
            headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
            # The MCP transport's own defaults: a response stream may stay open a long time.
            timeout = httpx2.Timeout(30.0, read=300.0)
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=timeout))
            return Client(streamable_http_client(target.url, http_client=http))
        return Client(target)

    async def _list_tools(self, client: Client) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            for t in page.tools:
                read_only = bool(t.annotations and t.annotations.read_only_hint)
                specs.append(ToolSpec(name=t.name, description=t.description or "", input_schema=t.input_schema,
                                      read_only=read_only))
            cursor = page.next_cursor
            if not cursor:
                return specs


def _leaf(err: BaseException) -> str:
    """The first real error inside (possibly nested) exception groups, as a short text."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}"


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content).strip()


def _structured(result: CallToolResult) -> dict[str, Any]:
    if isinstance(result.structured_content, dict):
        return result.structured_content
    # A tool without an output schema: wrap its text so callers always get a dict.
    return {"result": _text(result)}
