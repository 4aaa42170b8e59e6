"""The small interfaces of the pipeline's stages: validator (pure) and store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, Self

from pydantic import BaseModel

from ..models import DeadLetter, Reading, ReadingBatch

__all__ = ["Aggregate", "Bucket", "Store", "Validator"]

Aggregate = Literal["mean", "min", "max", "last", "count"]


class Bucket(BaseModel):
    """One time bucket of an aggregated series (bad readings excluded)."""

    point_id: str
    start: datetime
    value: float | None
    count: int


class Validator(Protocol):
    def validate(self, readings: list[Reading], now: datetime) -> list[Reading]:
        """Mark quality on a batch in place (never drops a reading) and return it. No I/O."""
        ...


class Store(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        """Persist readings (bad ones too); returns how many were written. Ingest gives batches."""
        ...

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep input that could not become readings (raw bytes, topic, reason); never raises on content."""
        ...

    async def latest(self, point_ids: Sequence[str] | None = None) -> list[Reading]:
        """The newest reading of each point (all points when None)."""
        ...

    async def history(
        self,
        point_id: str,
        start: datetime,
        end: datetime,
        bucket_s: float | None = None,
        agg: Aggregate = "mean",
    ) -> list[Reading] | list[Bucket]:
        """Raw readings in [start, end), or time buckets of ``bucket_s`` seconds when given."""
        ...
