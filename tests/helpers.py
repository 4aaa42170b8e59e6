"""Helpers the wire tests share: MCP client calls and waiting for a condition with a deadline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
import pytest
from mcp import Client, StdioServerParameters

from eaio.config import SiteConfig

T = TypeVar("T")


def server_command(cfg: SiteConfig, protocol: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "eaio", "serve", protocol, "--config", str(cfg.source), *extra]


@asynccontextmanager
async def stdio_session(cfg: SiteConfig, protocol: str) -> AsyncIterator[Client]:
    """The real ``mcp`` Client over stdio to a fresh ``eaio serve <protocol>`` child."""
    cmd = server_command(cfg, protocol)
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tool call that must succeed; its structured result."""
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def error_of(client: Client, tool: str, args: dict[str, Any]) -> str:
    """A tool call that must fail; its error text."""
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text


async def eventually(cond: Callable[[], Any], limit_s: float = 10.0) -> Any:
    """Poll ``cond`` (sync or async) until it returns something truthy; fail after ``limit_s``."""
    with anyio.fail_after(limit_s):
        while True:
            got = cond()
            if hasattr(got, "__await__"):
                got = await got
            if got:
                return got
            await anyio.sleep(0.05)


async def until(check: Callable[[], Awaitable[T | None]], what: str, within: float = 15.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``within`` seconds."""
    with anyio.move_on_after(within):
        while True:
            if result := await check():
                return result
            await anyio.sleep(0.05)
    pytest.fail(f"timed out after {within} s waiting for {what}")


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM (a server's clean stop: it saves what it must), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], limit_s: float = 20.0) -> None:
    """Until a TCP port on 127.0.0.1 accepts connections; fail early if ``proc`` exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {limit_s} s")


@contextmanager
def serve_http(cfg: SiteConfig, protocol: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``eaio serve <protocol> --transport http`` as a child, listening when this yields; stopped
    with SIGTERM (then killed) at the end unless the test ended it itself."""
    proc = subprocess.Popen(
        server_command(cfg, protocol, "--transport", "http", "--port", str(port)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()
