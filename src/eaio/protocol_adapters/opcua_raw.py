"""Raw OPC-UA for the MCP server's extra tools: browse, read nodes, history, server status, limits.

Each takes a device's ``Link`` and answers in plain JSON-able Python. Errors are DeviceErrors:
``invalid_argument`` for a node id that does not parse or names no node, ``device_offline`` /
``timeout`` when the server cannot be asked, ``protocol_error`` for other refusals.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from ..errors import DeviceError
from ..models import OpcuaPoint, utcnow
from .opcua_link import CommFailure, Invalid, Link, Refused
from .opcua_read import NodeIdError, iso, plain, point_value, split, status_name, timestamp, type_name
from .opcua_units import from_eu

__all__ = ["browse", "limits", "read_history", "read_nodes", "server_status"]

OBJECTS = "i=85"
_NO_NODE = frozenset({"BadNodeIdUnknown", "BadNodeIdInvalid"})
_NO_HISTORY = frozenset({"BadHistoryOperationUnsupported", "BadHistoryOperationInvalid", "BadNotReadable",
                         "BadUserAccessDenied"})


def _error(link: Link, err: Exception, what: str) -> DeviceError:
    """A DeviceError for a failed request about ``what`` (a node id, usually)."""
    dev = link.device.id
    if isinstance(err, CommFailure):
        return DeviceError(f"{link.where}: {err}", code=err.code, device=dev)
    if isinstance(err, NodeIdError | Invalid):
        return DeviceError(f"{what}: {err}", code="invalid_argument", device=dev)
    name = err.name if isinstance(err, Refused) else str(err)
    return DeviceError(f"{link.where}: {what}: {name}", code="protocol_error", device=dev)


def _node(link: Link, text: str) -> ua.NodeId:
    try:
        return link.node(text)
    except NodeIdError as err:
        # Without a session the server's namespaces are unknown: that, not the id, is the problem.
        failure = link.unavailable() if "nsu=" in text else None
        if failure is not None:
            raise _error(link, failure, text) from None
        raise DeviceError(str(err), code="invalid_argument", device=link.device.id) from None


async def _read(link: Link, nodes: Sequence[tuple[ua.NodeId, int]], what: str) -> list[ua.DataValue]:
    """One Read per ``max_nodes_per_read`` (node, attribute) pairs."""
    out: list[ua.DataValue] = []
    for batch in split(nodes, link.device.connection.max_nodes_per_read):
        params = ua.ReadParameters(MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
                                   NodesToRead=[ua.ReadValueId(NodeId=n, AttributeId=a) for n, a in batch])
        try:
            out += await link.call(lambda c, params=params: c.uaclient.read(params))
        except (CommFailure, Refused, NodeIdError, Invalid) as err:
            raise _error(link, err, what) from err
    return out


# -- browse ---------------------------------------------------------------------------------------
async def browse(link: Link, node_id: str | None, depth: int, limit: int) -> list[dict[str, Any]]:
    """The nodes below ``node_id`` (default Objects) along hierarchical references, level by
    level down to ``depth``, at most ``limit``: {node_id, browse_name, display_name, node_class,
    data_type (variables), depth, parent}."""
    start = node_id or OBJECTS
    level = [_node(link, start)]
    seen = {level[0].to_string()}
    rows: list[dict[str, Any]] = []
    variables: list[tuple[dict[str, Any], ua.NodeId]] = []
    for d in range(1, depth + 1):
        found = await _browse_level(link, level, start if d == 1 else None)
        level = []
        for parent, ref in found:
            if len(rows) >= limit:
                break
            nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
            text = nid.to_string()
            if getattr(ref.NodeId, "ServerIndex", 0) or text in seen:
                continue  # on another server, or reached by a second path
            seen.add(text)
            row = {"node_id": text, "browse_name": ref.BrowseName.to_string(), "display_name": ref.DisplayName.Text,
                   "node_class": ua.NodeClass(ref.NodeClass).name, "data_type": None, "depth": d,
                   "parent": parent.to_string()}
            rows.append(row)
            level.append(nid)
            if ref.NodeClass == ua.NodeClass.Variable:
                variables.append((row, nid))
        if len(rows) >= limit or not level:
            break
    if variables:
        dvs = await _read(link, [(n, ua.AttributeIds.DataType) for _, n in variables], "data types")
        for (row, _), dv in zip(variables, dvs, strict=True):
            row["data_type"] = _type_of(dv.Value.Value if dv.StatusCode.is_good() and dv.Value else None)
    return rows


async def _browse_level(link: Link, nodes: list[ua.NodeId], root: str | None) -> list[tuple[ua.NodeId, Any]]:
    """(parent, reference) for every forward hierarchical reference of ``nodes``."""
    out: list[tuple[ua.NodeId, Any]] = []
    for batch in split(nodes, link.device.connection.max_nodes_per_read):
        params = ua.BrowseParameters(NodesToBrowse=[ua.BrowseDescription(
            NodeId=n, BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences), IncludeSubtypes=True,
            NodeClassMask=0, ResultMask=ua.BrowseResultMask.All) for n in batch])
        try:
            results = await link.call(lambda c, params=params: c.uaclient.browse(params))
            for parent, result in zip(batch, results, strict=True):
                name = status_name(result.StatusCode)
                if root is not None and name in _NO_NODE:
                    raise DeviceError(f"no node {root} on {link.where}", code="invalid_argument",
                                      device=link.device.id)
                refs = list(result.References or [])
                point = result.ContinuationPoint
                while point:  # the server hands long lists out in parts
                    more = ua.BrowseNextParameters(ReleaseContinuationPoints=False, ContinuationPoints=[point])
                    (nxt,) = await link.call(lambda c, more=more: c.uaclient.browse_next(more))
                    refs += nxt.References or []
                    point = nxt.ContinuationPoint
                out += [(parent, r) for r in refs]
        except (CommFailure, Refused, NodeIdError, Invalid) as err:
            raise _error(link, err, "browse") from err
    return out


def _type_of(data_type: Any) -> str | None:
    if not isinstance(data_type, ua.NodeId):
        return None
    if data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int):
        return ua.ObjectIdNames.get(data_type.Identifier, data_type.to_string())
    return data_type.to_string()


# -- values ---------------------------------------------------------------------------------------
async def read_nodes(link: Link, node_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The Value attribute of each node: {node_id, value, data_type, status, source_timestamp,
    server_timestamp}; a node that does not exist answers with its status (BadNodeIdUnknown)."""
    nodes = [_node(link, n) for n in node_ids]
    dvs = await _read(link, [(n, ua.AttributeIds.Value) for n in nodes], "read")
    return [{"node_id": text, "value": plain(dv.Value), "data_type": type_name(dv.Value),
             "status": status_name(dv.StatusCode), "source_timestamp": iso(dv.SourceTimestamp),
             "server_timestamp": iso(dv.ServerTimestamp)} for text, dv in zip(node_ids, dvs, strict=True)]


