"""The OPC-UA MCP server: the core tools plus browse, read_nodes, read_history and server_status.

``OpcuaService`` is ``CoreService`` (the same guards, timed restores and audit for write_point;
a write is coerced to the node's data type by the adapter) plus the logic of the OPC-UA tools,
in a plain class testable without MCP.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import AwareDatetime, Field

from ..config import SiteConfig
from ..errors import ValidationFailed
from ..models import OpcuaPoint
from ..models.opcua import check_node_id
from ..protocol_adapters import build_adapter
from ..protocol_adapters.base import Adapter
from .results import (
    BrowseResult,
    HistoryResult,
    HistoryValue,
    NodeInfo,
    NodeValue,
    NodeValues,
    OpcuaServerStatus,
    ServerStatusList,
)
from .service import CoreService
from .tools import READ_ONLY, ToolName, register_core_tools, run_tool

__all__ = ["OpcuaService", "build_opcua_service", "register_opcua_tools"]

MAX_DEPTH = 5
MAX_BROWSE = 5000
MAX_NODES = 1000  # per read_nodes call
MAX_HISTORY = 10_000


class OpcuaService(CoreService):
    def __init__(self, cfg: SiteConfig, adapter: Adapter | None = None) -> None:
        if adapter is None:
            adapter = build_adapter("opcua", cfg.devices_for("opcua"), role="server")
        super().__init__(cfg, "opcua", adapter)
        self.opcua: Any = adapter

    async def browse(self, device_id: str, node_id: str | None = None, depth: int = 1,
                     limit: int = 500) -> BrowseResult:
        self.device(device_id)
        if node_id is not None:
            _check_node(node_id)
        if not 1 <= depth <= MAX_DEPTH:
            raise ValidationFailed(f"depth must be 1..{MAX_DEPTH}, got {depth}")
        if not 1 <= limit <= MAX_BROWSE:
            raise ValidationFailed(f"limit must be 1..{MAX_BROWSE}, got {limit}")
        # One more than asked says whether the answer was cut short.
        rows = await self.opcua.browse(device_id, node_id, depth, limit + 1)
        nodes = [NodeInfo(**r) for r in rows[:limit]]
        return BrowseResult(device_id=device_id, root=node_id or "i=85", nodes=nodes, count=len(nodes),
                            truncated=len(rows) > limit)

    async def read_nodes(self, device_id: str, node_ids: Sequence[str]) -> NodeValues:
        self.device(device_id)
        ids = list(dict.fromkeys(node_ids))
        if not 1 <= len(ids) <= MAX_NODES:
            raise ValidationFailed(f"give 1 to {MAX_NODES} node ids per call (got {len(ids)})")
        for n in ids:
            _check_node(n)
        rows = await self.opcua.read_nodes(device_id, ids)
        return NodeValues(device_id=device_id, values=[NodeValue(**r) for r in rows])

    async def read_history(self, start: datetime, end: datetime, *, point_id: str | None = None,
                           device_id: str | None = None, node_id: str | None = None,
                           limit: int = 1000) -> HistoryResult:
        if (point_id is None) == (node_id is None):
            raise ValidationFailed("give point_id, or device_id with node_id")
        if start.tzinfo is None or end.tzinfo is None:
            raise ValidationFailed("start and end need a time zone (e.g. 2026-07-15T12:00:00Z)")
        if end <= start:
            raise ValidationFailed(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
        if not 1 <= limit <= MAX_HISTORY:
            raise ValidationFailed(f"limit must be 1..{MAX_HISTORY}, got {limit}")
        if point_id is not None:
            point = self.point(point_id)
            assert isinstance(point, OpcuaPoint)
            device_id, node_id = point.device_id, point.address.node_id
            rows = await self.opcua.read_history(point, None, start, end, limit)
        else:
            if device_id is None:
                raise ValidationFailed("node_id needs device_id")
            self.device(device_id)
            _check_node(node_id)  # type: ignore[arg-type]
            rows = await self.opcua.read_history(device_id, node_id, start, end, limit)
        values = [HistoryValue(**r) for r in rows]
        return HistoryResult(device_id=device_id, node_id=node_id, point_id=point_id, values=values,  # type: ignore[arg-type]
                             count=len(values))

    async def server_status(self, device_id: str | None = None) -> ServerStatusList:
        ids = [device_id] if device_id is not None else list(self._devices)
        for d in ids:
            self.device(d)
        return ServerStatusList(servers=[OpcuaServerStatus(**await self.opcua.server_status(d)) for d in ids])


def _check_node(node_id: str) -> None:
    try:
        check_node_id(node_id)
    except ValueError as err:
        raise ValidationFailed(f"node id {node_id!r}: {err}") from err


def build_opcua_service(cfg: SiteConfig, adapter: Adapter | None = None) -> OpcuaService:
    return OpcuaService(cfg, adapter)


def register_opcua_tools(server: MCPServer, service: CoreService) -> None:
    register_core_tools(server, service)
    svc: Any = service  # an OpcuaService

    async def browse(
        device_id: Annotated[str, Field(description="A device id from list_devices")],
        node_id: Annotated[str | None, Field(description="Start here (default: the Objects folder, i=85)")] = None,
        depth: Annotated[int, Field(description=f"Levels to go down, 1..{MAX_DEPTH}")] = 1,
        limit: Annotated[int, Field(description=f"Most nodes to return, 1..{MAX_BROWSE}")] = 500,
    ) -> Annotated[CallToolResult, BrowseResult]:
        return await run_tool(svc, ToolName.BROWSE, lambda: svc.browse(device_id, node_id, depth, limit),
                              device_id=device_id, node_id=node_id, depth=depth, limit=limit)

    async def read_nodes(
        device_id: Annotated[str, Field(description="A device id from list_devices")],
        node_ids: Annotated[list[str], Field(description="Node ids, e.g. ['ns=2;s=ChwLoop.Flow', 'i=2258']")],
    ) -> Annotated[CallToolResult, NodeValues]:
        return await run_tool(svc, ToolName.READ_NODES, lambda: svc.read_nodes(device_id, node_ids),
                              device_id=device_id, node_ids=node_ids)

    async def read_history(
        start: Annotated[AwareDatetime, Field(description="From (ISO 8601 with zone, e.g. 2026-07-15T12:00:00Z)")],
        end: Annotated[AwareDatetime, Field(description="Until (exclusive)")],
        point_id: Annotated[str | None, Field(description="A point id (or give device_id and node_id)")] = None,
        device_id: Annotated[str | None, Field(description="With node_id: any node of this device")] = None,
        node_id: Annotated[str | None, Field(description="A raw node id, with device_id")] = None,
        limit: Annotated[int, Field(description=f"Most values, 1..{MAX_HISTORY}")] = 1000,
    ) -> Annotated[CallToolResult, HistoryResult]:
        return await run_tool(
            svc, ToolName.READ_HISTORY,
            lambda: svc.read_history(start, end, point_id=point_id, device_id=device_id, node_id=node_id,
                                     limit=limit),
            point_id=point_id, device_id=device_id, node_id=node_id, limit=limit,
        )

    async def server_status(
        device_id: Annotated[str | None, Field(description="One device; default: all")] = None,
    ) -> Annotated[CallToolResult, ServerStatusList]:
        return await run_tool(svc, ToolName.SERVER_STATUS, lambda: svc.server_status(device_id), device_id=device_id)

    server.add_tool(browse, name=ToolName.BROWSE.value, annotations=READ_ONLY, description=(
        "Walk an OPC-UA server's address space from a node (default: Objects), a few levels deep: node ids, "
        "browse names, node classes and data types. For finding the nodes behind equipment and points."
    ))
    server.add_tool(read_nodes, name=ToolName.READ_NODES.value, annotations=READ_ONLY, description=(
        "Read raw OPC-UA nodes by node id in one batched request: value, data type, status code and "
        "timestamps. For nodes that are not configured points, or to diagnose one. Prefer read_points."
    ))
    server.add_tool(read_history, name=ToolName.READ_HISTORY.value, annotations=READ_ONLY, description=(
        "Read the values an OPC-UA server kept for a node over a time range (HistoryRead), oldest first. "
        "Works only for nodes the server historizes; others answer with the server's status code."
    ))
    server.add_tool(server_status, name=ToolName.SERVER_STATUS.value, annotations=READ_ONLY, description=(
        "Report each OPC-UA server's state, start and current time, product and version, and the security "
        "policy and mode of EAIO's session."
    ))
