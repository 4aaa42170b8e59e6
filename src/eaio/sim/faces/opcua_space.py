"""The address space of one simulated OPC-UA device: an object per equipment, a variable per point.

A point's node id names both: ``ns=2;s=ChwLoop.DiffPressure`` is variable ``DiffPressure``
(node id exactly the point's) under object ``ChwLoop`` (``ns=2;s=ChwLoop``), organized by the
Objects folder. Ids without a dot, or numeric/GUID/opaque ones, sit under an object named after
the device. Number points are Double analog items with EURange (from ``limits``) and
EngineeringUnits (``opcua_units``); bool points are Boolean. Every node is added in one
AddNodes call through the server's own session: a thousand points take milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from asyncua import Server, ua

from ...models import OpcuaDevice, OpcuaPoint
from ...protocol_adapters.opcua_units import CEFACT_URI, to_eu, unit_id

__all__ = ["NAMESPACE", "ServedNode", "build_space", "resolve_node_ids"]

log = logging.getLogger(__name__)

NAMESPACE = "urn:eaio:sim"  # registered first, so it is index 2 as the site files expect
Value = float | int | bool


@dataclass(frozen=True)
class ServedNode:
    point: OpcuaPoint
    node_id: ua.NodeId
    vtype: ua.VariantType

    def variant(self, value: Value) -> ua.Variant:
        if self.vtype == ua.VariantType.Boolean:
            return ua.Variant(bool(value), ua.VariantType.Boolean)
        return ua.Variant(float(value), ua.VariantType.Double)

    def decode(self, variant: ua.Variant | None) -> Value | None:
        """A client's written value as the sim holds it; None when it is not one."""
        raw = variant.Value if variant is not None else None
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int | float) and self.vtype != ua.VariantType.Boolean:
            return float(raw)
        return None


async def resolve_node_ids(server: Server, points: Sequence[OpcuaPoint]) -> dict[str, ua.NodeId]:
    """Point id -> node id with a namespace index, registering the namespaces the points use:
    ours first (index 2), placeholders up to the highest ``ns=`` index, then ``nsu=`` URIs."""
    await server.register_namespace(NAMESPACE)
    parsed = {p.id: ua.NodeId.from_string(p.address.node_id) for p in points}
    highest = max((n.NamespaceIndex for n in parsed.values() if not _uri(n)), default=2)
    while len(await server.get_namespace_array()) <= highest:
        await server.register_namespace(f"{NAMESPACE}:ns{len(await server.get_namespace_array())}")
    out: dict[str, ua.NodeId] = {}
    for pid, n in parsed.items():
        uri = _uri(n)
        index = await server.register_namespace(uri) if uri else n.NamespaceIndex
        out[pid] = ua.NodeId(n.Identifier, index, n.NodeIdType)
    return out


def _uri(n: ua.NodeId) -> str | None:
    return getattr(n, "NamespaceUri", None) or None


async def build_space(
    server: Server, device: OpcuaDevice, node_ids: Mapping[str, ua.NodeId], served: Mapping[str, Value]
) -> list[ServedNode]:
    """Add the device's objects, variables and their properties; the nodes that were added."""
    ns = await server.get_namespace_index(NAMESPACE)
    objects: dict[ua.NodeId, ua.AddNodesItem] = {}
    nodes: list[ServedNode] = []
    variables: list[ua.AddNodesItem] = []
    for p in device.points:
        nid = node_ids[p.id]
        parent, leaf = _parent_of(nid, device.id, ns)
        if parent not in objects:
            objects[parent] = _object_item(parent)
        node = ServedNode(p, nid, ua.VariantType.Boolean if p.is_binary else ua.VariantType.Double)
        value = served.get(p.id, False if p.is_binary else 0.0)
        variables.append(_variable_item(node, parent, leaf, node.variant(value)))
        nodes.append(node)
    results = await server.iserver.isession.add_nodes([*objects.values(), *variables])
    refused = {item.RequestedNewNodeId: r.StatusCode for item, r in zip([*objects.values(), *variables], results,
                                                                        strict=True) if not r.StatusCode.is_good()}
    for nid, status in refused.items():
        log.warning("sim %s: node %s not added: %s", device.id, nid.to_string(), status.name)
    nodes = [n for n in nodes if n.node_id not in refused and _parent_of(n.node_id, device.id, ns)[0] not in refused]
    props = [item for n in nodes for item in _property_items(n)]
    for item, r in zip(props, await server.iserver.isession.add_nodes(props), strict=True):
        if not r.StatusCode.is_good():
            log.warning("sim %s: property %s not added: %s", device.id, item.BrowseName.Name, r.StatusCode.name)
    return nodes


