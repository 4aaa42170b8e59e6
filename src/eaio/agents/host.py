"""The MCP host: one client session per protocol server, tools under namespaced names.

Tools are exposed as ``<server>__<tool>`` (``modbus__read_points``): names stay unique when
several protocol servers offer the same core tools.

Each server's session is owned by a runner task of its own, started in ``__aenter__``: the SDK's
transports hold task groups that must be entered and left in one task, and a transport that
fails (an HTTP server gone) cancels the task that holds it. Owning the session in a runner keeps
both away from the callers, who may call from any task. The runner also:

- re-discovers the server's tools when it says they changed (``subscriptions/listen`` on
  2026-07-28 connections, ``notifications/tools/list_changed`` on handshake-era ones);
- reopens the session with backoff when it is lost (stdio child dead, HTTP server restarted),
  and re-discovers. A read-only call that met the loss is retried once on the new session; a
  write is never repeated blindly (the request may have reached the server): it fails with
  ``connection_failed`` (``SessionLost``). Other servers are not affected.

Leaving ``async with McpHost(...)`` closes every session and ends every stdio child.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import httpx2
from anyio.abc import TaskStatus
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    REQUEST_TIMEOUT,
    CallToolResult,
    ToolListChangedNotification,
)
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

from ..config import AgentServerRef, SiteConfig
from ..errors import ConnectionFailed, DeviceError, EaioError, ValidationFailed
from .base import ToolSpec

__all__ = [
    "CORRELATION_META_KEY",
    "SEP",
    "CallLog",
    "McpHost",
    "ServerTarget",
    "SessionLost",
    "error_from_text",
    "server_refs",
    "trim_result",
]

log = logging.getLogger(__name__)

SEP = "__"
# The call's correlation id travels in the request's _meta, so a server's logs can be matched to ours.
CORRELATION_META_KEY = "eaio/correlation_id"
# What a session can be opened on: a stdio command, an HTTP ref (url + token), or (tests) a server object.
ServerTarget = StdioServerParameters | AgentServerRef | MCPServer
_CODE = re.compile(r"^([a-z][a-z0-9_]*): (.*)$", re.DOTALL)
_PREFIX = re.compile(r"^Error executing tool \S+: ", re.DOTALL)
# Errors of the transport itself: the session is gone, whatever the server was doing.
_TRANSPORT_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


class SessionLost(ConnectionFailed):
    """The server's session went away during a call: the request may or may not have taken effect."""


@dataclass(frozen=True)
class CallLog:
    """One tool call, as the runtime records it in a Decision."""

    correlation_id: str
    tool: str
    duration_ms: float
    ok: bool
    code: str | None = None
    retried: bool = False  # a read-only call repeated once after its server's session was reopened

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.correlation_id, "tool": self.tool, "duration_ms": round(self.duration_ms, 1),
                "ok": self.ok, "code": self.code, "retried": self.retried}


@dataclass
class _Conn:
    """One server's session state. Only its runner opens and closes the client."""

    name: str
    target: ServerTarget
    client: Client | None = None  # None while the session is down
    generation: int = 0  # bumped at each open: a loss reported against an old session is ignored
    sessions: int = 0
    last_error: str | None = None
    up: anyio.Event = field(default_factory=anyio.Event)  # set while a client is published
    drop: anyio.Event = field(default_factory=anyio.Event)  # set: the runner closes the session
    changed: anyio.Event = field(default_factory=anyio.Event)  # set: re-list the tools


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


def trim_result(result: dict[str, Any], max_chars: int) -> str:
    """A tool result as compact JSON of at most ``max_chars``, for a prompt.

    When it is too long, the largest top-level list keeps as many leading items as fit and a
    ``_trimmed`` field says how many were shown and how to ask for the rest; failing that (one
    huge value), the text is cut and ends with a marker saying how much was cut.
    """
    text = _dumps(result)
    if len(text) <= max_chars:
        return text
    lists = [(len(_dumps(v)), k) for k, v in result.items() if isinstance(v, list) and v]
    if lists:
        key = max(lists)[1]
        items: list[Any] = result[key]
        lo, hi, best = 0, len(items) - 1, None  # the most leading items that fit, by bisection
        while lo <= hi:
            mid = (lo + hi) // 2
            note = (f"{key}: {mid} of {len(items)} items shown; call again with narrower arguments "
                    f"(fewer ids, a shorter range, a filter) to see the others")
            candidate = _dumps({**result, key: items[:mid], "_trimmed": note})
            if len(candidate) <= max_chars:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return best
    marker = (f"...[trimmed: {{cut}} of {len(text)} chars cut; call again with narrower arguments "
              f"(fewer ids, a shorter range, a filter) to see the rest]")
    keep = max(0, max_chars - len(marker.format(cut=len(text))))
    return text[:keep] + marker.format(cut=len(text) - keep)


