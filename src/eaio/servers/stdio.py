"""MCP over stdio on asyncio pipes, without worker threads.

The SDK's stdio transport reads stdin and writes stdout through worker threads: a dozen thread
hops per tool call, and a reader that a cancel cannot interrupt (a SIGTERM had to wait for the
client to close the pipe). Here the same ``stdio_server`` runs on asyncio pipe transports that
we hand it as its streams, so a call costs no thread hops and shutdown is an ordinary cancel.
When stdin or stdout is not a pipe, socket or terminal (e.g. a regular file), the SDK's own
transport is used instead.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

__all__ = ["pipes_usable", "serve_stdio_on_pipes"]

_LINE_LIMIT = 2**24  # one JSON-RPC message per line; results of large reads are long lines


def pipes_usable() -> bool:
    """Whether fds 0 and 1 are kinds asyncio can drive as pipes (and we can reach the server)."""

    def ok(fd: int) -> bool:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)

    return ok(0) and ok(1)


class _Lines:
    """The async line iterator ``stdio_server`` reads messages from."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    """The ``write``/``flush`` pair ``stdio_server`` sends messages with."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


@asynccontextmanager
async def _pipes() -> AsyncIterator[tuple[_Lines, _Writer]]:
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    # As the SDK does: while serving, fd 0 reads EOF and fd 1 goes to stderr, so a stray
    # read or print by a handler or a child process never corrupts the protocol stream.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, write_protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    try:
        yield _Lines(reader), _Writer(writer)
    finally:
        read_transport.close()
        write_transport.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


async def serve_stdio_on_pipes(server: MCPServer[Any]) -> None:
    """Serve ``server`` over stdin/stdout until the client closes stdin (or we are cancelled)."""
    # The low-level server is what MCPServer.run_stdio_async drives; the SDK has no public
    # accessor for it, so fall back to that method should the attribute ever disappear.
    lowlevel = getattr(server, "_lowlevel_server", None)
    if lowlevel is None or not pipes_usable():
        await server.run_stdio_async()
        return
    async with _pipes() as (lines, out), stdio_server(stdin=lines, stdout=out) as (read, write):  # type: ignore[arg-type]
        await lowlevel.run(read, write, lowlevel.create_initialization_options())
