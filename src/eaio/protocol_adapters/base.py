"""The one small interface every protocol adapter keeps.

An adapter owns the connections to all devices of its protocol. Constructors never connect;
``async with adapter:`` opens the connections lazily and closes them on exit. Library types
never leave an adapter: everything it returns is a ``Reading``, ``Point`` or ``WriteResult``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Generic, Protocol, Self, TypeVar, runtime_checkable

from ..errors import DeviceError
from ..models import Device, Point, Quality, Reading, ReadingBatch, Value

__all__ = ["Adapter", "ConfiguredPoints", "DeviceHealth", "ReadingCallback", "failed_reading"]

# Pushed readings arrive in columnar batches (see models.batch): a stream can be fast.
ReadingCallback = Callable[[ReadingBatch], Awaitable[None]]


class DeviceHealth(Protocol):
    device_id: str
    online: bool
    last_error: str | None


@runtime_checkable
class Adapter(Protocol):
    protocol: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def devices(self) -> Sequence[Device]:
        """The configured devices this adapter serves."""
        ...

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read many points in as few requests as the protocol allows.

        Never raises for a device failure: the points of a failed device come back as
        ``bad`` readings with reason ``comm_failure`` and a ``detail`` that starts with the
        short code (``device_offline: ...``, ``timeout: ...``).
        """
        ...

    async def write(self, point: Point, value: Value) -> None:
        """Write one engineering value to the device. Guards and audit live above this.

        Raises ``DeviceError`` (codes ``device_offline``, ``timeout``, ``protocol_error``).
        """
        ...

    async def subscribe(self, points: Sequence[Point], callback: ReadingCallback) -> None:
        """Deliver pushed readings to ``callback`` in batches (protocols that push; others raise
        NotImplementedError). The callback owns each batch it is given and may mark it."""
        ...

    def health(self) -> list[dict[str, object]]:
        """Per-device connection state: device_id, online, last_error, requests, failures."""
        ...


def failed_reading(point: Point, device_id: str | None, reason: str, detail: str) -> Reading:
    """A bad reading with no value: the point could not be read, and ``detail`` says why."""
    return Reading(point_id=point.id, value=None, unit=point.unit, quality=Quality.BAD, reasons=[reason],
                   device_id=device_id, detail=detail)


DeviceT = TypeVar("DeviceT", bound=Device)
PointT = TypeVar("PointT", bound=Point)


class ConfiguredPoints(Generic[DeviceT, PointT]):
    """The devices and points an adapter serves, as the site file declares them, and the lookups
    every adapter makes on them. Set ``_label`` (for messages) and ``_point_type``."""

    _label: ClassVar[str]
    _point_type: ClassVar[type[Point]]

    def __init__(self, devices: Sequence[DeviceT]) -> None:
        self._devices: list[DeviceT] = list(devices)
        self._points: dict[str, PointT] = {p.id: p for d in self._devices for p in d.points}  # type: ignore[attr-defined]

    def devices(self) -> list[DeviceT]:
        return list(self._devices)

    def point(self, point_id: str) -> PointT | None:
        return self._points.get(point_id)

    def points(self) -> list[PointT]:
        return list(self._points.values())

    def _resolve(self, point: Point) -> PointT | None:
        """The configured point for ``point``; an unconfigured point of this protocol on a known
        device is taken as given (tools may address points that are not in the site file)."""
        configured = self._points.get(point.id)
        if configured is not None:
            return configured
        if isinstance(point, self._point_type) and any(d.id == point.device_id for d in self._devices):
            return point  # type: ignore[return-value]
        return None

    def _known(self, point: Point) -> PointT:
        """``_resolve``, or DeviceError ``unknown_point``."""
        found = self._resolve(point)
        if found is None:
            raise DeviceError(f"no {self._label} point '{point.id}'", code="unknown_point", point=point.id)
        return found

    async def _read_by_device(
        self, points: Sequence[Point],
        read_device: Callable[[str, list[PointT], dict[str, Reading]], Awaitable[None]],
    ) -> list[Reading]:
        """One Reading per requested point, in order: each device's points are read by
        ``read_device(device_id, points, results)`` (which fills ``results``), devices concurrently."""
        by_device: dict[str, list[PointT]] = {}
        results: dict[str, Reading] = {}
        asked: set[str] = set()
        for point in points:
            resolved = self._resolve(point)
            if resolved is None:
                results[point.id] = failed_reading(point, None, "unknown_point", f"unknown_point: {point.id}")
            elif resolved.id not in asked:
                asked.add(resolved.id)
                by_device.setdefault(resolved.device_id, []).append(resolved)
        await asyncio.gather(*(read_device(d, pts, results) for d, pts in by_device.items()))
        out: list[Reading] = []
        given: set[str] = set()
        for point in points:
            reading = results[point.id]
            # A point asked for twice gets its own copy, so marking one leaves the other alone.
            out.append(reading.model_copy(deep=True) if point.id in given else reading)
            given.add(point.id)
        return out
