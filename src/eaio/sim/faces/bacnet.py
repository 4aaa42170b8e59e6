"""The BACnet/IP face of one simulated device: a bacpypes3 application over the sim's values.

One application per device, bound to its ``connection`` address (UDP), answering as device
``connection.device_instance``. The objects (``bacnet_objects``) are built once, at the first
start, and outlive an ``offline`` fault: going offline closes the application (the device stops
answering, its COV subscriptions are dropped), coming back opens a new one over the same objects,
so priority arrays survive an outage as they do in a controller's memory. ReadPropertyMultiple is
answered by ``bacnet_fast`` (the same bytes as bacpypes3's handler, a fraction of the CPU), unless
its check of bacpypes3 fails or ``fast_rpm`` is set False; a no-RPM device still refuses it.
Devices in ``sim.bacnet.no_rpm`` / ``no_cov`` reject ReadPropertyMultiple / SubscribeCOV with
unrecognized-service, as controllers without those services do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from bacpypes3.apdu import ConfirmedRequestPDU
from bacpypes3.app import Application
from bacpypes3.errors import UnrecognizedService
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject

from ...config import SimBacnet
from ...errors import ConnectionFailed
from ...models import BacnetDevice
from ...protocol_adapters.udp import udp_port_free
from .bacnet_fast import FastRpmApplication, install_request_decoder
from .bacnet_objects import DeviceObjects

__all__ = ["BacnetFace"]

log = logging.getLogger(__name__)

Value = float | int | bool
BIND_TIMEOUT_S = 5.0


class _SimApplication(FastRpmApplication):
    """Counts the confirmed requests it serves (refused ones too), as a device's statistics would.
    Answers ReadPropertyMultiple with the fast handler (``bacnet_fast``): same bytes, less CPU."""

    on_request: Callable[[], None] | None = None

    async def indication(self, apdu: Any) -> None:
        if isinstance(apdu, ConfirmedRequestPDU) and self.on_request is not None:
            self.on_request()
        await super().indication(apdu)


class _NoRpm:
    """An old controller: ReadPropertyMultiple answers Reject unrecognized-service."""

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        raise UnrecognizedService("ReadPropertyMultiple is not supported")

    def get_services_supported(self) -> Any:
        # protocolServicesSupported is computed from the do_* methods, and this class has one.
        ss = super().get_services_supported()  # type: ignore[misc]
        ss[ss.readPropertyMultiple] = 0
        return ss


class _NoCov:
    """A controller without change of value: SubscribeCOV (and SubscribeCOVProperty) answer Reject
    unrecognized-service, as devices that do not execute a service must (ASHRAE 135, 18.9)."""

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        raise UnrecognizedService("SubscribeCOV is not supported")

    async def do_SubscribeCOVPropertyRequest(self, apdu: Any) -> None:
        raise UnrecognizedService("SubscribeCOVProperty is not supported")

    def get_services_supported(self) -> Any:
        ss = super().get_services_supported()  # type: ignore[misc]
        ss[ss.subscribeCOV] = 0
        ss[ss.subscribeCOVProperty] = 0
        return ss


class _NoRpmApplication(_NoRpm, _SimApplication):
    pass


class _NoCovApplication(_NoCov, _SimApplication):
    pass


class _NoRpmNoCovApplication(_NoRpm, _NoCov, _SimApplication):
    pass


# (refuses RPM, refuses COV) -> the application class a face serves with
_APPLICATIONS: dict[tuple[bool, bool], type[_SimApplication]] = {
    (False, False): _SimApplication, (True, False): _NoRpmApplication,
    (False, True): _NoCovApplication, (True, True): _NoRpmNoCovApplication,
}


class BacnetFace:
    """Serves one BacnetDevice on its connection address until stopped or taken offline."""

    def __init__(self, device: BacnetDevice, on_write: Callable[[str, Value], None], settings: SimBacnet) -> None:
        self.device = device
        self.on_write = on_write
        self.settings = settings
        self.no_rpm = device.id in settings.no_rpm
        self.no_cov = device.id in settings.no_cov
        self.requests = 0
        self._served: dict[str, Value] = {}
        self._unreliable: set[str] = set()
        self._objects: DeviceObjects | None = None
        self._fixed: list[Any] = []  # the device and network-port objects
        self._app: _SimApplication | None = None
        self._fast_rpm = True

    @property
    def host(self) -> str:
        return self.device.connection.host

    @property
    def port(self) -> int:
        return self.device.connection.port

    @property
    def online(self) -> bool:
        return self._app is not None

    @property
    def fast_rpm(self) -> bool:
        """Whether ReadPropertyMultiple is served by the fast handler (False: bacpypes3's own)."""
        return self._fast_rpm

    @fast_rpm.setter
    def fast_rpm(self, on: bool) -> None:
        self._fast_rpm = on
        if self._app is not None:
            self._app.fast_rpm = on

    @property
    def objects(self) -> DeviceObjects | None:
        """The served objects (None before the first start); use them in the sim's loop only."""
        return self._objects

    # -- values -------------------------------------------------------------------------------
    def refresh(self, served: Mapping[str, Value], unreliable: Collection[str] = ()) -> None:
        """Follow the values the sim serves now, and which points are unreliable (faults)."""
        self._served = dict(served)
        if self._objects is not None:
            self._objects.serve(self._served)
        if set(unreliable) != self._unreliable:  # rare: only when such a fault starts or ends
            self._unreliable = set(unreliable)
            if self._objects is not None:
                self._objects.set_unreliable(self._unreliable)

    def _count(self) -> None:
        self.requests += 1

    # -- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and answer; returns once the UDP port is bound. ConnectionFailed if it is taken."""
        if self._app is not None:
            return
        if not udp_port_free(self.host, self.port):
            raise ConnectionFailed(f"sim {self.device.id}: cannot listen on {self.host}:{self.port} (port in use?)")
        if self._objects is None:
            self._build()
        assert self._objects is not None
        cls = _APPLICATIONS[(self.no_rpm, self.no_cov)]
        # Process-wide and idempotent; when bacpypes3 is not as expected it leaves the stock decoder.
        install_request_decoder()
        app = cls.from_object_list([*self._fixed, *self._objects.objects.values()])
        app.on_request = self._count
        app.fast_rpm = self._fast_rpm
        if not await _bound(app):
            app.close()
            raise ConnectionFailed(f"sim {self.device.id}: could not bind {self.device.connection.address}")
        self._app = app

    def _build(self) -> None:
        c = self.device.connection
        seg = "segmentedBoth" if self.settings.segmentation else "noSegmentation"
        self._fixed = [
            DeviceObject(
                objectIdentifier=("device", c.device_instance), objectName=self.device.id,
                description=self.device.name or self.device.id, vendorIdentifier=999, vendorName="EAIO sim",
                modelName="virtual building", maxApduLengthAccepted=self.settings.max_apdu,
                segmentationSupported=seg,
            ),
            NetworkPortObject(c.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"),
        ]
        self._objects = DeviceObjects(self.device, self.on_write, self._served)
        self._objects.set_unreliable(self._unreliable)

    def stop(self) -> None:
        """Stop answering now. The port is free once the loop has turned once more."""
        app, self._app = self._app, None
        if app is None:
            return
        _drop_subscriptions(app)
        app.close()


async def _bound(app: Application) -> bool:
    """Wait for every UDP endpoint of ``app`` (bacpypes3 creates them in tasks)."""
    tasks = [t for ll in app.link_layers.values() for t in ll.server._transport_tasks]
    if not tasks:
        return True
    done, pending = await asyncio.wait(tasks, timeout=BIND_TIMEOUT_S)
    for t in pending:  # bacpypes3 retries a failed bind forever; a socket it opened later would leak
        t.cancel()
    return not pending and all(not t.cancelled() and t.exception() is None for t in done)


def _drop_subscriptions(app: Application) -> None:
    """Forget the app's COV subscriptions: their detectors hook the objects, which outlive the app."""
    detections: dict[Any, Any] = getattr(app, "_cov_detections", {})
    for detection in list(detections.values()):
        for cov in list(detection.cov_subscriptions):
            cov.cancel_subscription()  # its lifetime timer
        detection.cov_subscriptions.clear()
        detection.unbind()
        if detection._execute_handle is not None:
            detection._execute_handle.cancel()
            detection._execute_handle = None
    detections.clear()
