"""The core tools, written once against ``CoreService`` and shared by every protocol server.

Every tool has a description an LLM can act on, annotations, a pydantic result (so an output
schema), and errors of the form ``<code>: <sentence>``. Nothing else escapes a tool:
the tools return error results themselves (see ``run_tool``).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from ..errors import EaioError
from ..models import PointKind, Value, WriteResult
from .results import DeviceList, HealthReport, PointList, ReadPointsResult
from .service import CoreService

__all__ = ["CORE_TOOLS", "ArgumentErrors", "ToolName", "actor_of", "error_result", "register_core_tools", "run_tool"]

log = logging.getLogger(__name__)


class ToolName(StrEnum):
    """Every tool name any EAIO server exposes (verb_noun, the same on every protocol)."""

    LIST_DEVICES = "list_devices"
    LIST_POINTS = "list_points"
    READ_POINTS = "read_points"
    WRITE_POINT = "write_point"
    SERVER_HEALTH = "server_health"
    # Protocol extras
    READ_REGISTERS = "read_registers"  # Modbus
    SUBSCRIBE_TOPICS = "subscribe_topics"  # MQTT
    READ_MESSAGES = "read_messages"  # MQTT
    PUBLISH_MESSAGE = "publish_message"  # MQTT
    BROKER_INFO = "broker_info"  # MQTT
    WHO_IS = "who_is"  # BACnet
    LIST_OBJECTS = "list_objects"  # BACnet
    READ_PROPERTY = "read_property"  # BACnet
    READ_PRIORITY_ARRAY = "read_priority_array"  # BACnet
    RELINQUISH = "relinquish"  # BACnet
    BROWSE = "browse"  # OPC-UA
    READ_NODES = "read_nodes"  # OPC-UA
    READ_HISTORY = "read_history"  # OPC-UA
    SERVER_STATUS = "server_status"  # OPC-UA


# The tools every protocol server has, with the same names and shapes.
CORE_TOOLS = frozenset({
    ToolName.LIST_DEVICES, ToolName.LIST_POINTS, ToolName.READ_POINTS, ToolName.WRITE_POINT, ToolName.SERVER_HEALTH,
})


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
LOCAL_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# A write changes a real building: destructive (it overrides what the controller was doing),
# idempotent (the same value twice leaves the same state), open world (it reaches devices).
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True)


async def run_tool(
    service: CoreService, name: ToolName, call: Callable[[], Awaitable[BaseModel] | BaseModel], **args: object
) -> CallToolResult:
    """Count and log the call; turn every failure into an error result whose text starts with its code.

    The SDK prefixes a raised ToolError with "Error executing tool ...", so the result is built
    here instead: an LLM (and the agent) then sees "out_of_bounds: ..." as the first word.
    """
    service.calls[name.value] += 1
    t0 = time.perf_counter()
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await result
    except EaioError as err:
        return error_result(str(err))
    except ValidationError as err:
        return error_result(f"invalid_argument: {err.errors()[0]['msg']}")
    except Exception as err:
        log.exception("tool %s failed unexpectedly", name.value)
        return error_result(f"internal_error: {name.value} failed ({type(err).__name__}); see the server log")
    finally:
        log.info("tool %s %s %.1f ms", name.value, _brief(args), (time.perf_counter() - t0) * 1e3)
    data = result.model_dump(mode="json")
    # Compact JSON: the text copy is for clients that ignore structured content.
    text = json.dumps(data, separators=(",", ":"))
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def _brief(args: dict[str, object]) -> str:
    """Arguments for the log line; long lists as their length (100 point ids say little)."""
    parts = []
    for k, v in args.items():
        if v is None:
            continue
        shown = f"[{len(v)} items]" if isinstance(v, list) and len(v) > 5 else repr(v)
        parts.append(f"{k}={shown}")
    return " ".join(parts)


def error_result(text: str) -> CallToolResult:
    log.info("tool error: %s", text)
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


class ArgumentErrors:
    """Server middleware: the SDK's own argument-validation failures get the invalid_argument code too.

    A wrong type (a string for ``count``) is rejected by the SDK before a tool runs, as
    "Error executing tool X: 1 validation error for ..."; clients should see one error style.
    """

    PREFIX = "Error executing tool "

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/call":
            return result
        # The runner hands results on as wire dicts (camelCase); accept a model too.
        wire = result.model_dump(by_alias=True) if isinstance(result, BaseModel) else result
        if not isinstance(wire, dict) or not wire.get("isError"):
            return result
        content = wire.get("content") or [{}]
        text = str(content[0].get("text", ""))
        if not text.startswith(self.PREFIX):
            return result
        lines = text.splitlines()
        if "validation error" in lines[0] and len(lines) >= 3:
            problem = lines[2].strip().split(" [type=")[0]
            text = f"invalid_argument: {lines[1].strip()}: {problem}"
        else:
            text = f"internal_error: {text}"
        log.info("tool error: %s", text)
        return {**wire, "content": [{"type": "text", "text": text}]}


def actor_of(ctx: Context | None) -> str:
    """Who is calling: the MCP client's declared name (clientInfo), else 'unknown'."""
    try:
        info = ctx.session.client_params.client_info  # type: ignore[union-attr]
        return str(info.name) or "unknown"
    except AttributeError:
        return "unknown"


