"""Helpers the wire tests share: MCP client calls and waiting for a condition with a deadline."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