def _parent_of(nid: ua.NodeId, device_id: str, ns: int) -> tuple[ua.NodeId, str]:
    """The equipment object a variable sits under, and the variable's browse name."""
    if isinstance(nid.Identifier, str) and "." in nid.Identifier.strip("."):
        equip, leaf = nid.Identifier.rsplit(".", 1)
        return ua.NodeId(equip, nid.NamespaceIndex, ua.NodeIdType.String), leaf
    leaf = nid.Identifier if isinstance(nid.Identifier, str) else nid.to_string()
    return ua.NodeId(device_id, ns, ua.NodeIdType.String), leaf


def _object_item(nid: ua.NodeId) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = ua.QualifiedName(str(nid.Identifier), nid.NamespaceIndex)
    item.ParentNodeId = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.Organizes)
    item.NodeClass = ua.NodeClass.Object
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(str(nid.Identifier))
    attrs.Description = ua.LocalizedText(str(nid.Identifier))
    attrs.EventNotifier = 0
    attrs.WriteMask = attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _variable_item(node: ServedNode, parent: ua.NodeId, leaf: str, value: ua.Variant) -> ua.AddNodesItem:
    p = node.point
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node.node_id
    item.BrowseName = ua.QualifiedName(leaf, node.node_id.NamespaceIndex)
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
    item.NodeClass = ua.NodeClass.Variable
    item.TypeDefinition = ua.NodeId(_type_definition(p))
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(leaf)
    attrs.Description = ua.LocalizedText(p.name or p.id)
    attrs.DataType = ua.NodeId(ua.ObjectIds.Boolean if p.is_binary else ua.ObjectIds.Double)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.ArrayDimensions = None
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if p.writable else 0)
    attrs.AccessLevel = attrs.UserAccessLevel = access
    attrs.Historizing = False
    attrs.MinimumSamplingInterval = 0.0
    attrs.WriteMask = attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _type_definition(p: OpcuaPoint) -> int:
    if p.is_binary:
        return ua.ObjectIds.BaseDataVariableType
    # AnalogItemType makes EURange mandatory; without both limits BaseAnalogType says the same, less.
    full_range = p.limits is not None and p.limits.low is not None and p.limits.high is not None
    return ua.ObjectIds.AnalogItemType if full_range else ua.ObjectIds.BaseAnalogType


def _property_items(node: ServedNode) -> list[ua.AddNodesItem]:
    p = node.point
    if p.is_binary:
        return []
    items = []
    if p.limits is not None and p.limits.low is not None and p.limits.high is not None:
        items.append(_property(node.node_id, "EURange", ua.Variant(ua.Range(p.limits.low, p.limits.high)),
                               ua.ObjectIds.Range))
    if p.unit:
        eu = to_eu(p.unit)
        info = ua.EUInformation(
            NamespaceUri=CEFACT_URI,
            UnitId=unit_id(eu.code) if eu else -1,  # -1: no UNECE code; the text still says what it is
            DisplayName=ua.LocalizedText(eu.symbol if eu else p.unit),
            Description=ua.LocalizedText(eu.name if eu else p.unit),
        )
        items.append(_property(node.node_id, "EngineeringUnits", ua.Variant(info), ua.ObjectIds.EUInformation))
    return items


def _property(parent: ua.NodeId, name: str, value: ua.Variant, datatype: int) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    if isinstance(parent.Identifier, str):  # readable ids where the parent has one
        item.RequestedNewNodeId = ua.NodeId(f"{parent.Identifier}.{name}", parent.NamespaceIndex)
    else:
        item.RequestedNewNodeId = ua.NodeId(NamespaceIndex=parent.NamespaceIndex)  # the server picks one
    item.BrowseName = ua.QualifiedName(name, 0)  # standard property names live in namespace 0
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasProperty)
    item.NodeClass = ua.NodeClass.Variable
    item.TypeDefinition = ua.NodeId(ua.ObjectIds.PropertyType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.DataType = ua.NodeId(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.WriteMask = attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item