async def read_history(link: Link, node_id: str, start: datetime, end: datetime, limit: int,
                       point: OpcuaPoint | None) -> list[dict[str, Any]]:
    """Raw history between ``start`` and ``end``, oldest first, at most ``limit`` values:
    {ts, value, status}. A point's values are converted as its readings are."""
    nid = _node(link, node_id)
    details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=_utc(start), EndTime=_utc(end),
                                        NumValuesPerNode=limit, ReturnBounds=False)
    def convert(v: ua.Variant | None) -> Any:
        if point is None:
            return plain(v)
        return None if v is None else point_value(v.Value, v.VariantType, point)

    values: list[ua.DataValue] = []
    cont: bytes | None = None
    while True:
        result = await _history(link, nid, details, cont, release=False, what=node_id)
        values += result.HistoryData.DataValues if result.HistoryData is not None else []
        cont = result.ContinuationPoint
        if not cont or len(values) >= limit:
            break
    if cont:  # stopped before the server ran out: let it forget where it was
        await _history(link, nid, details, cont, release=True, what=node_id)
    now = utcnow()
    return [{"ts": timestamp(dv.SourceTimestamp, dv.ServerTimestamp, now).isoformat(), "value": convert(dv.Value),
             "status": status_name(dv.StatusCode)} for dv in values[:limit]]


