"""Raw BACnet for the MCP server's extra tools: Who-Is, a device's objects, one property, a
priority array. Every result is plain Python (JSON-able); every failure a ``DeviceError``.

Requests go through the device's ``Link`` (breaker, limit, timeout and retries) like the
adapter's polls, so a tool call cannot overrun a device the poller is also talking to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorType
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from ..errors import DeviceError
from ..models import BacnetPoint
from ..models.bacnet import MAX_INSTANCE, check_bacnet_address
from .bacnet_link import CommFailure, Invalid, Link, Refused
from .bacnet_read import objects_per_request, plain, point_value, priority_slots
from .bacnet_units import from_bacnet

__all__ = ["device_error", "limits", "list_objects", "read_priority_array", "read_property", "who_is"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_WILDCARD = MAX_INSTANCE + 1  # 4194303: "any device" in a Who-Is range
_GONE = ("device_offline", "timeout")
# Error codes that say the request itself was wrong (bad object, property, value, index).
BAD_REQUEST = frozenset({
    "unknown-object", "unknown-property", "value-out-of-range", "invalid-data-type", "invalid-array-index",
    "datatype-not-supported", "invalid-value-in-this-state", "property-is-not-an-array",
})


def device_error(link: Link, err: CommFailure | Invalid | Refused, point_id: str | None = None) -> DeviceError:
    """The DeviceError for a failed request (codes device_offline, timeout, invalid_argument, protocol_error)."""
    dev = link.device.id
    if isinstance(err, CommFailure):
        return DeviceError(f"{link.where}: {err}", code=err.code, device=dev, point=point_id)
    if isinstance(err, Invalid):
        return DeviceError(f"invalid request: {err}", code="invalid_argument", device=dev, point=point_id)
    if err.too_big:
        return DeviceError(f"{link.where}: the answer is too big for one message ({err})", code="protocol_error",
                           device=dev, point=point_id)
    code = "invalid_argument" if err.name in BAD_REQUEST else "protocol_error"
    return DeviceError(f"{link.where}: refused ({err})", code=code, device=dev, point=point_id)


async def _call(link: Link, fn: Callable[[], Awaitable[T]], point_id: str | None = None) -> T:
    try:
        return await link.call(fn)
    except (CommFailure, Invalid, Refused) as err:
        raise device_error(link, err, point_id) from err


async def who_is(app: Application, interface: str, links: Sequence[Link], low: int | None, high: int | None,
                 address: str | None, timeout_s: float) -> list[dict[str, Any]]:
    """I-Am answers, by device instance. What they say of a configured device's limits is kept."""
    if low is None and high is not None:
        low = 0
    if high is None and low is not None:
        high = _WILDCARD
    for bound in (low, high):
        if bound is not None and not 0 <= bound <= _WILDCARD:
            raise DeviceError(f"device instance {bound} is outside 0..{_WILDCARD}", code="invalid_argument")
    if not 0 < timeout_s <= 60:
        raise DeviceError(f"timeout_s {timeout_s} is outside (0, 60]", code="invalid_argument")
    dest: Address | None = None
    if address is None:
        # bacpypes3 binds a broadcast socket only for an interface given with its mask; without one
        # it fails the send in a background task (logged, never raised) and hears nothing.
        if "/" not in interface:
            log.info("bacnet: no broadcast Who-Is: interface %s has no /mask", interface)
            return []
    else:
        try:
            check_bacnet_address(address)
        except ValueError as err:
            raise DeviceError(f"address '{address}': {err}", code="invalid_argument") from err
        port = address.rsplit(":", 1)[1] if ":" in address else "47808"
        dest = Address(f"{address.split('/')[0].split(':')[0]}:{port}")
    out = []
    for i_am in await app.who_is(low, high, dest, timeout=timeout_s):
        entry = {
            "device_instance": int(i_am.iAmDeviceIdentifier[1]),
            "address": str(i_am.pduSource),
            "max_apdu": int(i_am.maxAPDULengthAccepted),
            "segmentation": str(i_am.segmentationSupported),
            "vendor_id": int(i_am.vendorID),
        }
        for link in links:
            if link.device.connection.device_instance == entry["device_instance"] and link.peer == i_am.pduSource:
                link.learn(entry["max_apdu"], entry["segmentation"])
        out.append(entry)
    return sorted(out, key=lambda e: e["device_instance"])


