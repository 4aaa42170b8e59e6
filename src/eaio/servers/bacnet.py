"""The BACnet MCP server: the core tools plus who_is, list_objects, read_property,
read_priority_array and relinquish.

BACnet writes are commands into an object's priority array (at the point's ``priority``,
default 8). So a temporary write is undone by a *relinquish* at that priority, which hands
control back to whatever commands below it (or to the relinquish default), not by writing the
old value back. Pending relinquishes live in ``<data_dir>/bacnet/overrides.json`` so that a
restart, or a crash, still relinquishes them: at start the server relinquishes those whose time
has passed and schedules the others.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Self

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from ..config import SiteConfig
from ..errors import ConnectionFailed, DeviceError, ValidationFailed
from ..models import AuditRecord, BacnetPoint, Point, Value, WriteOutcome, WriteResult, utcnow
from ..models.bacnet import MAX_INSTANCE, check_bacnet_address
from ..protocol_adapters import build_adapter
from ..protocol_adapters.base import Adapter
from .overrides import Override, OverrideBook
from .results import (
    BacnetDeviceFound,
    BacnetObjectInfo,
    ObjectList,
    PriorityArray,
    PrioritySlot,
    PropertyValue,
    RelinquishResult,
    WhoIsResult,
)
from .service import CoreService
from .tools import READ_ONLY, ToolName, actor_of, register_core_tools, run_tool

__all__ = ["BacnetService", "build_bacnet_service", "register_bacnet_tools"]

# A relinquish changes who controls the equipment (destructive), twice is once (idempotent).
RELINQUISH_HINTS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                                   open_world_hint=True)

log = logging.getLogger(__name__)

_OBJECT_ID = re.compile(r"^[a-z][a-z\-]*,\d{1,7}$")
_PROPERTY = re.compile(r"^[a-z][a-z\-]*$")


class BacnetService(CoreService):
    def __init__(self, cfg: SiteConfig, adapter: Adapter | None = None) -> None:
        self._own_adapter = adapter is None
        if adapter is None:
            # role "server": a UDP port of its own (cfg.bacnet.ports), apart from ingest's.
            adapter = build_adapter("bacnet", cfg.devices_for("bacnet"), local=cfg.bacnet, role="server")
        super().__init__(cfg, "bacnet", adapter)
        self.bacnet: Any = adapter
        self.overrides = OverrideBook(cfg.resolve("bacnet/overrides.json"))

    async def __aenter__(self) -> Self:
        try:
            await super().__aenter__()
        except ConnectionFailed as err:
            if not self._own_adapter:
                raise
            # Another server has the configured port (the demo's, and an MCP client that starts
            # its own): any port works for talking to devices, devices answer the sender's port.
            log.warning("%s; this server takes a free port instead", err)
            self.adapter = self.bacnet = build_adapter("bacnet", self.cfg.devices_for("bacnet"),
                                                       local=self.cfg.bacnet, role="server-extra")
            await super().__aenter__()
        try:
            await self._resume_overrides()
        except BaseException:
            await super().__aexit__(None, None, None)
            raise
        return self

    # -- temporary writes: relinquish, persisted ---------------------------------------------
    async def _resume_overrides(self) -> None:
        now = utcnow()
        for o in self.overrides.load():
            point = self._points.get(o.point_id)
            if not isinstance(point, BacnetPoint):
                log.warning("pending relinquish of '%s' dropped: no such BACnet point any more", o.point_id)
                self.overrides.drop(o.point_id)
                continue
            left = (o.relinquish_at - now).total_seconds()
            async with self._lock_for(point.id):
                if left > 0:
                    self.restores.schedule(point, o.value, left)
                    log.info("pending relinquish of %s at priority %d resumed (%.0f s left)",
                             point.id, o.priority, left)
                    continue
                log.info("relinquishing %s at priority %d: its time passed while the server was down",
                         point.id, o.priority)
                try:
                    await self._relinquish_audited(point, o.priority, actor="restore",
                                                   reason="end of a temporary write (after a restart)")
                except DeviceError as err:  # kept in the book: the next start tries again
                    log.warning("relinquish of %s after restart failed: %s", point.id, err)

    async def _write_checked(self, point: Point, value: Value, record: AuditRecord) -> WriteResult:
        # Runs with the point's lock held, as the restore timer does: the book never lags behind.
        result = await super()._write_checked(point, value, record)
        if result.outcome == WriteOutcome.ACCEPTED and isinstance(point, BacnetPoint):
            if result.restore_at is not None:
                self.overrides.put(Override(point_id=point.id, priority=point.priority,
                                            relinquish_at=result.restore_at, value=value, audit_id=result.audit_id))
            else:
                self.overrides.drop(point.id)
        return result

    async def _restore(self, point: Point, value: Value) -> None:
        """The end of a temporary write: relinquish the point's priority (audited as a restore)."""
        assert isinstance(point, BacnetPoint)
        await self._relinquish_audited(point, point.priority, actor="restore", reason="end of a temporary write")

    async def _relinquish_audited(self, point: BacnetPoint, priority: int, *, actor: str,
                                  reason: str | None) -> AuditRecord:
        restore = actor == "restore"
        record = AuditRecord(
            server=self.name, actor=actor, point_id=point.id, device_id=point.device_id, reason=reason,
            outcome=WriteOutcome.RESTORED if restore else WriteOutcome.ACCEPTED,
            message=f"relinquish priority {priority}",
        )
        try:
            record.previous_value = (await self.read_value(point)).value
            await self.bacnet.relinquish(point, priority)
            record.readback_value = (await self.read_value(point)).value
        except DeviceError as err:
            record.outcome = WriteOutcome.RESTORE_FAILED if restore else WriteOutcome.FAILED
            record.code, record.message = err.code, f"relinquish priority {priority}: {err.message}"
            self.audit.append(record)
            raise
        self.overrides.drop(point.id, priority)
        record.message = f"relinquished priority {priority}; the device now reads {record.readback_value}"
        self.audit.append(record)
        return record

    # -- relinquish --------------------------------------------------------------------------
    async def relinquish(self, point_id: str, priority: int | None = None, *, reason: str | None = None,
                         actor: str = "unknown") -> RelinquishResult:
        """Release EAIO's (or anyone's) command at ``priority`` (default: the point's)."""
        record = AuditRecord(server=self.name, actor=actor, point_id=point_id, reason=reason,
                             outcome=WriteOutcome.REFUSED, message="relinquish")
        try:
            point = self._bacnet_point(point_id)
            record.device_id = point.device_id
            if not point.writable:
                raise DeviceError(f"'{point_id}' is not writable, so EAIO never commands it", code="not_writable",
                                  device=point.device_id, point=point_id)
            prio = point.priority if priority is None else priority
            if isinstance(prio, bool) or not 1 <= prio <= 16:
                raise ValidationFailed(f"priority must be 1..16, got {priority!r}")
            if reason is not None and len(reason) > 500:
                raise ValidationFailed("reason must be at most 500 characters")
        except (DeviceError, ValidationFailed) as err:
            self._audit_error(record, WriteOutcome.REFUSED, err)
            raise
        async with self._lock_for(point.id):
            if prio == point.priority:
                self.restores.cancel(point.id)  # released now: the timer has nothing left to do
            done = await self._relinquish_audited(point, prio, actor=actor, reason=reason)
        return RelinquishResult(point_id=point.id, priority=prio, outcome=done.outcome.value,
                                previous_value=done.previous_value, readback_value=done.readback_value,
                                audit_id=done.id, message=done.message)

    # -- raw BACnet ----------------------------------------------------------------------------
    async def who_is(self, low: int | None = None, high: int | None = None, address: str | None = None,
                     timeout_s: float = 3.0) -> WhoIsResult:
        if (low is None) != (high is None):
            raise ValidationFailed("give both low and high device instances, or neither")
        if low is not None and high is not None and not 0 <= low <= high <= MAX_INSTANCE + 1:
            raise ValidationFailed(f"need 0 <= low <= high <= {MAX_INSTANCE + 1}, got {low}..{high}")
        if address is not None:
            try:
                check_bacnet_address(address)
            except ValueError as err:
                raise ValidationFailed(f"address {address!r}: {err}") from err
        if not 0.1 <= timeout_s <= 30:
            raise ValidationFailed(f"timeout_s must be 0.1..30, got {timeout_s}")
        found = await self.bacnet.who_is(low, high, address, timeout_s)
        by_instance = {d.connection.device_instance: d.id for d in self._devices.values()}  # type: ignore[attr-defined]
        devices = [BacnetDeviceFound(**f, device_id=by_instance.get(int(f["device_instance"]))) for f in found]
        return WhoIsResult(devices=devices, count=len(devices))

    async def list_objects(self, device_id: str) -> ObjectList:
        device = self.device(device_id)
        points = {(p.address.type, p.address.instance): p.id for p in device.points  # type: ignore[attr-defined]
                  if isinstance(p, BacnetPoint)}
        rows = await self.bacnet.list_objects(device_id)
        objects = [BacnetObjectInfo(**{**r, "point_id": r.get("point_id") or points.get((r["type"], r["instance"]))})
                   for r in rows]
        return ObjectList(device_id=device_id, objects=objects, count=len(objects))

    async def read_property(self, device_id: str, object_id: str, property: str,
                            index: int | None = None) -> PropertyValue:
        self.device(device_id)
        if not _OBJECT_ID.match(object_id):
            raise ValidationFailed(f"object_id must look like 'analog-input,1' (type,instance), got {object_id!r}")
        if not _PROPERTY.match(property):
            raise ValidationFailed(f"property must be a BACnet property name like 'present-value', got {property!r}")
        if index is not None and index < 0:
            raise ValidationFailed(f"index must be 0 or more, got {index}")
        value = await self.bacnet.read_property(device_id, object_id, property, index)
        return PropertyValue(device_id=device_id, object_id=object_id, property=property, index=index, value=value)

    async def read_priority_array(self, point_id: str) -> PriorityArray:
        point = self._bacnet_point(point_id)
        if not point.commandable:
            raise DeviceError(f"'{point_id}' ({point.address.type}) has no priority array", code="invalid_argument",
                              device=point.device_id, point=point_id)
        pa = await self.bacnet.read_priority_array(point)
        pending = next((p.restore_at for p in self.restores.pending() if p.point.id == point.id), None)
        return PriorityArray(
            point_id=point.id, device_id=point.device_id, object_id=point.address.object_id,
            priorities=[PrioritySlot(**s) for s in pa.get("priorities", [])],
            active_priority=pa.get("active_priority"), relinquish_default=pa.get("relinquish_default"),
            present_value=pa.get("present_value"), pending_relinquish=pending,
        )

    def _bacnet_point(self, point_id: str) -> BacnetPoint:
        point = self.point(point_id)
        assert isinstance(point, BacnetPoint)
        return point


