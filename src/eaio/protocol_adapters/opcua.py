"""The OPC-UA adapter: batched reads, typed writes, data-change subscriptions, raw OPC-UA.

``async with adapter:`` starts one session keeper per device (``opcua_link.Link``: one asyncua
Client at a time, a new session after every loss, backoff between attempts) and waits for each
first attempt; a server that is down does not fail it. Reads ask every point of a device in one
Read request (split at ``max_nodes_per_read``), writes coerce the value to the node's data type
(read once per node and session), subscriptions live in ``opcua_sub``, the raw tools in
``opcua_raw``, value and status conversion in ``opcua_read``. No asyncua type leaves these modules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

from asyncua import ua

from ..errors import DeviceError
from ..models import OpcuaDevice, OpcuaPoint, Point, Quality, Reading, Reason, Value, trusted, utcnow
from . import opcua_fast as fast
from . import opcua_raw as raw
from .base import ConfiguredPoints, ReadingCallback, failed_reading
from .opcua_link import CommFailure, Invalid, Link, Refused, quiet_asyncua
from .opcua_read import NodeIdError, builtin_type, coerce, decode, split, status_name, type_name
from .opcua_sub import SubHub

__all__ = ["OpcuaAdapter"]

log = logging.getLogger(__name__)
_NO_NODE = frozenset({"BadNodeIdUnknown", "BadNodeIdInvalid"})
_NOT_WRITABLE = frozenset({"BadUserAccessDenied", "BadNotWritable"})
_BAD_VALUE = frozenset({"BadTypeMismatch", "BadOutOfRange", "BadIndexRangeInvalid", "BadWriteNotSupported"})
# The fields a Reading(point_id=, value=, unit=, ts=, device_id=) reports as set (exclude_unset).
_SET = frozenset({"point_id", "value", "unit", "ts", "device_id"})
# Read statuses whose detail starts with another code than protocol_error.
_DETAIL_CODE = {"BadNodeIdUnknown": "invalid_argument", "BadNodeIdInvalid": "invalid_argument",
                "BadNoCommunication": "device_offline", "BadCommunicationError": "device_offline"}


class OpcuaAdapter(ConfiguredPoints[OpcuaDevice, OpcuaPoint]):
    """Reads, writes and subscribes to the variable nodes of OPC-UA servers. Never connects in
    the constructor."""

    protocol = "opcua"
    _label = "OPC-UA"
    _point_type = OpcuaPoint

    def __init__(self, devices: Sequence[OpcuaDevice], *, role: str = "tool") -> None:
        super().__init__(devices)
        self._role = role
        self._links: dict[str, Link] = {}
        self._hub: SubHub | None = None

    # -- lifetime -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        quiet_asyncua()
        # Fresh links (and their asyncio primitives) each time: the next use may be another loop.
        self._links = {d.id: Link(d, self._role) for d in self._devices}
        self._hub = SubHub(self._links)
        self._hub.start()
        try:
            await asyncio.gather(*(link.start() for link in self._links.values()))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the subscriptions and close every session."""
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        await asyncio.gather(*(link.close() for link in self._links.values()))

    # -- what it serves -----------------------------------------------------------------------
    def health(self) -> list[dict[str, object]]:
        """Per device: device_id, endpoint, online (None until the first attempt ends), last_error,
        requests, failures, session (one is open now), subscriptions (live monitored items),
        sessions (opened so far), security, breaker, last_ok."""
        out = []
        for d in self._devices:
            link = self._links.get(d.id)
            if link is None:  # not open
                link = Link(d, self._role)
            out.append(link.health(len(self._hub.active(d.id)) if self._hub is not None else 0))
        return out

    def request_count(self) -> int:
        """Service requests this adapter sent (Read, Write, Browse, CreateMonitoredItems...),
        not asyncua's own (connect, publish, status probe)."""
        return sum(link.requests for link in self._links.values())

    # -- reading ------------------------------------------------------------------------------
    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """One Reading per requested point, in order. Devices are read concurrently; a device
        that fails gives bad readings (comm_failure), never an exception."""
        return await self._read_by_device(
            points, lambda device_id, pts, results: self._read_device(self._link(device_id), pts, results))

    async def _read_device(self, link: Link, points: list[OpcuaPoint], results: dict[str, Reading]) -> None:
        failure = link.unavailable()
        if failure is not None:
            _fail_rest(link, points, results, failure)
            return
        nodes: list[tuple[OpcuaPoint, ua.NodeId]] = []
        for p in points:
            try:
                nodes.append((p, link.node(p.address.node_id)))
            except NodeIdError as err:
                results[p.id] = failed_reading(p, link.device.id, "protocol_status:BadNodeIdInvalid",
                                        f"invalid_argument: {link.where}: {err}")
        if not nodes:
            return
        first, *rest = split(nodes, link.device.connection.max_nodes_per_read)
        try:
            # One request alone first: a dead server then costs one timeout, not one per batch.
            await self._read_batch(link, first, results)
        except CommFailure as err:
            _fail_rest(link, points, results, err)
            return
        outcomes = await asyncio.gather(*(self._read_batch(link, b, results) for b in rest), return_exceptions=True)
        for batch, outcome in zip(rest, outcomes, strict=True):
            if isinstance(outcome, CommFailure):
                _fail_rest(link, [p for p, _ in batch], results, outcome)
            elif isinstance(outcome, BaseException):
                log.error("opcua %s: reading failed", link.device.id, exc_info=outcome)
                for p, _ in batch:
                    results.setdefault(p.id, failed_reading(p, link.device.id, "protocol_status:internal_error",
                                                     f"protocol_error: {link.where}: {outcome!r}"))

    async def _read_batch(self, link: Link, batch: list[tuple[OpcuaPoint, ua.NodeId]],
                          results: dict[str, Reading]) -> None:
        params = fast.value_params([n for _, n in batch])
        try:
            values = await link.call(lambda c: fast.read(c.uaclient, params))
        except (Refused, Invalid) as err:
            name = err.name if isinstance(err, Refused) else "BadEncodingError"
            for p, _ in batch:  # the whole request was refused (too many nodes, say)
                results[p.id] = failed_reading(p, link.device.id, f"protocol_status:{name}",
                                        f"protocol_error: {link.where}: the Read was refused ({err})")
            return
        now = utcnow()
        for (p, _), dv in zip(batch, values, strict=True):
            results[p.id] = _reading(link, p, dv, now)

    # -- writing ------------------------------------------------------------------------------
    async def write(self, point: Point, value: Value) -> None:
        """Write the Value attribute, coerced to the node's data type. Raises DeviceError
        (unknown_point, not_writable, invalid_argument, device_offline, timeout, protocol_error)."""
        op = self._known(point)
        link = self._link(op.device_id)
        node = op.address.node_id
        where = f"{op.id} ({node})"
        try:
            failure = link.unavailable()
            if failure is not None:  # before the node id: an nsu= one needs the session's namespaces
                raise failure
            nid = link.node(node)
            variant_type = await self._write_type(link, nid, op)
            try:
                wire = coerce(value, variant_type)
            except ValueError as err:
                raise DeviceError(f"{value!r} cannot be written to {where}: {err}", code="invalid_argument",
                                  device=op.device_id, point=op.id) from None
            params = ua.WriteParameters(NodesToWrite=[ua.WriteValue(
                NodeId=nid, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(ua.Variant(wire, variant_type)))])
            (status,) = await link.call(lambda c: c.uaclient.write(params))
        except CommFailure as err:
            raise DeviceError(f"{link.where}: {err}", code=err.code, device=op.device_id, point=op.id) from err
        except (NodeIdError, Invalid) as err:
            raise DeviceError(f"{where}: {err}", code="invalid_argument", device=op.device_id, point=op.id) from err
        except Refused as err:
            raise DeviceError(f"{link.where}: the Write to {where} was refused ({err})", code="protocol_error",
                              device=op.device_id, point=op.id) from err
        if not status.is_good():
            raise _write_error(link, op, status_name(status), value)

    async def _write_type(self, link: Link, nid: ua.NodeId, op: OpcuaPoint) -> ua.VariantType:
        """The built-in type the node takes: its DataType, or (abstract types) its current value's."""
        key = op.address.node_id
        cached = link.types.get(key)
        if cached is not None:
            return cached
        params = ua.ReadParameters(MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Neither, NodesToRead=[
            ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.DataType),
            ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value)])
        data_type, current = await link.call(lambda c: c.uaclient.read(params))
        name = status_name(data_type.StatusCode)
        if name in _NO_NODE:
            raise DeviceError(f"no node {key} on {link.where} (point {op.id})", code="invalid_argument",
                              device=op.device_id, point=op.id)
        if not data_type.StatusCode.is_good():
            raise DeviceError(f"{link.where}: the data type of {key} cannot be read ({name})", code="protocol_error",
                              device=op.device_id, point=op.id)
        dt = data_type.Value.Value if data_type.Value is not None else None
        variant_type = builtin_type(dt)
        now = current.Value if current.StatusCode.is_good() else None
        if variant_type is None and now is not None and now.VariantType != ua.VariantType.Null and not now.is_array:
            variant_type = now.VariantType
        if variant_type is None:
            shown = dt.to_string() if isinstance(dt, ua.NodeId) else repr(dt)
            raise DeviceError(f"{key} has data type {shown}, which EAIO cannot write", code="invalid_argument",
                              device=op.device_id, point=op.id)
        link.types[key] = variant_type
        return variant_type

    # -- subscriptions ------------------------------------------------------------------------
    async def subscribe(self, points: Sequence[Point], callback: ReadingCallback) -> None:
        """Monitor the points that want data changes (the point's ``subscribe``, else its
        device's); returns once each has been tried. See ``pushed``."""
        if self._hub is None:
            raise RuntimeError("the OPC-UA adapter is not open (use 'async with adapter:')")
        await self._hub.subscribe([op for p in points if (op := self._resolve(p)) is not None], callback)

    def pushed(self, points: Sequence[Point]) -> list[Point]:
        """The points whose values a live subscription delivers now; poll the others. A point
        leaves this list while its session is lost and comes back once subscribed anew."""
        if self._hub is None:
            return []
        out: list[Point] = []
        for p in points:
            op = self._resolve(p)
            if op is not None and op.id in self._hub.active(op.device_id):
                out.append(p)
        return out

    # -- raw OPC-UA, for the MCP server's extra tools (see opcua_raw) ---------------------------
    async def browse(self, device_id: str, node_id: str | None = None, depth: int = 1,
                     limit: int = 500) -> list[dict[str, Any]]:
        """Nodes below ``node_id`` (default Objects, i=85), ``depth`` levels down, at most ``limit``:
        {node_id, browse_name, display_name, node_class, data_type (variables), depth, parent}."""
        return await raw.browse(self._link(device_id), node_id, depth, limit)

    async def read_nodes(self, device_id: str, node_ids: Sequence[str]) -> list[dict[str, Any]]:
        """{node_id, value, data_type, status, source_timestamp, server_timestamp} per node."""
        return await raw.read_nodes(self._link(device_id), list(node_ids))

    async def read_history(self, point_or_device_id: Point | str, node_id: str | None, start: datetime,
                           end: datetime, limit: int = 1000) -> list[dict[str, Any]]:
        """Raw history, oldest first: {ts, value, status}. Give a point (``node_id`` None), or a
        device id and a node id."""
        if isinstance(point_or_device_id, str):
            if node_id is None:
                raise DeviceError("read_history of a device needs a node id", code="invalid_argument",
                                  device=point_or_device_id)
            return await raw.read_history(self._link(point_or_device_id), node_id, start, end, limit, None)
        op = self._known(point_or_device_id)
        return await raw.read_history(self._link(op.device_id), node_id or op.address.node_id, start, end, limit,
                                      op if node_id is None else None)

    async def server_status(self, device_id: str) -> dict[str, Any]:
        """State, start/current time, product and build, session and security; an offline server
        answers with connected false and last_error."""
        return await raw.server_status(self._link(device_id))

    async def limits(self, point: Point) -> dict[str, Any]:
        """{eu_range: [low, high] | None, unit: str | None} from the node's EURange and EngineeringUnits."""
        op = self._known(point)
        return await raw.limits(self._link(op.device_id), op)

    # -- helpers ------------------------------------------------------------------------------
    def _link(self, device_id: str) -> Link:
        if not self._links:
            raise RuntimeError("the OPC-UA adapter is not open (use 'async with adapter:')")
        link = self._links.get(device_id)
        if link is None:
            raise DeviceError(f"no OPC-UA device '{device_id}'", code="invalid_argument", device=device_id)
        return link



