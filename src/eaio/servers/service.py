"""The logic behind the core tools, in a plain class that knows nothing of MCP.

``CoreService`` is written against the adapter interface only, so every protocol server reuses
it. It raises EAIO errors whose ``code`` the tool layer turns into MCP tool errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Self

import anyio

from ..config import SiteConfig
from ..errors import DeviceError, ValidationFailed
from ..models import AuditRecord, Device, Point, PointKind, Quality, Reading, Value, WriteOutcome, WriteResult
from ..protocol_adapters.base import Adapter
from .audit import AuditLog
from .guard import RestoreScheduler, check_write
from .results import (
    DeviceInfo,
    DeviceList,
    HealthReport,
    PendingRestore,
    PointInfo,
    PointList,
    ReadError,
    ReadPointsResult,
)

__all__ = ["CoreService", "ValueCheck"]

log = logging.getLogger(__name__)

# A protocol-specific check that a value can be encoded (e.g. fits a Modbus int16); raises ValueError.
ValueCheck = Callable[[Point, Value], None]
DEVICE_CODES = ("device_offline", "timeout")


class CoreService:
    def __init__(
        self, cfg: SiteConfig, protocol: str, adapter: Adapter, *, value_check: ValueCheck | None = None
    ) -> None:
        self.cfg = cfg
        self.protocol = protocol
        self.adapter = adapter
        self.settings = cfg.server_settings(protocol)
        self.audit = AuditLog(cfg.audit_path(protocol))
        self.restores = RestoreScheduler(self._restore, self._lock_for)
        self.calls: Counter[str] = Counter()
        self._value_check = value_check
        self._started = time.monotonic()
        self._locks: dict[str, asyncio.Lock] = {}
        self._devices = {d.id: d for d in cfg.devices_for(protocol)}
        self._points = {p.id: p for d in self._devices.values() for p in d.points}

    @property
    def name(self) -> str:
        return f"eaio-{self.protocol}"

    async def __aenter__(self) -> Self:
        await self.adapter.__aenter__()
        self._started = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Shielded: a cancelled server (Ctrl-C, SIGTERM) must still put temporary writes back.
        with anyio.CancelScope(shield=True):
            try:
                await self.restores.restore_all()
            finally:
                await self.adapter.__aexit__(*exc)

    # -- lookups -------------------------------------------------------------------------------
    def device(self, device_id: str) -> Device:
        dev = self._devices.get(device_id)
        if dev is None:
            known = ", ".join(sorted(self._devices)) or "none"
            raise DeviceError(f"no {self.protocol} device '{device_id}' (known: {known})", code="unknown_device")
        return dev

    def point(self, point_id: str) -> Point:
        return self.points([point_id])[0]

    def points(self, point_ids: Sequence[str]) -> list[Point]:
        unknown = [pid for pid in point_ids if pid not in self._points]
        if unknown:
            raise DeviceError(
                f"no such point on this {self.protocol} server: {', '.join(unknown)} (list_points shows the ids)",
                code="unknown_point",
            )
        return [self._points[pid] for pid in point_ids]

    # -- list_devices / list_points --------------------------------------------------------------
    def list_devices(self) -> DeviceList:
        online = {h.get("device_id"): h.get("online") for h in self._health()}
        return DeviceList(devices=[
            DeviceInfo(
                id=d.id, name=d.name, protocol=d.protocol, connection=_connection_summary(d),
                point_count=len(getattr(d, "points", [])), online=online.get(d.id),
            )
            for d in self._devices.values()
        ])

    def list_points(self, device_id: str | None = None, zone: str | None = None, kind: str | None = None) -> PointList:
        if device_id is not None:
            self.device(device_id)
        if kind is not None and kind not in PointKind._value2member_map_:
            raise ValidationFailed(f"kind '{kind}' is not one of: {', '.join(k.value for k in PointKind)}")
        chosen = [
            p for p in self._points.values()
            if (device_id is None or p.device_id == device_id)
            and (zone is None or p.zone == zone)
            and (kind is None or p.kind == kind)
        ]
        return PointList(points=[_point_info(p) for p in chosen], count=len(chosen))

    # -- read_points ---------------------------------------------------------------------------
    async def read_points(self, point_ids: Sequence[str]) -> ReadPointsResult:
        ids = list(dict.fromkeys(point_ids))  # de-duplicate, keep the caller's order
        limit = self.settings.max_read_points
        if not ids or len(ids) > limit:
            raise ValidationFailed(f"give 1 to {limit} point ids per call (got {len(ids)})")
        readings = await self.adapter.read(self.points(ids))
        errors = _read_errors(readings)
        failed = {pid for e in errors if e.code in DEVICE_CODES for pid in e.point_ids}
        if errors and failed >= set(ids):
            # Nothing came back: make it an error result so a client cannot mistake it for data.
            first = next(e for e in errors if e.code in DEVICE_CODES)
            detail = "; ".join(
                e.message if e.message.startswith(str(e.device_id)) else f"{e.device_id}: {e.message}" for e in errors
            )
            raise DeviceError(f"no point could be read ({detail})", code=first.code, device=first.device_id)
        return ReadPointsResult(readings=readings, errors=errors)

    async def read_value(self, point: Point) -> Reading:
        (reading,) = await self.adapter.read([point])
        return reading

    # -- write_point -----------------------------------------------------------------------------
    async def write_point(
        self,
        point_id: str,
        value: Value,
        *,
        dry_run: bool = False,
        duration_s: float | None = None,
        reason: str | None = None,
        actor: str = "unknown",
    ) -> WriteResult:
        """Guard, audit and perform one write. Raises DeviceError (after auditing) when refused or failed."""
        record = AuditRecord(
            server=self.name, actor=actor, point_id=point_id, requested_value=value,
            dry_run=dry_run, duration_s=duration_s, reason=reason, outcome=WriteOutcome.REFUSED,
        )
        try:
            point = self.point(point_id)
            record.device_id = point.device_id
            if reason is not None and len(reason) > 500:
                raise ValidationFailed("reason must be at most 500 characters")
            value = self._check(point, value, duration_s)
        except (DeviceError, ValidationFailed) as err:
            self._audit_error(record, WriteOutcome.REFUSED, err)
            raise
        async with self._lock_for(point_id):
            return await self._write_checked(point, value, record)

    def _lock_for(self, point_id: str) -> asyncio.Lock:
        return self._locks.setdefault(point_id, asyncio.Lock())

    def _check(self, point: Point, value: Value, duration_s: float | None) -> Value:
        value = check_write(point, value, duration_s)
        if self._value_check is not None:
            try:
                self._value_check(point, value)
            except ValueError as err:
                raise DeviceError(str(err), code="out_of_bounds", device=point.device_id, point=point.id) from err
        return value

    async def _write_checked(self, point: Point, value: Value, record: AuditRecord) -> WriteResult:
        before = await self.read_value(point)
        record.previous_value = before.value
        if before.value is None and not _never_reported(before):
            # Unreadable now means unwritable too, and a temporary write could never be undone.
            code, message = _failure(before)
            err = DeviceError(f"cannot read '{point.id}' before writing: {message}", code=code, device=point.device_id)
            self._audit_error(record, WriteOutcome.FAILED, err)
            raise err
        if before.value is None and record.duration_s is not None:
            # A pushed point that has reported nothing yet (e.g. a command-only MQTT topic) can be
            # set, but a temporary write would have nothing to go back to.
            err = DeviceError(
                f"'{point.id}' has reported no value yet, so there is nothing to restore after duration_s; "
                "write without duration_s, or wait for a value", code="invalid_argument", device=point.device_id,
            )
            self._audit_error(record, WriteOutcome.REFUSED, err)
            raise err
        if record.dry_run:
            record.outcome, record.message = WriteOutcome.DRY_RUN, "checks passed; nothing written"
            self.audit.append(record)
            return _result(record, value)
        try:
            await self.adapter.write(point, value)
        except DeviceError as err:
            self._audit_error(record, WriteOutcome.FAILED, err)
            raise
        # The value to restore is the one from before the first of overlapping overrides.
        original = self.restores.original_value(point.id)
        restore_value = original if original is not None else before.value
        restore_at = None
        if record.duration_s is not None and restore_value is not None:
            restore_at = self.restores.schedule(point, restore_value, record.duration_s)
        else:
            self.restores.cancel(point.id)  # a permanent write supersedes a pending restore
        after = await self.read_value(point)
        record.readback_value = after.value
        record.outcome = WriteOutcome.ACCEPTED
        record.message = _accepted_message(value, after, restore_at, restore_value)
        self.audit.append(record)
        return _result(record, value, restore_at)

    async def _restore(self, point: Point, value: Value) -> None:
        record = AuditRecord(
            server=self.name, actor="restore", point_id=point.id, device_id=point.device_id,
            requested_value=value, outcome=WriteOutcome.RESTORED, reason="end of a temporary write",
        )
        try:
            record.previous_value = (await self.read_value(point)).value
            await self.adapter.write(point, value)
            record.readback_value = (await self.read_value(point)).value
        except Exception as err:  # any failure must be audited: the override may still be in place
            record.outcome, record.code = WriteOutcome.RESTORE_FAILED, getattr(err, "code", "internal_error")
            record.message = str(err)
            self.audit.append(record)
            raise
        self.audit.append(record)

    def _audit_error(self, record: AuditRecord, outcome: WriteOutcome, err: DeviceError | ValidationFailed) -> None:
        record.outcome, record.code, record.message = outcome, err.code, err.message
        self.audit.append(record)
        err.args = (f"{err.message} (audit {record.id})",)

    # -- server_health -------------------------------------------------------------------------
    def health(self) -> HealthReport:
        devices = self._health()
        ok = bool(devices) and all(d.get("online") is not False for d in devices)
        return HealthReport(
            server=self.name, protocol=self.protocol, status="ok" if ok else "degraded",
            uptime_s=round(time.monotonic() - self._started, 3), devices=devices,
            tool_calls=dict(self.calls), audit_path=str(self.audit.path),
            pending_restores=[
                PendingRestore(point_id=p.point.id, restore_value=p.restore_value, restore_at=p.restore_at)
                for p in self.restores.pending()
            ],
        )

    def _health(self) -> list[dict[str, Any]]:
        return [dict(h) for h in self.adapter.health()]


# -- helpers ---------------------------------------------------------------------------------------
def _never_reported(reading: Reading) -> bool:
    """A push protocol's point that is reachable but has sent nothing yet (not a failure)."""
    return (reading.detail or "").startswith("no_data:")