def build_bacnet_service(cfg: SiteConfig, adapter: Adapter | None = None) -> BacnetService:
    return BacnetService(cfg, adapter)


def register_bacnet_tools(server: MCPServer, service: CoreService) -> None:
    register_core_tools(server, service)
    svc: Any = service  # a BacnetService

    async def who_is(
        low: Annotated[int | None, Field(description="Lowest device instance to ask for (with high)")] = None,
        high: Annotated[int | None, Field(description="Highest device instance to ask for (with low)")] = None,
        address: Annotated[str | None, Field(
            description="Ask one address ('192.168.1.20' or '192.168.1.20:47808'); default: broadcast")] = None,
        timeout_s: Annotated[float, Field(description="How long to collect I-Am answers, 0.1..30 s")] = 3.0,
    ) -> Annotated[CallToolResult, WhoIsResult]:
        return await run_tool(svc, ToolName.WHO_IS, lambda: svc.who_is(low, high, address, timeout_s),
                              low=low, high=high, address=address, timeout_s=timeout_s)

    async def list_objects(
        device_id: Annotated[str, Field(description="A device id from list_devices")],
    ) -> Annotated[CallToolResult, ObjectList]:
        return await run_tool(svc, ToolName.LIST_OBJECTS, lambda: svc.list_objects(device_id), device_id=device_id)

    async def read_property(
        device_id: Annotated[str, Field(description="A device id from list_devices")],
        object_id: Annotated[str, Field(description="type,instance, e.g. 'analog-input,1' (see list_objects)")],
        property: Annotated[str, Field(description="A BACnet property name, e.g. 'present-value', "
                                                   "'status-flags', 'reliability', 'units', 'object-name'")],
        index: Annotated[int | None, Field(description="Array index for array properties (0: the length)")] = None,
    ) -> Annotated[CallToolResult, PropertyValue]:
        return await run_tool(svc, ToolName.READ_PROPERTY, lambda: svc.read_property(device_id, object_id, property,
                                                                                      index),
                              device_id=device_id, object_id=object_id, property=property, index=index)

    async def read_priority_array(
        point_id: Annotated[str, Field(description="A writable (commandable) point id")],
    ) -> Annotated[CallToolResult, PriorityArray]:
        return await run_tool(svc, ToolName.READ_PRIORITY_ARRAY, lambda: svc.read_priority_array(point_id),
                              point_id=point_id)

    async def relinquish(
        point_id: Annotated[str, Field(description="A writable point id")],
        ctx: Context,
        priority: Annotated[int | None, Field(description="1..16; default: the point's write priority")] = None,
        reason: Annotated[str | None, Field(description="Why, for the audit log (max 500 chars)")] = None,
    ) -> Annotated[CallToolResult, RelinquishResult]:
        return await run_tool(svc, ToolName.RELINQUISH,
                              lambda: svc.relinquish(point_id, priority, reason=reason, actor=actor_of(ctx)),
                              point_id=point_id, priority=priority)

    server.add_tool(who_is, name=ToolName.WHO_IS.value, annotations=READ_ONLY, description=(
        "Discover BACnet devices: send Who-Is (broadcast, or to one address) and list the I-Am answers with "
        "device instance, address, max APDU and segmentation, and the site's id for devices it knows."
    ))
    server.add_tool(list_objects, name=ToolName.LIST_OBJECTS.value, annotations=READ_ONLY, description=(
        "List every object a BACnet device holds (its object-list) with name and units, and which configured "
        "point each one is. For exploring a controller beyond the configured points."
    ))
    server.add_tool(read_property, name=ToolName.READ_PROPERTY.value, annotations=READ_ONLY, description=(
        "Read one raw property of one BACnet object (e.g. status-flags, reliability, priority-array, "
        "object-name): for diagnosing a point or exploring a device. Prefer read_points for values."
    ))
    server.add_tool(read_priority_array, name=ToolName.READ_PRIORITY_ARRAY.value, annotations=READ_ONLY,
                    description=(
        "Show who commands a writable BACnet point: the occupied slots of its priority array (1 highest), the "
        "slot in control, the relinquish default, the present value, and when EAIO will relinquish its own "
        "temporary write."
    ))
    server.add_tool(relinquish, name=ToolName.RELINQUISH.value, annotations=RELINQUISH_HINTS, description=(
        "Release the command at one priority of a writable BACnet point (default: the priority EAIO writes at), "
        "handing control back to lower priorities or the relinquish default. Audited like a write."
    ))
