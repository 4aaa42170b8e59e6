"""Rows that devices push (BACnet COV notifications, OPC-UA data changes), gathered for a moment
and handed to each subscriber as a ``ReadingBatch`` of its own points."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from ..models import Point, Quality, ReadingBatch
from .base import ReadingCallback

__all__ = ["PushedBatches"]

log = logging.getLogger(__name__)

LINGER_S = 0.01  # one wake-up per burst of notifications, not one per row


class PushedBatches:
    def __init__(self, name: str) -> None:
        self._name = name
        self._subscribers: list[tuple[frozenset[str], ReadingCallback]] = []
        self._pending = ReadingBatch()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, point_ids: Iterable[str], callback: ReadingCallback) -> None:
        """Hand ``callback`` the rows of these points from now on (starts the hand-out task)."""
        self._subscribers.append((frozenset(point_ids), callback))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name} hand-out")

    def row(self, point: Point, value: object, ts_us: int, quality: Quality, reasons: list[str]) -> None:
        b = self._pending
        b.append(point.id, value, ts_us, point.unit, point.device_id, quality)  # type: ignore[arg-type]
        if reasons:
            b.reasons[len(b) - 1] = reasons
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._subscribers.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(LINGER_S)
            self._wake.clear()
            batch, self._pending = self._pending, ReadingBatch()
            if not len(batch):
                continue
            for ids, callback in list(self._subscribers):
                rows = [i for i, pid in enumerate(batch.point_id) if pid in ids]
                if not rows:
                    continue
                try:
                    # Each subscriber owns what it is given and may mark it.
                    await callback(batch.select(rows))
                except Exception:
                    log.exception("%s: a subscriber failed on a batch of %d", self._name, len(rows))
