"""The one small interface every protocol adapter keeps.

An adapter owns the connections to all devices of its protocol. Constructors never connect;
``async with adapter:`` opens the connections lazily and closes them on exit. Library types
never leave an adapter: everything it returns is a ``Reading``, ``Point`` or ``WriteResult``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, Self, runtime_checkable

from ..models import Device, Point, Reading, ReadingBatch, Value

__all__ = ["Adapter", "DeviceHealth", "ReadingCallback"]

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