class McpHost:
    """``async with McpHost(targets) as host:`` discovers tools; ``await host.call_tool(name, args)``."""

    def __init__(
        self, targets: dict[str, ServerTarget], *, call_timeout_s: float = 10.0, connect_timeout_s: float = 30.0
    ) -> None:
        for name in targets:
            if SEP in name or not name:
                raise ValidationFailed(f"server name '{name}' must be non-empty and not contain '{SEP}'")
        self.targets = targets
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.tools: dict[str, ToolSpec] = {}
        self._conns: dict[str, _Conn] = {}
        self._stack: AsyncExitStack | None = None
        self._closing = False
        self._closed: anyio.Event | None = None
        self._journal: list[CallLog] = []

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> McpHost:
        return cls(server_refs(cfg), call_timeout_s=cfg.agent.call_timeout_s)

    @property
    def servers(self) -> list[str]:
        return list(self.targets)

    def server_status(self) -> dict[str, dict[str, Any]]:
        """Per server: whether its session is up, how many sessions were opened, the last error."""
        return {
            name: {"up": c.client is not None, "sessions": c.sessions, "last_error": c.last_error,
                   "tools": sum(1 for t in self.tools if t.startswith(name + SEP))}
            for name, c in self._conns.items()
        }

    async def __aenter__(self) -> McpHost:
        self._closing, self._closed = False, anyio.Event()
        self._conns = {name: _Conn(name, target) for name, target in self.targets.items()}
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            # Servers open in order; a server that does not open fails the whole host.
            for conn in self._conns.values():
                await tg.start(self._run, conn)
        except BaseException:
            await self._shutdown(stack)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await self._shutdown(stack)

    async def call_tool(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a namespaced tool; its structured result, or an EaioError subclass."""
        spec = self.tools.get(name)
        if spec is None:
            raise ValidationFailed(f"unknown tool '{name}'; known: {', '.join(sorted(self.tools)) or 'none'}")
        server, tool = name.split(SEP, 1)
        conn = self._conns[server]
        cid, start, code, retried = uuid.uuid4().hex[:12], time.perf_counter(), None, False
        deadline = anyio.current_time() + self.call_timeout_s  # one budget for the call, reconnect included
        try:
            try:
                result = await self._call(conn, tool, args or {}, cid, deadline)
            except SessionLost:
                if not spec.read_only:
                    raise  # it may have been done: never repeated blindly
                retried = True
                log.info("call %s %s: session lost; once more on the reopened session", cid, name)
                result = await self._call(conn, tool, args or {}, cid, deadline)
            if result.is_error:
                raise error_from_text(_text(result))
            return _structured(result)
        except EaioError as err:
            code = err.code
            raise
        finally:
            entry = CallLog(cid, name, (time.perf_counter() - start) * 1000, code is None, code, retried)
            self._journal.append(entry)
            log.info("call %s %s %.1f ms %s", cid, name, entry.duration_ms, code or "ok")

    def drain_calls(self) -> list[CallLog]:
        """The calls made since the last drain (the runtime puts them in each Decision)."""
        calls, self._journal = self._journal, []
        return calls

    # -- calls --------------------------------------------------------------------------------
    async def _call(self, conn: _Conn, tool: str, args: dict[str, Any], cid: str, deadline: float) -> CallToolResult:
        client, generation = await self._session(conn, deadline)
        name = f"{conn.name}{SEP}{tool}"
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                return await client.call_tool(tool, args, read_timeout_seconds=self.call_timeout_s,
                                              meta={CORRELATION_META_KEY: cid})
        except TimeoutError as err:
            raise ConnectionFailed(f"{name} gave no answer within {self.call_timeout_s:g} s", code="timeout") from err
        except MCPError as err:
            if err.code == CONNECTION_CLOSED:
                raise self._lost(conn, generation, name, err.message) from err
            if err.code == REQUEST_TIMEOUT:
                raise ConnectionFailed(f"{name} gave no answer: {err.message}", code="timeout") from err
            if err.code == INVALID_PARAMS:
                raise ValidationFailed(f"{name}: {err.message}") from err
            raise ConnectionFailed(f"{name}: {err.message}") from err
        except _TRANSPORT_ERRORS as err:
            raise self._lost(conn, generation, name, type(err).__name__) from err
        except ExceptionGroup as group:  # a transport task group failing underneath the call
            raise self._lost(conn, generation, name, _leaf(group)) from group

    async def _session(self, conn: _Conn, deadline: float) -> tuple[Client, int]:
        """The server's client, waiting (until ``deadline``) while its runner reopens it."""
        while conn.client is None:
            remaining = deadline - anyio.current_time()
            if self._closing or remaining <= 0:
                why = "the host is closing" if self._closing else f"not back within {self.call_timeout_s:g} s"
                raise ConnectionFailed(f"MCP server '{conn.name}' is down ({why}; last error: {conn.last_error})")
            with anyio.move_on_after(remaining):
                await conn.up.wait()
        return conn.client, conn.generation

    def _lost(self, conn: _Conn, generation: int, name: str, why: str) -> SessionLost:
        self._mark_gone(conn, generation, f"{name}: {why}")
        return SessionLost(f"MCP server '{conn.name}' went away during {name} ({why}); the call may or may "
                           "not have taken effect")

    def _mark_gone(self, conn: _Conn, generation: int, why: str) -> None:
        """Unpublish the session and wake its runner to reopen it (once per session)."""
        if conn.generation != generation or conn.client is None:
            return
        log.warning("server %s: session lost (%s); reopening", conn.name, why)
        conn.last_error = why
        conn.client = None
        conn.up = anyio.Event()
        conn.drop.set()

    # -- the runner: one task per server, owning its sessions ----------------------------------
    async def _run(self, conn: _Conn, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            opened = await self._open(conn)
        except Exception as err:  # whatever it is, the server is not usable: say which and why
            raise ConnectionFailed(f"MCP server '{conn.name}' did not start or answer: {_leaf(err)}") from err
        ready = task_status.started
        while opened is not None:
            await self._serve(conn, *opened, ready)
            ready = _nothing
            opened = None if self._closing else await self._reopen(conn)

    async def _open(self, conn: _Conn) -> tuple[AsyncExitStack, Client, list[ToolSpec]]:
        # The stack leaves here entered (pop_all): _serve exits it, in this same task.
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(await self._client(stack, conn))
            with anyio.fail_after(self.connect_timeout_s):
                specs = await _list_tools(client)
            return stack.pop_all(), client, specs

    async def _reopen(self, conn: _Conn) -> tuple[AsyncExitStack, Client, list[ToolSpec]] | None:
        """Open the session again, with exponential backoff, until it opens or the host closes."""

        def retrying(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            conn.last_error = _leaf(err) if err else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning("server %s: reopen failed (%s); next try in %.1f s", conn.name, conn.last_error, wait)

        attempts = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
            stop=lambda _state: self._closing,
            sleep=self._pause,
            before_sleep=retrying,
            reraise=True,
        )
        try:
            async for attempt in attempts:
                with attempt:
                    return await self._open(conn)
        except Exception:
            return None  # only once the host is closing: the stop condition
        return None

    async def _serve(
        self, conn: _Conn, stack: AsyncExitStack, client: Client, specs: list[ToolSpec], ready: Callable[[], object]
    ) -> None:
        """Publish the session and hold it until it is dropped or its transport fails."""
        try:
            async with stack:
                conn.generation += 1
                conn.sessions += 1
                conn.client, conn.changed = client, anyio.Event()
                self._install_tools(conn, specs)
                conn.up.set()
                ready()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch, conn, client, conn.generation)
                    tg.start_soon(self._relist, conn, client)
                    await conn.drop.wait()
                    tg.cancel_scope.cancel()
        except Exception as err:  # the transport failed underneath (an HTTP server gone, ...)
            if not self._closing:
                conn.last_error = _leaf(err)
                log.warning("server %s: session ended (%s); reopening", conn.name, conn.last_error)
        finally:
            conn.client = None
            if conn.up.is_set():
                conn.up = anyio.Event()
            conn.drop = anyio.Event()

    async def _client(self, stack: AsyncExitStack, conn: _Conn) -> Client:
        target = conn.target

        async def on_message(message: IncomingMessage) -> None:
            # Handshake-era servers announce changes this way; the re-list runs in _relist, since
            # a request made from inside this handler would wait on the loop that runs it.
            if isinstance(message, ToolListChangedNotification):
                conn.changed.set()
            await anyio.lowlevel.checkpoint()

        options: dict[str, Any] = {"message_handler": on_message, "read_timeout_seconds": self.connect_timeout_s}
        if isinstance(target, AgentServerRef):
            assert target.url is not None  # the config allows exactly one of command and url
            headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
            # The MCP transport's own defaults: a response stream may stay open a long time.
            timeout = httpx2.Timeout(30.0, read=300.0)
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=timeout))
            return Client(streamable_http_client(target.url, http_client=http), **options)
        return Client(target, **options)

    async def _watch(self, conn: _Conn, client: Client, generation: int) -> None:
        """Hold a tools/list_changed stream; one that can no longer be opened means the session is gone."""
        first = True
        while True:
            began = anyio.current_time()
            try:
                async with client.listen(tools_list_changed=True) as sub:
                    if not first:
                        conn.changed.set()  # no replay: what changed while the stream was down is re-listed
                    first = False
                    async for _event in sub:
                        conn.changed.set()
            except ListenNotSupportedError:
                return  # a handshake-era server: its notifications reach on_message
            except SubscriptionLost:
                pass  # re-listen: if the session is gone, that says so
            except MCPError as err:
                if err.code == CONNECTION_CLOSED:
                    self._mark_gone(conn, generation, "the change stream closed")
                else:
                    log.info("server %s: no tools/list_changed stream (%s)", conn.name, err.message)
                return
            except _TRANSPORT_ERRORS as err:
                self._mark_gone(conn, generation, f"the change stream failed: {type(err).__name__}")
                return
            except Exception as err:  # a watch must never take the session down itself
                log.warning("server %s: change stream failed: %s", conn.name, _leaf(err))
                return
            if anyio.current_time() - began < 1.0:
                await anyio.sleep(1.0)  # a server that keeps ending the stream: do not spin

    async def _relist(self, conn: _Conn, client: Client) -> None:
        while True:
            await conn.changed.wait()
            conn.changed = anyio.Event()
            try:
                with anyio.fail_after(self.call_timeout_s):
                    specs = await _list_tools(client, refresh=True)
            except Exception as err:  # the next call or the watch finds a dead session
                log.warning("server %s: re-listing tools failed: %s", conn.name, _leaf(err))
                continue
            self._install_tools(conn, specs)

    def _install_tools(self, conn: _Conn, specs: list[ToolSpec]) -> None:
        """Replace the server's tools in ``self.tools`` (in place: holders of the dict see the change)."""
        prefix = conn.name + SEP
        old = {n for n in self.tools if n.startswith(prefix)}
        new: dict[str, ToolSpec] = {}
        for spec in specs:
            spec.name = prefix + spec.name
            new[spec.name] = spec
        for gone in old - new.keys():
            del self.tools[gone]
        self.tools.update(new)
        added, removed = sorted(new.keys() - old), sorted(old - new.keys())
        if not old:
            log.info("server %s: %d tools: %s", conn.name, len(new), ", ".join(new))
        elif added or removed:
            log.info("server %s: tools changed: added %s; removed %s", conn.name, added or "none", removed or "none")

    async def _pause(self, seconds: float) -> None:
        """Backoff sleep that ends early when the host closes."""
        assert self._closed is not None
        with anyio.move_on_after(seconds):
            await self._closed.wait()

    async def _shutdown(self, stack: AsyncExitStack) -> None:
        """Ask every runner to close its session, then wait for them (they close in their own tasks)."""
        self._closing = True
        if self._closed is not None:
            self._closed.set()
        for conn in self._conns.values():
            conn.drop.set()
        try:
            await stack.aclose()
        finally:
            self.tools.clear()


def _nothing() -> None:
    return None


async def _list_tools(client: Client, *, refresh: bool = False) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor, cache_mode="refresh" if refresh else "use")
        for t in page.tools:
            read_only = bool(t.annotations and t.annotations.read_only_hint)
            specs.append(ToolSpec(name=t.name, description=t.description or "", input_schema=t.input_schema,
                                  read_only=read_only))
        cursor = page.next_cursor
        if not cursor:
            return specs


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


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
