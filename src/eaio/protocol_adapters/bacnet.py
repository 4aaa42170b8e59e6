"""The BACnet/IP adapter: ReadPropertyMultiple polls, priority-array writes, COV, raw BACnet.

``async with adapter:`` opens one bacpypes3 Application (EAIO's own BACnet device) on the
role's local UDP port; every device is reached through it. Per device (``bacnet_link.Link``):
a circuit breaker, a cap on outstanding requests, ``timeout_s``/``retries`` applied by the
adapter, what the device refused (RPM, COV) and what it accepts (max APDU, segmentation,
from the site file or its I-Am). Reads plan ReadPropertyMultiple batches (``bacnet_read``),
split them when the device says they are too big, and fall back to ReadProperty for devices
that refuse RPM. COV lives in ``bacnet_cov``, the raw tools in ``bacnet_raw``. No bacpypes3
type leaves these modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorType
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import Null, ObjectIdentifier

from ..errors import ConnectionFailed, DeviceError
from ..models import BacnetDevice, BacnetLocal, BacnetPoint, Point, Quality, Reading, Reason, Value
from ..models.bacnet import MAX_INSTANCE
from . import bacnet_fast
from . import bacnet_raw as raw
from .bacnet_cov import CovHub
from .bacnet_fast import FastRpm, Row
from .bacnet_link import CommFailure, Invalid, Link, Refused
from .bacnet_read import (
    OWN_MAX_APDU,
    STATUS_PROPERTIES,
    Status,
    objects_per_request,
    point_value,
    quality_of,
    split,
)
from .base import ConfiguredPoints, ReadingCallback, failed_reading
from .udp import udp_port_free

__all__ = ["BacnetAdapter"]

log = logging.getLogger(__name__)
_BIND_TIMEOUT_S = 5.0
_VENDOR_ID = 999  # no ASHRAE vendor id of its own; 999 is the customary stand-in


class BacnetAdapter(ConfiguredPoints[BacnetDevice, BacnetPoint]):
    """Reads, writes and subscribes to the points of BACnet/IP devices. Never connects in the constructor."""

    protocol = "bacnet"
    _label = "BACnet"
    _point_type = BacnetPoint

    def __init__(self, devices: Sequence[BacnetDevice], *, local: BacnetLocal | None = None,
                 role: str = "tool") -> None:
        super().__init__(devices)
        self._local = local or BacnetLocal()
        self._role = role
        self._links = {d.id: Link(d) for d in self._devices}
        self._app: Application | None = None
        self._cov: CovHub | None = None
        self._fast = FastRpm()
        self.local_address: str | None = None  # 'host:port' once open

    # -- lifetime -----------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        for link in self._links.values():
            link.reset()
        bacnet_fast.install()  # once per process; it checks bacpypes3 first and logs when it stays off
        host = self._local.interface.split("/")[0]
        port = self._local.ports.get(self._role) or _free_udp_port(host)
        if not udp_port_free(host, port):
            raise ConnectionFailed(f"BACnet role '{self._role}': UDP port {port} on {host} is in use")
        address = self._local.address(self._role, port)
        roles = list(self._local.ports)
        index = roles.index(self._role) if self._role in roles else len(roles)
        timeout_ms = int(max((d.connection.timeout_s for d in self._devices), default=2.0) * 1000)
        self._app = await _open_application(
            address, min(self._local.device_instance + index, MAX_INSTANCE), f"eaio-{self._role}", timeout_ms,
        )
        self.local_address = f"{host}:{port}"
        self._cov = CovHub(lambda: self.app, self._links)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel subscriptions, then free the UDP port."""
        if self._cov is not None:
            await self._cov.close()
            self._cov = None
        app, self._app = self._app, None
        if app is not None:
            app.close()
            await asyncio.sleep(0)  # the transport lets go of the socket on the next loop turn

    @property
    def app(self) -> Application:
        if self._app is None:
            raise RuntimeError("the BACnet adapter is not open (use 'async with adapter:')")
        return self._app

    # -- what it serves -----------------------------------------------------------------------
    def health(self) -> list[dict[str, object]]:
        """Per device: device_id, address, online (None until its first request), last_error,
        requests, failures, rpm, cov_subscriptions, cov_refused (points whose subscription the device
        refused: they are polled), breaker, max_apdu, segmentation, last_ok."""
        return [link.health() for link in self._links.values()]

    def request_count(self) -> int:
        """Requests sent on the wire since start, every retry and Who-Is included."""
        return sum(link.requests for link in self._links.values())

    # -- reading ------------------------------------------------------------------------------
    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """One Reading per requested point, in order. Devices are read concurrently; a device
        that fails gives bad readings (comm_failure), never an exception."""
        return await self._read_by_device(
            points, lambda device_id, pts, results: self._read_device(self._links[device_id], pts, results))

    async def _read_device(self, link: Link, points: list[BacnetPoint], results: dict[str, Reading]) -> None:
        if not link.breaker.allow():
            _fail_rest(link, points, results, link.offline_error())
            return
        await self._learn(link)
        first, *rest = self._plan(link, points)
        try:
            # One request alone first: a dead device then costs one timeout, not one per batch.
            await self._read_batch(link, first, results)
        except CommFailure as err:
            _fail_rest(link, points, results, err)
            return
        outcomes = await asyncio.gather(*(self._read_batch(link, b, results) for b in rest), return_exceptions=True)
        for batch, outcome in zip(rest, outcomes, strict=True):
            if isinstance(outcome, CommFailure):
                _fail_rest(link, batch, results, outcome)
            elif isinstance(outcome, BaseException):
                log.error("bacnet %s: reading failed", link.device.id, exc_info=outcome)
                for p in batch:
                    results.setdefault(p.id, failed_reading(p, link.device.id, "protocol_status:internal_error",
                                                     f"protocol_error: {link.where}: {outcome!r}"))

    def _plan(self, link: Link, points: list[BacnetPoint]) -> list[list[BacnetPoint]]:
        if not link.rpm:
            return split(points, 1)
        batch = link.device.connection.rpm_batch
        if link.batch_cap is not None:
            batch = min(batch, link.batch_cap)
        return split(points, objects_per_request(batch, link.max_apdu, link.segmented))

    async def _learn(self, link: Link) -> None:
        """Ask a device we know nothing of for its I-Am (max APDU, segmentation), once per time
        it is seen online; a silent device is read all the same (limits are then learned from aborts)."""
        if link.asked_who_is or link.online is False:
            return
        link.asked_who_is = True
        if link.max_apdu is not None and link.segmented is not None:
            return
        conn = link.device.connection
        link.requests += 1
        i_ams = await self.app.who_is(conn.device_instance, conn.device_instance, link.peer, timeout=conn.timeout_s)
        for i_am in i_ams:
            link.learn(int(i_am.maxAPDULengthAccepted), str(i_am.segmentationSupported))

    async def _read_batch(self, link: Link, batch: list[BacnetPoint], results: dict[str, Reading]) -> None:
        if link.rpm:
            try:
                await self._read_rpm(link, batch, results)
                return
            except Refused as err:
                if not self._rpm_refused(link, batch, err, results):
                    return
                if err.too_big and len({p.address.object_id for p in batch}) > 1:
                    half = (len({p.address.object_id for p in batch}) + 1) // 2
                    link.batch_cap = half  # remembered: the next polls plan smaller requests
                    for part in split(batch, half):
                        await self._read_batch(link, part, results)
                    return
            except Invalid:
                pass  # one point names a property bacpypes3 does not know: ask point by point
        await self._read_rp(link, batch, results)

    def _rpm_refused(self, link: Link, batch: list[BacnetPoint], err: Refused, results: dict[str, Reading]) -> bool:
        """Decide what a refused RPM means; False when the batch's readings are settled."""
        if err.name == "unrecognized-service" or err.error_class == "services":
            link.rpm = False
            log.info("bacnet %s: ReadPropertyMultiple refused (%s); reading property by property", link.where, err)
            return True
        if err.kind == "error" and not err.too_big:
            if len({p.address.object_id for p in batch}) > 1:
                return True  # some devices fail the whole request for one bad object: ask one by one
            # The request for this one object failed (it is unknown, say): that is its points' answer.
            for p in batch:
                results[p.id] = failed_reading(p, link.device.id, f"protocol_status:{err.name}",
                                        f"protocol_error: {link.where}: {p.address.object_id}: {err}")
            return False
        return True

    async def _read_rpm(self, link: Link, batch: list[BacnetPoint], results: dict[str, Reading]) -> None:
        by_object: dict[str, list[BacnetPoint]] = {}
        for p in batch:
            by_object.setdefault(p.address.object_id, []).append(p)
        spec = [(oid, list(dict.fromkeys([*(p.address.property for p in pts), *STATUS_PROPERTIES])))
                for oid, pts in by_object.items()]
        values = _values(await self._rpm(link, spec))
        status = {oid: Status.from_values(*(values.get((oid, s)) for s in STATUS_PROPERTIES)) for oid in by_object}
        faulted = [oid for oid, s in status.items() if s.fault]
        if faulted:
            # The fault flag says that something is wrong, reliability says what: ask only those objects.
            with contextlib.suppress(Refused, Invalid, CommFailure):  # the fault bit alone still makes it bad
                reliability = _values(await self._rpm(link, [(oid, ["reliability"]) for oid in faulted]))
                for oid in faulted:
                    status[oid] = Status.from_values(values.get((oid, "status-flags")),
                                                     reliability.get((oid, "reliability")))
        for oid, pts in by_object.items():
            for p in pts:
                results[p.id] = _reading(link, p, values.get((oid, p.address.property), _MISSING), status[oid])

    async def _rpm(self, link: Link, spec: list[tuple[str, list[str]]]) -> list[Row]:
        """One ReadPropertyMultiple, as rows: the prepared request and fast decoder while they are
        usable (``bacnet_fast``), else bacpypes3's ``read_property_multiple``; the same rows either way."""
        app = self.app
        if bacnet_fast.usable():
            vendor = await app.get_vendor_info(device_address=link.peer)
            answer = await link.call(lambda: self._fast.request(app, link.peer, vendor, spec))
            try:
                return self._fast.rows(answer, vendor)
            except bacnet_fast.Unusable:
                pass  # bacpypes3 reads this batch again, and decides what it means
        flat: list[Any] = []
        for oid, props in spec:
            flat += [ObjectIdentifier(oid), props]
        answer = await link.call(lambda: app.read_property_multiple(link.peer, flat))
        return [(str(oid), str(prop), index, value) for oid, prop, index, value in answer or ()]

    async def _read_rp(self, link: Link, batch: list[BacnetPoint], results: dict[str, Reading]) -> None:
        outcomes = await asyncio.gather(*(self._read_one(link, p) for p in batch), return_exceptions=True)
        failure: CommFailure | None = None
        for p, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Reading):
                results[p.id] = outcome
            elif isinstance(outcome, CommFailure):
                failure = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        if failure is not None:
            raise failure

    async def _read_one(self, link: Link, p: BacnetPoint) -> Reading:
        """One point without RPM: its property and the object's status-flags (reliability only on a fault)."""
        app, oid = self.app, p.address.object_id

        def get(prop: str) -> Callable[[], Awaitable[Any]]:
            return lambda: app.read_property(link.peer, oid, prop)

        value, flags = await asyncio.gather(link.call(get(p.address.property)), link.call(get("status-flags")),
                                            return_exceptions=True)
        if isinstance(value, CommFailure):
            raise value
        if isinstance(value, Refused | Invalid):
            return _refused_reading(link, p, value)
        if isinstance(value, BaseException):
            raise value
        status = Status.from_values(None if isinstance(flags, BaseException) else flags)
        if status.fault:
            with contextlib.suppress(Refused, Invalid, CommFailure):  # the fault bit alone still makes it bad
                status = Status.from_values(flags, await link.call(get("reliability")))
        return _reading(link, p, value, status)

    # -- writing ------------------------------------------------------------------------------
    async def write(self, point: Point, value: Value, priority: int | None = None) -> None:
        """WriteProperty at ``priority`` (None: the point's). Raises DeviceError (unknown_point,
        not_writable, invalid_argument, device_offline, timeout, protocol_error)."""
        bp = self._known(point)
        prio = self._priority(bp, priority)
        wire = _encode(bp, value)
        await self._write(bp, wire, prio if bp.commandable else None, f"{value!r}")

    async def relinquish(self, point: Point, priority: int | None = None) -> None:
        """Write Null at ``priority`` (None: the point's): the next command or the relinquish-default takes over."""
        bp = self._known(point)
        prio = self._priority(bp, priority)
        if not bp.commandable:
            raise DeviceError(f"{bp.id} ({bp.address.object_id} {bp.address.property}) has no priority array to "
                              "relinquish", code="not_writable", device=bp.device_id, point=bp.id)
        await self._write(bp, Null(()), prio, "null")

    async def _write(self, bp: BacnetPoint, wire: Any, priority: int | None, shown: str) -> None:
        link, app = self._links[bp.device_id], self.app
        oid, prop = bp.address.object_id, bp.address.property
        at = f" at priority {priority}" if priority is not None else ""
        try:
            answer = await link.call(lambda: app.write_property(link.peer, oid, prop, wire, priority=priority))
        except CommFailure as err:
            raise DeviceError(f"{link.where}: {err}", code=err.code, device=bp.device_id, point=bp.id) from err
        except Invalid as err:
            raise DeviceError(f"{shown} cannot be written to {bp.id} ({oid} {prop}): {err}",
                              code="invalid_argument", device=bp.device_id, point=bp.id) from err
        except Refused as err:
            if err.name == "write-access-denied":
                raise DeviceError(f"{link.where}: {oid} refuses writes to {prop} ({err})", code="not_writable",
                                  device=bp.device_id, point=bp.id) from err
            code = "invalid_argument" if err.name in raw.BAD_REQUEST else "protocol_error"
            raise DeviceError(f"{link.where}: writing {shown} to {oid} {prop}{at} was refused ({err})", code=code,
                              device=bp.device_id, point=bp.id) from err
        if isinstance(answer, str):  # bacpypes3 knows no datatype for it, so nothing was sent
            raise DeviceError(f"{prop} is not a property of {bp.address.type} objects", code="invalid_argument",
                              device=bp.device_id, point=bp.id)

    def _priority(self, bp: BacnetPoint, priority: int | None) -> int:
        prio = bp.priority if priority is None else priority
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 16:
            raise DeviceError(f"priority {priority!r} is outside 1..16", code="invalid_argument",
                              device=bp.device_id, point=bp.id)
        return prio

    # -- COV ----------------------------------------------------------------------------------
    async def subscribe(self, points: Sequence[Point], callback: ReadingCallback) -> None:
        """Subscribe to changes of value of the points that want COV (the point's ``cov``, else
        its device's); returns once each subscription was tried. See ``pushed``."""
        if self._cov is None:
            raise RuntimeError("the BACnet adapter is not open (use 'async with adapter:')")
        resolved = [bp for p in points if (bp := self._resolve(p)) is not None]
        await self._cov.subscribe(resolved, callback)

    def pushed(self, points: Sequence[Point]) -> list[Point]:
        """The points whose values arrive by COV now; poll the others. A point leaves this list
        while its device is offline and comes back when it has been subscribed again."""
        out: list[Point] = []
        for p in points:
            bp = self._resolve(p)
            link = self._links[bp.device_id] if bp is not None else None
            if bp is not None and link is not None and link.online is not False and bp.id in link.cov_active:
                out.append(p)
        return out

    # -- raw BACnet, for the MCP server's extra tools (see bacnet_raw) ---------------------------
    async def who_is(self, low: int | None = None, high: int | None = None, address: str | None = None,
                     timeout_s: float = 3.0) -> list[dict[str, Any]]:
        """I-Am answers: {device_instance, address, max_apdu, segmentation, vendor_id}.

        ``address`` None broadcasts globally, which needs a local interface with its mask
        (``bacnet.interface: 192.168.1.20/24``); without one nothing can be broadcast and the
        answer is []. Otherwise the Who-Is goes to that address only."""
        return await raw.who_is(self.app, self._local.interface, list(self._links.values()), low, high, address,
                                timeout_s)

    async def list_objects(self, device_id: str) -> list[dict[str, Any]]:
        """The device's objects: {object_id, type, instance, name, units?, point_id?}. Raises DeviceError."""
        return await raw.list_objects(self.app, self._link(device_id))

    async def read_property(self, device_id: str, object_id: str, property: str, index: int | None = None) -> Any:
        """One property as plain Python (enumerations as kebab-case names). Raises DeviceError."""
        return await raw.read_property(self.app, self._link(device_id), object_id, property, index)

    async def read_priority_array(self, point: Point) -> dict[str, Any]:
        """{"priorities": [{"priority": 8, "value": 23.5}, ...] (non-null slots), "relinquish_default",
        "present_value", "active_priority" (the highest commanding slot, None if none)}. Raises DeviceError."""
        bp = self._known(point)
        return await raw.read_priority_array(self.app, self._links[bp.device_id], bp)

    async def limits(self, point: Point) -> dict[str, Any]:
        """{eu_range: [low, high] | None, unit: str | None} from the object's units and its
        min-pres-value/max-pres-value (the OPC-UA adapter's ``limits``: ingest fills what the
        site file leaves out). Raises DeviceError (unknown_point, invalid_argument, device_offline: at
        once for a device whose last request went unanswered)."""
        bp = self._known(point)
        link = self._links[bp.device_id]
        if link.online is False:
            # Ingest asks this once per point at start: a dead device costs one timeout, not one per point.
            raise DeviceError(f"{link.where}: offline ({link.last_error})", code="device_offline",
                              device=bp.device_id, point=bp.id)
        return await raw.limits(self.app, link, bp)

    # -- helpers ------------------------------------------------------------------------------
    def _link(self, device_id: str) -> Link:
        link = self._links.get(device_id)
        if link is None:
            raise DeviceError(f"no BACnet device '{device_id}'", code="invalid_argument", device=device_id)
        return link



