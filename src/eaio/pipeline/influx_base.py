"""What the InfluxDB stores (v1 over HTTP, v2 through influxdb-client) share: the settings, the
line encoder with each point's tags, and writing a batch as one body of line protocol.
Each version supplies ``write_lines`` (its endpoint and precision spelling) and its queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Self

from ..config import InfluxSettings, SiteConfig
from ..errors import StoreError
from ..models import Point, Reading, ReadingBatch
from .lineproto import LineEncoder

__all__ = ["InfluxStoreBase"]


class InfluxStoreBase:
    def __init__(self, settings: InfluxSettings, site_id: str, points: Iterable[Point] = ()) -> None:
        self.settings = settings
        self.site_id = site_id
        points = list(points)
        self.encoder = LineEncoder(settings.measurement, site_id, points)
        # Values come back from InfluxDB as floats: these points read back as bools.
        self._binary = frozenset(p.id for p in points if p.is_binary)

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Self:
        settings = cfg.storage.influxdb
        if settings is None:
            raise StoreError("storage.influxdb is not configured", retryable=False)
        return cls(settings, cfg.site.id, cfg.points())

    async def write_lines(self, body: bytes) -> None:
        raise NotImplementedError

    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        """One POST of every reading (bad ones too); returns how many were written."""
        b = readings if isinstance(readings, ReadingBatch) else ReadingBatch.from_readings(readings)
        if not len(b):
            return 0
        await self.write_lines(self.encoder.encode(b))
        return len(b)