async def _history(link: Link, nid: ua.NodeId, details: ua.ReadRawModifiedDetails, cont: bytes | None,
                   release: bool, what: str) -> ua.HistoryReadResult:
    params = ua.HistoryReadParameters(HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
                                      ReleaseContinuationPoints=release,
                                      NodesToRead=[ua.HistoryReadValueId(NodeId=nid, ContinuationPoint=cont)])
    try:
        (result,) = await link.call(lambda c: c.uaclient.history_read(params))
    except (CommFailure, Refused, NodeIdError, Invalid) as err:
        raise _error(link, err, what) from err
    name = status_name(result.StatusCode)
    if name in _NO_NODE:
        raise DeviceError(f"no node {what} on {link.where}", code="invalid_argument", device=link.device.id)
    if name in _NO_HISTORY:
        raise DeviceError(f"{link.where} keeps no history of {what} ({name})", code="invalid_argument",
                          device=link.device.id)
    if not result.StatusCode.is_good() and not release:
        raise DeviceError(f"{link.where}: history of {what}: {name}", code="protocol_error", device=link.device.id)
    return result


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# -- the server -----------------------------------------------------------------------------------
async def server_status(link: Link) -> dict[str, Any]:
    """The server's ServerStatus and this adapter's session; never raises for an offline server
    (``connected`` is then false and ``last_error`` says why)."""
    conn = link.device.connection
    policy, mode = link.security()
    out: dict[str, Any] = {
        "device_id": link.device.id, "endpoint": conn.endpoint, "connected": link.client is not None,
        "security_policy": policy, "security_mode": mode, "username": conn.username,
        "session_id": link.client.session_id if link.client is not None else None, "sessions": link.sessions,
        "last_error": link.last_error,
    }
    try:
        (dv,) = await _read(link, [(ua.NodeId(ua.ObjectIds.Server_ServerStatus), ua.AttributeIds.Value)], "status")
    except DeviceError as err:
        out.update(connected=link.client is not None, last_error=str(err))
        return out
    status = dv.Value.Value if dv.Value is not None else None
    if isinstance(status, ua.ServerStatusDataType):
        build = status.BuildInfo
        out.update(
            state=status.State.name if isinstance(status.State, ua.ServerState) else plain(status.State),
            start_time=iso(status.StartTime), current_time=iso(status.CurrentTime),
            product=build.ProductName, product_uri=build.ProductUri, manufacturer=build.ManufacturerName,
            software_version=build.SoftwareVersion, build_number=build.BuildNumber, build_date=iso(build.BuildDate),
            seconds_till_shutdown=status.SecondsTillShutdown,
        )
    return out


async def limits(link: Link, point: OpcuaPoint) -> dict[str, Any]:
    """{eu_range: [low, high] | None, unit: str | None} from the node's EURange and
    EngineeringUnits properties (None for what the node does not have)."""
    nid = _node(link, point.address.node_id)
    paths = [ua.BrowsePath(StartingNode=nid, RelativePath=ua.RelativePath(Elements=[ua.RelativePathElement(
        ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty), IsInverse=False, IncludeSubtypes=True,
        TargetName=ua.QualifiedName(name, 0))])) for name in ("EURange", "EngineeringUnits")]
    try:
        found = await link.call(lambda c: c.uaclient.translate_browsepaths_to_nodeids(paths))
    except (CommFailure, Refused, NodeIdError, Invalid) as err:
        raise _error(link, err, point.address.node_id) from err
    if any(status_name(r.StatusCode) in _NO_NODE for r in found):
        raise DeviceError(f"no node {point.address.node_id} on {link.where}", code="invalid_argument",
                          device=link.device.id, point=point.id)
    targets = [r.Targets[0].TargetId if r.StatusCode.is_good() and r.Targets else None for r in found]
    present = [(i, ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)) for i, t in enumerate(targets) if t]
    values: list[Any] = [None, None]
    if present:
        dvs = await _read(link, [(n, ua.AttributeIds.Value) for _, n in present], point.address.node_id)
        for (i, _), dv in zip(present, dvs, strict=True):
            values[i] = dv.Value.Value if dv.StatusCode.is_good() and dv.Value is not None else None
    rng, eu = values
    return {"eu_range": [rng.Low, rng.High] if isinstance(rng, ua.Range) else None, "unit": _unit(eu)}


def _unit(eu: Any) -> str | None:
    if not isinstance(eu, ua.EUInformation):
        return None
    unit = from_eu(eu.UnitId) if eu.UnitId is not None else ""
    if not unit and eu.DisplayName is not None and eu.DisplayName.Text:
        unit = from_eu(eu.DisplayName.Text)
    return unit or None