_MISSING = object()


def _values(rows: list[Row]) -> dict[tuple[str, str], Any]:
    """(object id, property) -> value of whole properties (array elements are not asked for here)."""
    return {(oid, prop): value for oid, prop, index, value in rows if index is None}


def _encode(bp: BacnetPoint, value: Value) -> Any:
    """The value as bacpypes3 should send it; DeviceError invalid_argument if it cannot be."""
    def bad(why: str) -> DeviceError:
        return DeviceError(f"{value!r} cannot be written to {bp.id} ({bp.address.object_id}): {why}",
                           code="invalid_argument", device=bp.device_id, point=bp.id)

    if bp.address.property != "present-value":
        return value  # bacpypes3 casts it to the property's datatype (ValueError -> invalid_argument)
    if bp.is_binary:
        if value not in (True, False):  # 0 and 1 compare equal to the bools
            raise bad("a binary object takes true/false or 1/0")
        return "active" if value else "inactive"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad("a number is expected")
    if bp.address.type.startswith("multi-state"):
        if not math.isfinite(value) or value != int(value) or value < 1:
            raise bad("a multi-state object takes a state number 1, 2, ...")
        return int(value)
    v = float(value)
    if not abs(v) <= 3.4028234e38:  # also NaN: a Real is a float32
        raise bad("outside the float32 range of a BACnet Real")
    return v


