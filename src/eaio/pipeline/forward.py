"""Store-and-forward: a remote store (InfluxDB) behind the durable local buffer.

``ForwardingStore(buffer, remote)`` implements ``pipeline.base.Store``. ``write`` returns once the
readings are committed to the buffer file; one background task (the forwarder) then moves them
to the remote, oldest first, in batches of at most ``batch_size``, and deletes them from the
buffer only once the remote has acknowledged them. So a remote outage costs latency, not data;
a crash of this process loses nothing that ``write`` had accepted (it is forwarded first on the
next start).

- A retryable failure (outage, 5xx, 401/403/404, timeout) retries the SAME batch after an
  exponential backoff with full jitter (the window doubles from ``retry_initial_s`` up to
  ``retry_max_s``; tenacity's ``wait_random_exponential``). A single forwarder, the same batch
  until it passes: each point's readings reach the remote in order.
- A batch the remote refuses for good (400/413: a bad line) is parked in the buffer with the
  error: counted in ``health().parked``, never retried by itself, never lost.
- Replays are harmless: a batch whose write timed out after the server had stored it is sent
  again, and InfluxDB keys a point by series and time, so the same line twice is one point.
- While the remote is healthy and the buffer empty, the forwarder sleeps on an event that every
  ``write`` sets: no polling. While one batch is on the wire, the next is read from the buffer.

Queries (``latest``, ``history``, ``counts``) go to the remote and raise ``StoreError`` while it
is unreachable; dead letters stay in the buffer file (its ``dead_letter`` table).

Measuring it (the benchmark): open a ``ForwardingStore`` on a fresh buffer and the target store,
``await store.write(batch)`` for batches of 5,000 readings, then ``await store.drain()``; readings
divided by the elapsed time, against the target's own ``write`` of the same batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, Field
from tenacity import RetryCallState, wait_random_exponential

from ..errors import StoreError
from ..models import DeadLetter, Reading, ReadingBatch, utcnow
from .base import Aggregate, Bucket, Store
from .buffer import DurableBuffer

__all__ = ["ForwardingStore", "StoreHealth"]

log = logging.getLogger("eaio.forward")

_Outcome = Literal["sent", "retry", "park"]


class StoreHealth(BaseModel):
    """How a store is doing, as ingest reports it. Remote fields are 0 for a local store."""

    backend: str
    ok: bool | None = Field(default=None, description="Whether the last write reached the store (None: none yet)")
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_ok_at: datetime | None = None
    buffered: int = Field(default=0, description="Readings in the durable buffer, not yet acknowledged by the store")
    capacity: int = Field(default=0, description="Most readings the buffer holds (0: no buffer)")
    fill: float = Field(default=0.0, ge=0, le=1, description="buffered / capacity")
    near_full: bool = Field(default=False, description="The buffer passed 90% full (cleared under 80%)")
    forwarded: int = Field(default=0, description="Readings the store acknowledged since start")
    retries: int = Field(default=0, description="Failed store writes that were tried again")
    parked: int = Field(default=0, description="Readings the store refused for good, kept in the buffer's parked table")


class ForwardingStore:
    """``async with ForwardingStore(DurableBuffer(path, cap), remote) as store:`` (see the module doc).

    The remote is opened by the forwarder, retried with the same backoff while it cannot be: a
    store that is down when ingest starts only delays forwarding. ``close_timeout_s`` bounds the
    last attempt to empty the buffer at exit while the remote is healthy; what is left stays in
    the file for the next start.
    """

    def __init__(self, buffer: DurableBuffer, remote: Store, *, backend: str = "remote", batch_size: int = 5_000,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0, close_timeout_s: float = 5.0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if buffer.chunk_size > batch_size:  # a peek hands out whole chunks: one would not fit a batch
            raise ValueError(f"the buffer's chunk_size ({buffer.chunk_size}) is over batch_size ({batch_size})")
        self.buffer = buffer
        self.remote = remote
        self.backend = backend
        self.batch_size = batch_size
        self.close_timeout_s = close_timeout_s
        self._wait = wait_random_exponential(multiplier=retry_initial_s, max=retry_max_s)
        self._stack = AsyncExitStack()
        self._remote_open = False
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()  # set by write: wakes an idle forwarder
        self._progress = asyncio.Event()  # set whenever readings leave the outbox (drain waits on it)
        self._health = StoreHealth(backend=backend, capacity=buffer.max_readings)

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self.buffer)
        self._new.set()  # readings left by an earlier run go first
        self._task = asyncio.create_task(self._forward(), name=f"forward-{self.backend}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None:
                if self._remote_open and self._health.ok is not False and self.buffer.count:
                    await self.drain(self.close_timeout_s)  # the last attempt; an outage gets none
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
        finally:
            await self._stack.aclose()  # the remote (when it was opened), then the buffer
            self._remote_open = False
        if self.buffer.count:
            log.info("%d readings stay in the buffer %s for the next start", self.buffer.count, self.buffer.path)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until the buffer is empty (everything forwarded or parked); False after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.buffer.count:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    def health(self) -> StoreHealth:
        h = self._health.model_copy()
        b = self.buffer
        h.buffered, h.fill, h.near_full, h.parked = b.count, b.fill, b.near_full, b.parked
        return h

    # -- the Store interface ---------------------------------------------------------------
    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        """Commit readings to the buffer; returns how many. When only some fit, the first ones are
        taken (and counted); when none fit, ``StoreError("buffer full ...", retryable=True)``."""
        b = readings if isinstance(readings, ReadingBatch) else ReadingBatch.from_readings(readings)
        room = self.buffer.max_readings - self.buffer.count
        if 0 < room < len(b):
            b = b.copy().take(room)  # the caller's batch stays whole
        n = await self.buffer.append(b)
        if n:
            self._new.set()
        return n

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self.buffer.add_dead_letter(letter)

    async def dead_letter_count(self) -> int:
        return await self.buffer.dead_letter_count()

    async def latest(self, point_ids: Sequence[str] | None = None) -> list[Reading]:
        return await self._query().latest(point_ids)

    async def history(self, point_id: str, start: datetime, end: datetime, bucket_s: float | None = None,
                      agg: Aggregate = "mean") -> list[Reading] | list[Bucket]:
        return await self._query().history(point_id, start, end, bucket_s, agg)

    async def counts(self) -> Any:
        counts = getattr(self.remote, "counts", None)
        if counts is None:
            raise StoreError(f"{self.backend} cannot count readings", retryable=False)
        self._query()
        return await counts()

    def _query(self) -> Store:
        if not self._remote_open:
            raise StoreError(f"{self.backend} is not reachable yet: {self._health.last_error or 'connecting'}",
                             retryable=True)
        return self.remote

    # -- the forwarder ---------------------------------------------------------------------
    async def _forward(self) -> None:
        await self._open_remote()
        done = 0  # the last seq acknowledged or parked
        cur: tuple[int, ReadingBatch] | None = None
        attempt = 0
        while True:
            try:
                if cur is None:
                    self._new.clear()  # before the peek: a write after it sets it again
                    cur = await self.buffer.peek(self.batch_size, after=done)
                    if not len(cur[1]):
                        cur = None
                        self._progress.set()
                        await self._new.wait()
                        continue
                last_seq, batch = cur
                # The next batch is read from the buffer while this one is on the wire (unless the
                # store is failing: then this one is likely to be sent again).
                ahead = None
                if self._health.ok is not False:
                    ahead = asyncio.ensure_future(self.buffer.peek(self.batch_size, after=last_seq))
                try:
                    outcome = await self._send(batch)
                finally:
                    nxt = await ahead if ahead is not None else None
                if outcome == "retry":
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                attempt = 0
                if outcome == "sent":
                    await self.buffer.ack(last_seq)
                else:
                    await self.buffer.park(last_seq, self._health.last_error or "refused")
                done = last_seq
                self._progress.set()
                cur = nxt if nxt is not None and len(nxt[1]) else None
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the buffer itself failed (disk full...): nothing is lost, try again
                attempt += 1
                log.warning("forwarder: %s; retrying", err)
                cur = None  # read again from the buffer: it is the truth
                await asyncio.sleep(self._backoff(attempt))

    async def _open_remote(self) -> None:
        attempt = 0
        while True:
            try:
                await self._stack.enter_async_context(self.remote)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as err:
                attempt += 1
                self._failed(err, retry=True)
                await asyncio.sleep(self._backoff(attempt))
                continue
            self._remote_open = True
            return

    async def _send(self, batch: ReadingBatch) -> _Outcome:
        try:
            await self.remote.write(batch)
        except asyncio.CancelledError:
            raise
        except StoreError as err:
            self._failed(err, retry=err.retryable)
            return "retry" if err.retryable else "park"
        except Exception as err:  # not a StoreError: a bug or an untranslated library error; keep the data
            log.exception("forwarder: unexpected error from %s", self.backend)
            self._failed(err, retry=True)
            return "retry"
        h = self._health
        if h.ok is False:
            log.info("%s is back: forwarding again (%d readings buffered)", self.backend, self.buffer.count)
        h.ok, h.last_ok_at = True, utcnow()
        h.forwarded += len(batch)
        return "sent"

    def _failed(self, err: Exception, *, retry: bool) -> None:
        h = self._health
        h.last_error, h.last_error_at = str(err), utcnow()
        if not retry:
            # The store answered, and refused this batch's content: it is up (ok unchanged).
            log.warning("%s refused a batch for good: %s (parked in %s)", self.backend, err, self.buffer.path)
            return
        if h.ok is not False:  # the first failure of a streak is worth a warning; the rest are noise
            log.warning("%s failed: %s (%d readings buffered; retrying with backoff)", self.backend, err,
                        self.buffer.count)
        h.ok = False
        h.retries += 1

    def _backoff(self, attempt: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))