def _reading(link: Link, p: OpcuaPoint, dv: ua.DataValue, now: datetime) -> Reading:
    s = decode(dv, p, now)
    dev = link.device.id
    if s.quality == Quality.GOOD:
        # Every field is already valid: built without pydantic's validation (see models.trusted),
        # a quarter of what reading a thousand nodes costs otherwise.
        return trusted(Reading, {"point_id": p.id, "value": s.value, "unit": p.unit, "ts": s.ts,
                                 "quality": Quality.GOOD, "reasons": [], "device_id": dev, "detail": None}, _SET)
    detail = None
    if "protocol_status:unsupported_value" in s.reasons:
        shown = type_name(dv.Value) or "null"
        detail = f"protocol_error: {link.where}: {p.address.node_id}: a {shown} value is not a " \
                 f"{'bool' if p.is_binary else 'number'}"
    elif s.quality == Quality.BAD:
        code = _DETAIL_CODE.get(s.status, "protocol_error")
        detail = f"{code}: {link.where}: {p.address.node_id}: {'no such node' if s.status in _NO_NODE else s.status}"
    return Reading(point_id=p.id, value=s.value, unit=p.unit, ts=s.ts, device_id=dev, quality=s.quality,
                   reasons=s.reasons, detail=detail)


def _write_error(link: Link, op: OpcuaPoint, name: str, value: Value) -> DeviceError:
    node = op.address.node_id
    if name in _NOT_WRITABLE:
        return DeviceError(f"{link.where}: {node} refuses writes ({name})", code="not_writable",
                           device=op.device_id, point=op.id)
    if name in _NO_NODE:
        return DeviceError(f"no node {node} on {link.where} (point {op.id})", code="invalid_argument",
                           device=op.device_id, point=op.id)
    code = "invalid_argument" if name in _BAD_VALUE else "protocol_error"
    return DeviceError(f"{link.where}: writing {value!r} to {node} was refused ({name})", code=code,
                       device=op.device_id, point=op.id)


def _fail_rest(link: Link, points: Sequence[OpcuaPoint], results: dict[str, Reading], err: CommFailure) -> None:
    detail = f"{err.code}: {link.where}: {err}"
    for p in points:
        if p.id not in results:
            results[p.id] = failed_reading(p, link.device.id, Reason.COMM_FAILURE, detail)