def _reading(link: Link, p: BacnetPoint, value: Any, status: Status) -> Reading:
    dev = link.device.id
    if value is _MISSING:
        return failed_reading(p, dev, "protocol_status:missing",
                       f"protocol_error: {link.where}: no {p.address.property} for {p.address.object_id}")
    if isinstance(value, ErrorType):
        code = str(value.errorCode)
        return failed_reading(p, dev, f"protocol_status:{code}",
                       f"protocol_error: {link.where}: {p.address.object_id} {p.address.property}: "
                       f"{value.errorClass}: {code}")
    v = point_value(value, p)
    if v is None:
        return failed_reading(p, dev, "protocol_status:unsupported_value",
                       f"protocol_error: {link.where}: {p.address.object_id} {p.address.property} is "
                       f"{type(value).__name__}, not a number")
    quality, reasons = quality_of(status)
    if quality == Quality.GOOD:
        return Reading(point_id=p.id, value=v, unit=p.unit, device_id=dev)
    return Reading(point_id=p.id, value=v, unit=p.unit, device_id=dev, quality=quality, reasons=reasons)


def _refused_reading(link: Link, p: BacnetPoint, err: Refused | Invalid) -> Reading:
    name = err.name if isinstance(err, Refused) else "invalid_request"
    return failed_reading(p, link.device.id, f"protocol_status:{name}",
                   f"protocol_error: {link.where}: {p.address.object_id} {p.address.property}: {err}")