def _connection_summary(device: Device) -> str:
    conn = getattr(device, "connection", None)
    if conn is None:
        return ""
    where = f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
    unit = getattr(conn, "unit", None)
    return where if unit is None else f"{where} unit {unit}"


def _point_info(p: Point) -> PointInfo:
    address = getattr(p, "address", None)
    return PointInfo(
        id=p.id, name=p.name, kind=p.kind.value, unit=p.unit, brick=p.brick, zone=p.zone, equip=p.equip,
        device_id=p.device_id, writable=p.writable, write_bounds=p.write_bounds, limits=p.limits,
        address=address.model_dump() if address is not None else {},
    )


def _read_errors(readings: Sequence[Reading]) -> list[ReadError]:
    """One error per (device, code): the failed points of a device share one cause."""
    grouped: dict[tuple[str | None, str], ReadError] = {}
    for r in readings:
        if r.quality != Quality.BAD or r.value is not None:
            continue
        code, message = _failure(r)
        err = grouped.setdefault((r.device_id, code), ReadError(device_id=r.device_id, code=code, message=message))
        err.point_ids.append(r.point_id)
    return list(grouped.values())


def _failure(r: Reading) -> tuple[str, str]:
    detail = r.detail or ""
    head, sep, rest = detail.partition(":")
    if sep and head.strip() in DEVICE_CODES:
        return head.strip(), rest.strip()
    status = next((x for x in r.reasons if x.startswith("protocol_status:")), None)
    if status is not None:
        return "protocol_error", detail or status
    if "comm_failure" in r.reasons:
        return "device_offline", detail or "the device did not answer"
    return "protocol_error", detail or ", ".join(r.reasons) or "read failed"


def _result(record: AuditRecord, value: Value, restore_at: Any = None) -> WriteResult:
    return WriteResult(
        point_id=record.point_id, outcome=record.outcome, requested_value=value,
        previous_value=record.previous_value, readback_value=record.readback_value,
        restore_at=restore_at, audit_id=record.id, message=record.message,
    )


def _accepted_message(value: Value, after: Reading, restore_at: Any, restore_value: Value | None) -> str:
    parts = ["written"]
    if after.value is None:
        parts.append(f"but the read-back failed ({after.detail or 'no value'})")
    elif after.value != value and not (isinstance(value, float | int) and abs(float(after.value) - value) < 1e-3):
        parts.append(f"but the device reads back {after.value}")
    if restore_at is not None:
        parts.append(f"; {restore_value} will be restored at {restore_at.isoformat(timespec='seconds')}")
    return " ".join(parts)