PointIds = Annotated[list[str], Field(description="Point ids, e.g. ['ahu1.sat', 'zone1.temp']")]
KIND_HELP = "Only points of this kind: " + ", ".join(k.value for k in PointKind)


def register_core_tools(server: MCPServer, service: CoreService) -> None:
    proto = service.protocol

    async def list_devices() -> Annotated[CallToolResult, DeviceList]:
        return await run_tool(service, ToolName.LIST_DEVICES, service.list_devices)

    async def list_points(
        device_id: Annotated[str | None, Field(description="Only points of this device")] = None,
        zone: Annotated[str | None, Field(description="Only points of this zone, e.g. 'zone1'")] = None,
        kind: Annotated[str | None, Field(description=KIND_HELP)] = None,
    ) -> Annotated[CallToolResult, PointList]:
        return await run_tool(
            service, ToolName.LIST_POINTS, lambda: service.list_points(device_id, zone, kind),
            device_id=device_id, zone=zone, kind=kind,
        )

    async def read_points(point_ids: PointIds) -> Annotated[CallToolResult, ReadPointsResult]:
        return await run_tool(
            service, ToolName.READ_POINTS, lambda: service.read_points(point_ids), point_ids=point_ids
        )

    async def write_point(
        point_id: Annotated[str, Field(description="A writable point id (see list_points: writable, write_bounds)")],
        value: Annotated[Value, Field(description="Engineering value in the point's unit; true/false for on/off")],
        ctx: Context,
        dry_run: Annotated[bool, Field(description="Check everything and report, but write nothing")] = False,
        duration_s: Annotated[
            float | None, Field(description="Restore the previous value after this many seconds")
        ] = None,
        reason: Annotated[str | None, Field(description="Why, for the audit log (max 500 chars)")] = None,
    ) -> Annotated[CallToolResult, WriteResult]:
        return await run_tool(
            service, ToolName.WRITE_POINT,
            lambda: service.write_point(
                point_id, value, dry_run=dry_run, duration_s=duration_s, reason=reason, actor=actor_of(ctx)
            ),
            point_id=point_id, value=value, dry_run=dry_run, duration_s=duration_s,
        )

    async def server_health() -> Annotated[CallToolResult, HealthReport]:
        return await run_tool(service, ToolName.SERVER_HEALTH, service.health)

    server.add_tool(list_devices, name=ToolName.LIST_DEVICES.value, annotations=LOCAL_ONLY, description=(
        f"List the {proto} devices (controllers, meters) this server reaches: id, name, connection, number of "
        "points and whether the device answered last time. Start here, then call list_points."
    ))
    server.add_tool(list_points, name=ToolName.LIST_POINTS.value, annotations=LOCAL_ONLY, description=(
        "List the points (sensors, setpoints, commands) with their meaning: kind, unit, Brick class, zone and "
        "equipment, plausible limits, and for writable points the write_bounds. Filter by device_id, zone or kind. "
        "Use the ids with read_points and write_point."
    ))
    server.add_tool(read_points, name=ToolName.READ_POINTS.value, annotations=READ_ONLY, description=(
        f"Read the current values of points from the devices, live (up to {service.settings.max_read_points} ids "
        "per call). Each reading has value, unit, UTC timestamp and quality (good/uncertain/bad with reasons). "
        "Devices that fail are listed in 'errors'; if nothing could be read the call fails with device_offline "
        "or timeout."
    ))
    server.add_tool(write_point, name=ToolName.WRITE_POINT.value, annotations=WRITE, description=(
        "Change a writable point (a setpoint, schedule or on/off command) on the real device. Only points marked "
        "writable, only inside their write_bounds. Use dry_run=true first to check without writing; give "
        "duration_s for a temporary change that is undone automatically, and a reason. Returns the previous "
        "value and the value read back. Every attempt is audited."
    ))
    server.add_tool(server_health, name=ToolName.SERVER_HEALTH.value, annotations=LOCAL_ONLY, description=(
        "Report this server's state: per-device connection health, uptime, tool call counts, pending "
        "temporary writes and where the write audit log is."
    ))
