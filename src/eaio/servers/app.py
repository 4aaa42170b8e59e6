"""MCPServer assembly, lifespan and transports (stdio, streamable HTTP on 127.0.0.1)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import MCPServer

from ..config import SiteConfig
from ..protocol_adapters.base import Adapter
from .service import CoreService
from .stdio import pipes_usable, serve_stdio_on_pipes
from .tools import ArgumentErrors

__all__ = ["PROTOCOLS", "build_server", "run_server"]

log = logging.getLogger(__name__)

PROTOCOLS = ("modbus", "mqtt", "bacnet", "opcua")


def _service_and_tools(protocol: str, cfg: SiteConfig, adapter: Adapter | None) -> tuple[CoreService, Callable]:
    if protocol == "modbus":
        from .modbus import build_modbus_service, register_modbus_tools

        return build_modbus_service(cfg, adapter), register_modbus_tools
    if protocol == "mqtt":
        from .mqtt import build_mqtt_service, register_mqtt_tools

        return build_mqtt_service(cfg, adapter), register_mqtt_tools  # type: ignore[arg-type]
    if protocol == "bacnet":
        from .bacnet import build_bacnet_service, register_bacnet_tools

        return build_bacnet_service(cfg, adapter), register_bacnet_tools
    if protocol == "opcua":
        from .opcua import build_opcua_service, register_opcua_tools

        return build_opcua_service(cfg, adapter), register_opcua_tools
    raise ValueError(f"no MCP server for protocol '{protocol}' (expected one of {', '.join(PROTOCOLS)})")


def build_server(protocol: str, cfg: SiteConfig, adapter: Adapter | None = None) -> tuple[MCPServer, CoreService]:
    """The MCP server of one protocol and the service behind its tools (nothing connects yet).

    The adapter is opened in the server's lifespan and closed after it, with pending temporary
    writes restored first.
    """
    service, register = _service_and_tools(protocol, cfg, adapter)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[CoreService]:
        log.info("%s: opening the %s adapter (%d devices)", service.name, protocol, len(service.list_devices().devices))
        async with service:
            yield service
        log.info("%s: adapter closed", service.name)

    server = MCPServer(
        service.name,
        instructions=(
            f"Live access to the {protocol} devices of site '{cfg.site.id}'. Call list_points to learn what each "
            "point means (kind, unit, zone, Brick class), read_points for values, and write_point (dry_run first) "
            "for setpoints inside their write bounds."
        ),
        lifespan=lifespan,
        middleware=[ArgumentErrors()],
    )
    register(server, service)
    return server, service


def _log_to_stderr() -> None:
    # stdout belongs to the MCP protocol in stdio mode: every log line goes to stderr, through
    # one plain handler. The SDK installs a Rich handler on the root logger; it renders a table
    # per line, which costs more than a whole tool call, so it is replaced rather than joined.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("EAIO_LOG_LEVEL", "INFO").upper())


async def _serve_stdio(server: MCPServer, service: CoreService) -> None:
    threadless = pipes_usable()
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %s: restoring temporary writes, then stopping", signal.Signals(signum).name)
                    with anyio.CancelScope(shield=True):
                        await service.restores.restore_all()
                    tg.cancel_scope.cancel()
                    if not threadless:
                        # The SDK's transport reads stdin in a worker thread that a cancel cannot
                        # interrupt. Restores are done and the audit is flushed per line: nothing
                        # is lost by leaving now rather than when the client closes the pipe.
                        _exit_soon(grace_s=2.0)
                    return

        tg.start_soon(watch_signals)
        await serve_stdio_on_pipes(server)
        tg.cancel_scope.cancel()  # stdin closed: stop watching signals too


def _exit_soon(grace_s: float) -> None:
    def leave() -> None:
        log.warning("stdin reader still blocked %.0f s after the signal: exiting now", grace_s)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(grace_s, leave)
    timer.daemon = True
    timer.start()


def run_server(
    protocol: str,
    cfg: SiteConfig,
    *,
    transport: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Run one protocol's MCP server until stdin closes (stdio) or a signal arrives (http).

    ``None`` arguments take the values of ``cfg.server_settings(protocol)``.
    """
    _log_to_stderr()
    settings = cfg.server_settings(protocol)
    transport = transport or settings.transport
    server, service = build_server(protocol, cfg)
    if transport == "stdio":
        log.info("eaio-%s: serving MCP over stdio", protocol)
        anyio.run(_serve_stdio, server, service)
    elif transport == "http":
        host = host or settings.host or "127.0.0.1"
        port = port if port is not None else settings.port
        log.info("eaio-%s: serving MCP at http://%s:%d/mcp", protocol, host, port)
        anyio.run(lambda: server.run_streamable_http_async(host=host, port=port))
    else:
        raise ValueError(f"transport must be stdio or http, not '{transport}'")