def _fail_rest(link: Link, points: Sequence[BacnetPoint], results: dict[str, Reading], err: CommFailure) -> None:
    detail = f"{err.code}: {link.where}: {err}"
    for p in points:
        if p.id not in results:
            results[p.id] = failed_reading(p, link.device.id, Reason.COMM_FAILURE, detail)


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _open_application(address: str, instance: int, name: str, timeout_ms: int) -> Application:
    """EAIO's BACnet device on ``address``, bound. ConnectionFailed if it cannot bind."""
    device = DeviceObject(
        objectIdentifier=("device", instance), objectName=name, vendorIdentifier=_VENDOR_ID,
        maxApduLengthAccepted=OWN_MAX_APDU, segmentationSupported="segmentedBoth",
    )
    # The adapter times and retries each request itself (per device); bacpypes3's timer is only a
    # backstop behind the slowest device's timeout.
    device.apduTimeout = timeout_ms + 1000
    device.numberOfApduRetries = 0
    npo = NetworkPortObject(address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    app = Application.from_object_list([device, npo])
    tasks = [t for ll in app.link_layers.values() for t in getattr(ll.server, "_transport_tasks", ())]
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=_BIND_TIMEOUT_S)
        for t in pending:  # bacpypes3 retries a failed bind forever; a socket opened later would leak
            t.cancel()
        if pending or any(t.cancelled() or t.exception() is not None for t in done):
            app.close()
            raise ConnectionFailed(f"BACnet: could not bind {address}")
    return app