async def list_objects(app: Application, link: Link) -> list[dict[str, Any]]:
    """{object_id, type, instance, name, units?, point_id?} for each object of the device."""
    dev = f"device,{link.device.connection.device_instance}"
    try:
        ids = [str(o) for o in await link.call(lambda: app.read_property(link.peer, dev, "object-list"))]
    except Refused as err:
        if not err.too_big:
            raise device_error(link, err) from err
        # Too long for one unsegmented answer: its length, then one entry at a time.
        count = int(await _call(link, lambda: app.read_property(link.peer, dev, "object-list", 0)))
        ids = [str(await _call(link, _entry(app, link, dev, i))) for i in range(1, count + 1)]
    except (CommFailure, Invalid) as err:
        raise device_error(link, err) from err
    names = await _names_and_units(app, link, ids)
    by_object = {p.address.object_id: p.id for p in reversed(link.device.points)}
    out: list[dict[str, Any]] = []
    for oid in ids:
        kind, _, inst = oid.partition(",")
        name, units = names.get(oid, (None, None))
        entry: dict[str, Any] = {"object_id": oid, "type": kind, "instance": int(inst) if inst.isdigit() else inst,
                                 "name": name}
        if units is not None:
            entry["units"] = from_bacnet(units)
        if oid in by_object:
            entry["point_id"] = by_object[oid]
        out.append(entry)
    return out


def _entry(app: Application, link: Link, dev: str, i: int) -> Callable[[], Awaitable[Any]]:
    return lambda: app.read_property(link.peer, dev, "object-list", i)


