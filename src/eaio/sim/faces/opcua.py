"""The OPC-UA face of one simulated device: an asyncua Server over the sim's values.

One server per device, listening on its ``connection.endpoint`` in the sim's own loop. The
address space (``opcua_space``) is built once, at the first start; each sim step every variable
takes the served value (faults included) with the wall-clock time as SourceTimestamp and status
Good (Uncertain under an ``unreliable`` fault: the value is served, but not vouched for). Client
writes that the server accepts (writable points only: the others answer BadUserAccessDenied) go
to the sim's write path, so they drive the physics. Points listed in
``sim.opcua.history`` are historized in memory (HistoryRead). ``offline`` closes the listener,
every connection and every client session; the address space, its history included, lives on,
and the same server listens again when the fault ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback

from ...config import SimOpcua
from ...errors import ConnectionFailed
from ...models import OpcuaDevice
from . import opcua_fast
from .opcua_security import secure, user_manager
from .opcua_space import ServedNode, build_space, resolve_node_ids

__all__ = ["OpcuaFace"]

log = logging.getLogger(__name__)

Value = float | int | bool
_GOOD = ua.StatusCode(ua.StatusCodes.Good)
_UNCERTAIN = ua.StatusCode(ua.StatusCodes.Uncertain)  # BACnet says unreliable-other; this is its kin


class OpcuaFace:
    """Serves one OpcuaDevice on its endpoint until stopped or taken offline."""

    def __init__(
        self,
        device: OpcuaDevice,
        on_write: Callable[[str, Value], None],
        settings: SimOpcua,
        *,
        resolve: Callable[[str], Path] = Path,
    ) -> None:
        self.device = device
        self.on_write = on_write
        self.settings = settings
        self.resolve = resolve  # how certificate paths become files (as given, by default)
        self.requests = 0  # Read service calls served to clients
        self._served: Mapping[str, Value] = {}
        self._unreliable: frozenset[str] = frozenset()
        self._server: Server | None = None
        self._nodes: list[ServedNode] = []
        self._by_node: dict[ua.NodeId, ServedNode] = {}
        self._listening = False
        self._closing: asyncio.Task[None] | None = None
        self._push_task: asyncio.Task[None] | None = None
        self._dirty = False
        self._encoder: opcua_fast.Encoder | None = None  # the fast Read path's, when it serves

    @property
    def host(self) -> str:
        return self.device.connection.host

    @property
    def port(self) -> int:
        return self.device.connection.port

    @property
    def online(self) -> bool:
        return self._listening

    @property
    def server(self) -> Server | None:
        """The asyncua server (None before the first start); use it in the sim's loop only."""
        return self._server

    # -- values -------------------------------------------------------------------------------
    def refresh(self, served: Mapping[str, Value], unreliable: Collection[str] = ()) -> None:
        """Follow the values the sim serves now, and which points are unreliable (faults); a
        task of the loop writes them to the nodes."""
        self._served = served
        self._unreliable = frozenset(unreliable)
        if self._server is None:
            return
        self._dirty = True
        if self._push_task is None:
            self._push_task = asyncio.get_running_loop().create_task(self._push(), name=f"sim opcua {self.device.id}")

    async def _push(self) -> None:
        try:
            while self._dirty and self._server is not None:
                self._dirty = False
                server, now = self._server, datetime.now(UTC)
                for node in self._nodes:
                    value = self._served.get(node.point.id)
                    if value is not None:
                        status = _UNCERTAIN if node.point.id in self._unreliable else _GOOD
                        dv = ua.DataValue(node.variant(value), status, SourceTimestamp=now, ServerTimestamp=now)
                        await server.write_attribute_value(node.node_id, dv)
                        if self._encoder is not None:  # once a step here, not once per read there
                            self._encoder.warm(dv)
                if self._encoder is not None:
                    self._encoder.forget(len(self._nodes))
        except Exception:  # a step is lost, not the face: the next one writes every value again
            log.exception("sim %s: could not update the OPC-UA nodes", self.device.id)
        finally:
            self._push_task = None

    # -- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen; returns once the endpoint accepts connections. ConnectionFailed if the port is taken."""
        if self._listening:
            return
        if self._closing is not None:
            await self._closing  # the previous outage's clean-up, before the port is bound again
        if not _port_free(self.host, self.port):
            raise ConnectionFailed(f"sim {self.device.id}: cannot listen on {self.host}:{self.port} (port in use?)")
        first = self._server is None
        if first:
            self._server = await self._build()
        assert self._server is not None
        try:
            if first:
                await self._server.start()
                bserver = self._server.bserver
                self._encoder = None if bserver is None else opcua_fast.install(self._server, len(self._nodes))
                if bserver is not None and self._encoder is not None:
                    # asyncua has no hook before its first listener accepts: listen again, so
                    # every connection gets the fast Read path (none can exist yet).
                    await bserver.stop()
                    await bserver.start()
            else:
                assert self._server.bserver is not None
                await self._server.bserver.start()
        except OSError as err:  # taken between the check and the bind
            if first:
                self._server = None
            raise ConnectionFailed(
                f"sim {self.device.id}: cannot listen on {self.host}:{self.port} (port in use?)"
            ) from err
        self._listening = True
        self.refresh(self._served, self._unreliable)

    def stop(self) -> None:
        """Stop answering now: close the listener and every connection (sessions go in a task)."""
        server = self._server
        if not self._listening or server is None or server.bserver is None:
            return
        self._listening = False
        for transport in list(server.iserver.asyncio_transports):
            transport.close()
        listener = getattr(server.bserver, "_server", None)  # asyncua closes it a few awaits later
        if listener is not None:
            listener.close()
        self._closing = asyncio.get_running_loop().create_task(self._close_network(server))

    async def aclose(self) -> None:
        """Stop for good: the network side, then the server itself (its port is free on return)."""
        self.stop()
        if self._closing is not None:
            await self._closing
        server, self._server = self._server, None
        if self._push_task is not None:
            self._push_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._push_task
        if server is None:
            return
        clock = server.iserver.time_task
        if clock is not None:  # asyncua's stop() would wait out the clock's 1 s sleep
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
            server.iserver.time_task = None
        await server.stop()

    async def _close_network(self, server: Server) -> None:
        try:
            if server.bserver is not None:
                await server.bserver.stop()
            # Sessions outlive their connection for a reconnect (OPC-UA Part 4, 6.7); a device
            # that went down has none left, so its clients must create new ones.
            sessions: dict[Any, Any] = getattr(server.iserver, "_external_sessions", {})
            for session in list(sessions.values()):
                await session.close_session(True)
            for transport in list(server.iserver.asyncio_transports):  # accepted while closing
                transport.close()
        except Exception:
            log.exception("sim %s: closing the OPC-UA server's connections", self.device.id)

    async def _build(self) -> Server:
        _quiet_asyncua()
        server = Server(user_manager=user_manager(self.settings))
        await server.init()
        server.set_endpoint(self.device.connection.endpoint)
        server.set_server_name(self.device.name or self.device.id)
        await secure(server, self.settings, self.resolve, f"urn:eaio:sim:{self.device.id}")
        node_ids = await resolve_node_ids(server, self.device.points)
        self._nodes = await build_space(server, self.device, node_ids, self._served)
        self._by_node = {n.node_id: n for n in self._nodes}
        await self._historize(server)
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        server.subscribe_server_callback(CallbackType.PreWrite, self._on_write_request)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_written)
        return server

    async def _historize(self, server: Server) -> None:
        wanted = set(self.settings.history)
        for node in self._nodes:
            if node.point.id in wanted:
                await server.historize_node_data_change(server.get_node(node.node_id), period=None,
                                                        count=self.settings.history_size)

    # -- asyncua callbacks --------------------------------------------------------------------
    def _on_read(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if event.is_external:  # the server's own session reads too (its clock, subscriptions)
            self.requests += 1

    def _on_write_request(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        # A device stamps what it is given with its own clock when the client sent no time, so a
        # read right after a write has a SourceTimestamp too (the next step would set one anyway).
        now = datetime.now(UTC)
        for wv in event.request_params.NodesToWrite:
            dv = wv.Value
            if wv.AttributeId == ua.AttributeIds.Value and wv.NodeId in self._by_node and dv is not None:
                if dv.SourceTimestamp is None:
                    dv.SourceTimestamp = now
                dv.ServerTimestamp = now

    def _on_written(self, event: ServerItemCallback, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        for wv, status in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            node = self._by_node.get(wv.NodeId)
            if node is None or wv.AttributeId != ua.AttributeIds.Value or not status.is_good():
                continue
            value = node.decode(wv.Value.Value if wv.Value is not None else None)
            if value is not None:
                log.debug("sim %s: client wrote %s = %r", self.device.id, node.point.id, value)
                self.on_write(node.point.id, value)


def _port_free(host: str, port: int) -> bool:
    # asyncio binds with SO_REUSEADDR, as socket.create_server does: the same test, without the
    # noise of asyncua logging a traceback for a bind that fails.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError:
        return False
    return True


class _RefusalsAreAnswers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # asyncua logs every service fault it sends at ERROR; for a device, refusing is answering.
        return not record.getMessage().startswith("sending service fault response")


def _quiet_asyncua() -> None:
    """asyncua's server logs each connection, session and request at INFO or WARNING; keep
    errors only (unless someone set the level already)."""
    server_log = logging.getLogger("asyncua.server")
    if server_log.level == logging.NOTSET:
        server_log.setLevel(logging.ERROR)
    processor = logging.getLogger("asyncua.server.uaprocessor")
    if not any(isinstance(f, _RefusalsAreAnswers) for f in processor.filters):
        processor.addFilter(_RefusalsAreAnswers())
