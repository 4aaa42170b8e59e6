"""The write guard: what may be written, and the timed restore of temporary overrides.

``check_write`` is pure (no I/O). ``RestoreScheduler`` owns the timers that put a point back to
the value it had before a temporary write; on shutdown it restores at once rather than
dropping them, so stopping a server never leaves an override in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import DeviceError
from ..models import Point, Value, utcnow
from ..models.write import MAX_DURATION_S

__all__ = ["PendingWrite", "RestoreFn", "RestoreScheduler", "check_write"]

log = logging.getLogger(__name__)

RestoreFn = Callable[[Point, Value], Awaitable[None]]


def _refuse(code: str, message: str, point: Point) -> DeviceError:
    return DeviceError(message, code=code, device=point.device_id, point=point.id)


def check_write(point: Point, value: Value, duration_s: float | None = None) -> Value:
    """The value to write, normalised (bool points get a bool). Raises DeviceError with code
    not_writable, out_of_bounds or invalid_argument."""
    if not point.writable:
        raise _refuse("not_writable", f"point '{point.id}' is read-only in the site configuration", point)
    if duration_s is not None and not (0 < duration_s <= MAX_DURATION_S):
        raise _refuse("invalid_argument", f"duration_s must be in (0, {MAX_DURATION_S}], got {duration_s}", point)
    if point.is_binary:
        # 0/1 are accepted because many clients send numbers for switches; 2 or 0.5 are not.
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise _refuse("out_of_bounds", f"'{point.id}' is on/off: write true/false (or 1/0), not {value!r}", point)
    if isinstance(value, bool):
        raise _refuse("invalid_argument", f"'{point.id}' is numeric ({point.unit or 'no unit'}), not on/off", point)
    if not math.isfinite(float(value)):
        raise _refuse("invalid_argument", f"{value!r} is not a finite number", point)
    bounds = point.write_bounds
    if bounds is None or not bounds.contains(float(value)):
        allowed = bounds.describe() if bounds else "(none configured)"
        raise _refuse(
            "out_of_bounds", f"{value} {point.unit} is outside the write bounds {allowed} of '{point.id}'", point
        )
    return value


@dataclass
class PendingWrite:
    point: Point
    restore_value: Value
    restore_at: datetime
    task: asyncio.Task[None]


class RestoreScheduler:
    """Timers that restore temporary writes. One pending restore per point.

    ``lock_for(point_id)`` is the lock writes to that point hold: a restore takes it too, so a
    restore and a new write to the same point never interleave.
    """

    def __init__(self, restore: RestoreFn, lock_for: Callable[[str], asyncio.Lock]) -> None:
        self._restore = restore
        self._lock_for = lock_for
        self._pending: dict[str, PendingWrite] = {}
        self._running: set[asyncio.Task[None]] = set()

    def pending(self) -> list[PendingWrite]:
        return list(self._pending.values())

    def original_value(self, point_id: str) -> Value | None:
        """The value a pending restore would put back: the one from before the FIRST override."""
        p = self._pending.get(point_id)
        return None if p is None else p.restore_value

    def cancel(self, point_id: str) -> PendingWrite | None:
        """Call with the point's lock held."""
        p = self._pending.pop(point_id, None)
        if p is not None:
            p.task.cancel()
        return p

    def schedule(self, point: Point, restore_value: Value, duration_s: float) -> datetime:
        """Call with the point's lock held."""
        self.cancel(point.id)
        restore_at = utcnow() + timedelta(seconds=duration_s)
        task = asyncio.create_task(self._later(point.id, duration_s), name=f"restore {point.id}")
        self._pending[point.id] = PendingWrite(point, restore_value, restore_at, task)
        return restore_at

    async def _later(self, point_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock_for(point_id):
            p = self._pending.get(point_id)
            if p is None or p.task is not asyncio.current_task():
                return  # superseded by a newer write while this timer waited for the lock
            del self._pending[point_id]
            # From here the restore is in flight: shutdown waits for it rather than cancelling it.
            self._running.add(p.task)
            try:
                await self._restore(p.point, p.restore_value)
            except Exception as err:  # audited by the restore itself; a timer has no one to raise to
                log.warning("restore of %s failed: %s", point_id, err)
            finally:
                self._running.discard(p.task)

    async def restore_all(self, timeout_s: float = 10.0) -> None:
        """Shutdown: run every pending restore now and wait for those in flight."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout_s)
        while self._pending:
            point_id, p = next(iter(self._pending.items()))
            async with self._lock_for(point_id):
                if self._pending.get(point_id) is not p:
                    continue
                del self._pending[point_id]
                p.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await p.task
                log.info("shutdown: restoring %s to %r now, not at %s", point_id, p.restore_value, p.restore_at)
                try:
                    await asyncio.wait_for(self._restore(p.point, p.restore_value), timeout_s)
                except Exception:  # the restore audits its own failure; keep restoring the others
                    log.exception("restore of %s at shutdown failed", point_id)