async def _names_and_units(app: Application, link: Link, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    found: dict[str, tuple[str | None, str | None]] = {}
    if link.rpm:
        per = objects_per_request(link.batch_cap or link.device.connection.rpm_batch, link.max_apdu, link.segmented)
        try:
            for start in range(0, len(ids), per):
                spec: list[Any] = []
                for oid in ids[start:start + per]:
                    spec += [ObjectIdentifier(oid), ["object-name", "units"]]
                answer = await _call(link, lambda s=spec: app.read_property_multiple(link.peer, s))
                for objid, prop, _, value in answer or ():
                    name, units = found.get(str(objid), (None, None))
                    if isinstance(value, ErrorType) or value is None:
                        continue  # objects without units answer with an error for it
                    if str(prop) == "object-name":
                        name = str(value)
                    elif str(prop) == "units":
                        units = str(value)
                    found[str(objid)] = (name, units)
            return found
        except DeviceError as err:
            if err.code in _GONE:
                raise
            found.clear()  # refused: one property at a time instead
    for oid in ids:
        name = await _optional(link, lambda o=oid: app.read_property(link.peer, o, "object-name"))
        units = None
        if oid.startswith(("analog-", "accumulator", "pulse-converter", "loop")):
            units = await _optional(link, lambda o=oid: app.read_property(link.peer, o, "units"))
        found[oid] = (name, units)
    return found


async def _optional(link: Link, fn: Callable[[], Awaitable[Any]]) -> str | None:
    """A property that may be missing (None); a device that is gone still fails the call."""
    try:
        return str(await _call(link, fn))
    except DeviceError as err:
        if err.code in _GONE:
            raise
        return None


async def read_property(app: Application, link: Link, object_id: str, prop: str, index: int | None) -> Any:
    try:
        ObjectIdentifier(object_id)
    except (ValueError, TypeError) as err:
        raise DeviceError(f"'{object_id}' is not an object id like 'analog-input,1'", code="invalid_argument",
                          device=link.device.id) from err
    if index is not None and index < 0:
        raise DeviceError(f"array index {index} is negative", code="invalid_argument", device=link.device.id)
    value = await _call(link, lambda: app.read_property(link.peer, object_id, prop, index))
    if isinstance(value, str) and value.startswith("-no "):  # bacpypes3's word for "no datatype known"
        raise DeviceError(f"{prop} of {object_id}: bacpypes3 knows no datatype to decode it",
                          code="protocol_error", device=link.device.id)
    return plain(value)


async def read_priority_array(app: Application, link: Link, bp: BacnetPoint) -> dict[str, Any]:
    if not bp.commandable:
        raise DeviceError(f"{bp.id} ({bp.address.object_id} {bp.address.property}) has no priority array",
                          code="invalid_argument", device=bp.device_id, point=bp.id)
    oid = bp.address.object_id
    props = ("priority-array", "relinquish-default", "present-value")
    values: dict[str, Any] = {}
    if link.rpm:
        try:
            answer = await _call(link, lambda: app.read_property_multiple(
                link.peer, [ObjectIdentifier(oid), list(props)]), bp.id)
            values = {str(prop): v for _, prop, index, v in answer or () if index is None}
        except DeviceError as err:
            if err.code in _GONE or "unknown-object" in err.message:
                raise
    if not values:
        for prop in props:
            try:
                values[prop] = await _call(link, lambda p=prop: app.read_property(link.peer, oid, p), bp.id)
            except DeviceError as err:
                if prop == "priority-array" or err.code in _GONE:
                    raise
    array = values.get("priority-array")
    if isinstance(array, ErrorType) or array is None:
        raise DeviceError(f"{link.where}: {oid} did not give its priority array ({plain(array)})",
                          code="protocol_error", device=bp.device_id, point=bp.id)
    slots = priority_slots(array, bp.is_binary)

    def value_of(prop: str) -> Any:
        v = values.get(prop)
        return None if v is None or isinstance(v, ErrorType) else point_value(v, bp)

    return {
        "priorities": slots,
        "relinquish_default": value_of("relinquish-default"),
        "present_value": value_of("present-value"),
        "active_priority": slots[0]["priority"] if slots else None,
    }


# What limits() asks of an object: its units, and the range its present-value keeps to.
_RANGE = ("min-pres-value", "max-pres-value")


async def limits(app: Application, link: Link, bp: BacnetPoint) -> dict[str, Any]:
    """{"eu_range": [low, high] | None, "unit": str | None} from the object's ``units`` and (for a
    present-value point) its ``min-pres-value``/``max-pres-value``; None for what the object does
    not have. Binary objects have neither, and are not asked."""
    out: dict[str, Any] = {"eu_range": None, "unit": None}
    if bp.is_binary:
        return out
    props = ["units", *(_RANGE if bp.address.property == "present-value" else ())]
    values = await _object_properties(app, link, bp, props)
    units = values.get("units")
    if units is not None:
        out["unit"] = from_bacnet(units) or None  # noUnits says there is none
    low, high = (_number(values.get(p)) for p in _RANGE)
    if low is not None and high is not None and low <= high:
        out["eu_range"] = [low, high]
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


async def _object_properties(app: Application, link: Link, bp: BacnetPoint, props: list[str]) -> dict[str, Any]:
    """The properties the object has, by name (one RPM when the device takes it, else one
    ReadProperty each). A property it lacks is left out; an object it lacks, or a device that is
    gone, raises DeviceError."""
    oid = bp.address.object_id

    def unknown_object() -> DeviceError:
        return DeviceError(f"{link.where}: no object {oid} (point {bp.id})", code="invalid_argument",
                           device=bp.device_id, point=bp.id)

    if link.rpm:
        try:
            answer = await _call(link, lambda: app.read_property_multiple(link.peer, [ObjectIdentifier(oid), props]),
                                 bp.id)
        except DeviceError as err:
            if err.code in _GONE:
                raise
            if "unknown-object" in err.message:
                raise unknown_object() from err
        else:
            values: dict[str, Any] = {}
            for _, prop, index, value in answer or ():
                if isinstance(value, ErrorType):
                    if str(value.errorCode) == "unknown-object":
                        raise unknown_object()
                elif index is None and value is not None:
                    values[str(prop)] = value
            return values
    values = {}
    for prop in props:
        try:
            values[prop] = await _call(link, lambda p=prop: app.read_property(link.peer, oid, p), bp.id)
        except DeviceError as err:
            if err.code in _GONE:
                raise
            if "unknown-object" in err.message:
                raise unknown_object() from err
    return values
