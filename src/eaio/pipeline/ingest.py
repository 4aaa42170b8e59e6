"""The ingest loop: poll every device, validate, store in batches. Never through MCP or an LLM.

Protocols that push (MQTT) are not polled: their adapter delivers readings through
``subscribe`` and the same validator and batched writer take them from there. Messages that
cannot become readings arrive as dead letters and go to the store's dead-letter table.
Protocols that may push (BACnet change-of-value) subscribe too, and each poll skips the points
the adapter reports as ``pushed`` at that moment: a subscription that fails or lapses hands its
points back to polling.

One asyncio task per (device, poll interval) group, so a slow or dead device never delays the
others; a tick that comes while the previous poll still runs is skipped, not queued. Polled
readings go through the validator into a pending queue that one writer task drains in batches
of ``cfg.ingest.batch_size``. When the store fails, the batch goes back to the queue (bounded:
the oldest readings are dropped first, and counted) and is retried on the next tick.

The store is the configured one (``stores.open_store``): SQLite written directly, or InfluxDB
behind the durable buffer, whose failures then only fill the buffer. ``stats().store`` says how
the store is doing (``StoreHealth``), for the summary line too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, Field

from ..config import SiteConfig
from ..models import DeadLetter, FaultCode, Point, Quality, Reading, ReadingBatch, Reason, Severity, to_us, utcnow
from ..protocol_adapters import Adapter, build_adapter
from .base import Store
from .energy import EnergyTracker
from .events import EventBus, EventBusStats
from .forward import StoreHealth
from .sqlite import SqliteStore
from .stores import describe_store, open_store
from .validate import QualityValidator, StaleState

__all__ = ["PUSHED", "DeviceStats", "Ingest", "IngestStats", "run_ingest"]

log = logging.getLogger("eaio.ingest")

MIN_READ_GUARD_S = 10.0  # an adapter read that hangs longer than this (or N polls) becomes comm_failure data
MIN_BACKLOG = 100_000
PUSHED = frozenset({"mqtt"})  # protocols whose adapter delivers readings by subscription
METADATA_CONCURRENCY = 8  # limits/units questions in flight at start (a device answers them one by one anyway)
HEALTH_EVERY_S = 1.0  # how often a pushing adapter's connection state is copied into the stats


class DeviceStats(BaseModel):
    device_id: str
    protocol: str
    polls: int = 0
    failed_polls: int = 0
    skipped_ticks: int = Field(default=0, description="Ticks skipped because the previous poll still ran")
    last_poll: datetime | None = None
    last_ok: bool | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    pushed: int = Field(default=0, description="Readings the device pushed (protocols that push)")
    dead_letters: int = Field(default=0, description="Messages from the device that became dead letters")
    last_message: datetime | None = None


class IngestStats(BaseModel):
    started_at: datetime | None = None
    readings_stored: int = 0
    bad_stored: int = 0
    store_errors: int = 0
    last_store_error: str | None = None
    backlog: int = Field(default=0, description="Readings waiting for the store")
    dropped: int = Field(default=0, description="Readings lost because the backlog was full")
    dead_letters: int = Field(default=0, description="Messages that could not become readings")
    dead_letter_errors: int = Field(default=0, description="Dead letters the store failed to keep")
    store: StoreHealth | None = Field(default=None, description="How the store is doing (as of this call)")
    events: EventBusStats | None = Field(default=None, description="The event bus (published, dropped, broker)")
    devices: dict[str, DeviceStats] = Field(default_factory=dict)


@dataclass(slots=True)
class PollGroup:
    """The points of one device that share one poll interval."""

    protocol: str
    device_id: str
    interval_s: float
    points: list[Point]


def poll_groups(cfg: SiteConfig) -> list[PollGroup]:
    groups: dict[tuple[str, float], PollGroup] = {}
    for dev in cfg.devices:
        if dev.protocol in PUSHED:
            continue  # subscribed, not polled
        for p in dev.points:
            interval = p.poll_interval_s or dev.poll_interval_s
            key = (dev.id, interval)
            if key not in groups:
                groups[key] = PollGroup(protocol=dev.protocol, device_id=dev.id, interval_s=interval, points=[])
            groups[key].points.append(p)
    return list(groups.values())


def failed_readings(points: Sequence[Point], detail: str) -> list[Reading]:
    """Bad readings for points whose read did not complete, as an adapter reports a dead device."""
    now = utcnow()
    return [
        Reading(point_id=p.id, value=None, unit=p.unit, ts=now, quality=Quality.BAD,
                reasons=[Reason.COMM_FAILURE.value], device_id=p.device_id or None, detail=detail)
        for p in points
    ]


class Ingest:
    """``async with Ingest(cfg) as ingest:`` polls until the block exits; ``ingest.stats()`` any time.

    ``store`` may be given (its lifetime is then the caller's); otherwise the configured store
    (``stores.open_store``) is opened here, and closed after the last flush.
    """

    def __init__(self, cfg: SiteConfig, *, store: Store | None = None, backlog_limit: int | None = None) -> None:
        self.cfg = cfg
        self.store: Store | None = store
        self._validator = QualityValidator.from_config(cfg)
        # Interval energy and demand, derived from counters and power points as intervals close.
        self._energy = EnergyTracker.from_config(cfg)
        # Readings (decimated), quality changes, faults, demand: in process, and on MQTT when configured.
        self.events = EventBus.from_config(cfg)
        self._store_ok: bool | None = None
        self._store_near_full = False
        self._stale = StaleState()
        self._groups = poll_groups(cfg)
        self._batch = cfg.ingest.batch_size
        self._backlog_limit = backlog_limit or max(MIN_BACKLOG, 4 * self._batch)
        self._retry_s = min([1.0, *(g.interval_s for g in self._groups)])
        # Validated readings waiting for the store, as batches (columns: no object per reading).
        self._pending: deque[ReadingBatch] = deque()
        self._pending_n = 0
        # Manual MQTT acks: (position, ack) of pushed batches, fired once every reading up to that
        # position has left the backlog (stored, or dropped by _trim). Positions count readings
        # ever queued; the backlog is first in, first out, so "left" is one counter too.
        self._acks: deque[tuple[int, Callable[[], None]]] = deque()
        self._queued_total = 0
        self._left_total = 0
        self._adapters: dict[str, Adapter] = {}
        self._stack = AsyncExitStack()  # the adapters
        self._store_stack = AsyncExitStack()  # the store we opened: closed after the writer's last flush
        self._tasks: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._room = asyncio.Event()  # set while the backlog has room for pushed readings
        self._room.set()
        self._closing = False
        self._stats = IngestStats(devices={
            d.id: DeviceStats(device_id=d.id, protocol=d.protocol) for d in cfg.devices
        })
        # For a store that reports no health of its own (SQLite): what its writes here tell.
        self._store_health = StoreHealth(
            backend=cfg.storage.backend if store is None else "sqlite" if isinstance(store, SqliteStore)
            else type(store).__name__)

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._wake = asyncio.Event()  # before the adapters: a pushed batch may come as they connect
        try:
            # The bus first on the store's stack: it is closed last, after the final flush, so the
            # adapters' last batches and the store's last state still reach it.
            await self._store_stack.enter_async_context(self.events)
            if self.store is None:
                self.store = await self._store_stack.enter_async_context(open_store(self.cfg))
            for proto in self.cfg.protocols():
                devices = self.cfg.devices_for(proto)
                if proto in PUSHED:
                    adapter = build_adapter(proto, devices, role="ingest")
                    # Subscribed BEFORE it connects: right after the CONNACK the broker sends what
                    # it kept for our persistent session (published while ingest was down), and
                    # an adapter with no subscriber yet would acknowledge those messages and drop them.
                    # acks=True: the broker hears of a message only once its readings are stored.
                    await adapter.subscribe([p for d in devices for p in d.points], self._on_pushed,
                                            self._on_dead_letter, acks=True)  # type: ignore[call-arg]
                else:
                    adapter = build_adapter(proto, devices)
                self._adapters[proto] = await self._stack.enter_async_context(adapter)
        except BaseException:
            await self._close_stacks()
            raise
        try:
            await self._server_metadata()
        except BaseException:
            await self._close_stacks()
            raise
        self._stats.started_at = utcnow()
        self._writer = asyncio.create_task(self._write_loop(), name="ingest-writer")
        for g in self._groups:
            task = asyncio.create_task(self._poll_loop(g), name=f"ingest-poll-{g.device_id}-{g.interval_s:g}s")
            self._tasks.append(task)
        try:
            await self._subscribe_pushed()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            # Adapters first: a pushing adapter hands over its last batch as it closes (messages
            # the broker already counts as delivered), and the writer is still there to store it.
            await self._stack.aclose()
        finally:
            try:
                # The writer is not cancelled mid-transaction (the thread would commit a batch we
                # had lost track of): it is told to make one last flush and return.
                if self._writer is not None and self._wake is not None:
                    self._closing = True
                    self._room.set()
                    self._wake.set()
                    await asyncio.gather(self._writer, return_exceptions=True)
                    self._writer = None
            finally:
                await self._store_stack.aclose()  # after the last flush, which still needs it
        if self._pending_n:
            log.warning("ingest stopped with %d readings not stored", self._pending_n)

    async def _close_stacks(self) -> None:
        try:
            await self._stack.aclose()
        finally:
            await self._store_stack.aclose()

    async def _server_metadata(self) -> None:
        """Limits and units the site file leaves out, from servers that publish them (an OPC-UA
        node's EURange and EngineeringUnits, a BACnet object's units and min/max-pres-value): a
        range check and a unit are worth having either way. A server that cannot say (or is down
        now) costs nothing: the point goes on without. The questions go out a few at a time, all
        within one guard time, so a dead device delays the start by that much at most."""
        asks = []
        gate = asyncio.Semaphore(METADATA_CONCURRENCY)
        for proto, adapter in self._adapters.items():
            limits = getattr(adapter, "limits", None)
            if limits is None:
                continue
            asks += [self._ask_limits(limits, p, gate) for d in self.cfg.devices_for(proto) for p in d.points
                     if p.limits is None or not p.unit]
        if not asks:
            return
        try:
            async with asyncio.timeout(MIN_READ_GUARD_S):
                await asyncio.gather(*asks)
        except TimeoutError:
            log.warning("servers' limits and units: not all answered within %g s; the rest go without",
                        MIN_READ_GUARD_S)

    async def _ask_limits(self, limits: Any, p: Point, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                info = await limits(p)
            except Exception as err:
                log.debug("no server limits for %s: %s", p.id, err)
                return
        eu_range = info.get("eu_range")
        if p.limits is None and eu_range:
            self._validator.set_limits(p.id, float(eu_range[0]), float(eu_range[1]))
            log.info("%s: limits %s..%s from the server's EURange", p.id, eu_range[0], eu_range[1])
        if not p.unit and info.get("unit"):
            # The adapter builds readings from these same point objects.
            p.unit = str(info["unit"])

    @property
    def readings_stored(self) -> int:
        """Readings the store has acknowledged so far (cheap: no copy of the stats)."""
        return self._stats.readings_stored

    def stats(self) -> IngestStats:
        s = self._stats.model_copy(deep=True)
        s.backlog = self._pending_n
        s.store = self.store_health()
        s.events = self.events.stats()
        return s

    def store_health(self) -> StoreHealth:
        """The store's own report when it has one (a buffered remote), else what its writes told."""
        health = getattr(self.store, "health", None)
        return health() if callable(health) else self._store_health.model_copy()

    # -- pushed readings (MQTT) -------------------------------------------------------------
    async def _subscribe_pushed(self) -> None:
        for proto, adapter in self._adapters.items():
            points = [p for d in self.cfg.devices_for(proto) for p in d.points]
            if proto in PUSHED:  # subscribed in __aenter__, before connecting
                self._tasks.append(asyncio.create_task(self._health_loop(adapter), name=f"ingest-health-{proto}"))
            elif hasattr(adapter, "pushed"):
                await adapter.subscribe(points, self._on_pushed)
        self._tasks.append(asyncio.create_task(self._store_watch(), name="ingest-store-watch"))

    def _derive_and_publish(self, batch: ReadingBatch) -> None:
        """After validation: add the energy intervals that just closed, then publish the events."""
        derived = self._energy.observe(batch)
        if len(derived):
            batch.extend(derived)
        self.events.observe(batch)

    async def _on_pushed(self, batch: ReadingBatch, ack: Callable[[], None] | None = None) -> None:
        """A batch from a pushing adapter: validate and queue, as a poll would. ``ack`` is called
        once all of the batch has left the backlog (see _release)."""
        now = utcnow()
        self._validator.validate_batch(batch, to_us(now), self._stale)
        self._derive_and_publish(batch)
        # Counted per device per batch: a stats model's attribute update per reading would cost
        # about as much as validating it.
        for device_id, n in Counter(batch.device_id).items():
            ds = self._stats.devices.get(device_id or "")
            if ds is not None:
                ds.pushed += n
                ds.last_message = now
        # Pushed readings wait for room instead of pushing older ones out of the backlog: the
        # adapter then slows its network reads and the broker holds the rest, so a burst (or a
        # slow store) costs latency, not data. Polled readings cannot wait; they trim. A batch
        # larger than the backlog goes in by pieces, each waiting for its room.
        step = max(1, self._backlog_limit // 2)
        while len(batch):
            piece = batch.take(step)
            while self._pending_n and self._pending_n + len(piece) > self._backlog_limit and not self._closing:
                self._room.clear()
                if self._wake is not None:
                    self._wake.set()
                await self._room.wait()
            self._enqueue(piece)
        if ack is not None:
            self._acks.append((self._queued_total, ack))
            self._release()

    async def _on_dead_letter(self, letter: DeadLetter) -> None:
        """Keep the raw message for a person; count it; never let it stop ingest."""
        self._stats.dead_letters += 1
        device_id = letter.source.partition(":")[2]
        if (ds := self._stats.devices.get(device_id)) is not None:
            ds.dead_letters += 1
        log.log(logging.WARNING if self._stats.dead_letters <= 10 else logging.DEBUG,
                "dead letter from %s on '%s': %s %s", letter.source, letter.topic, letter.reason, letter.detail)
        assert self.store is not None
        try:
            await self.store.add_dead_letter(letter)
        except Exception as err:  # a failing store costs the letter, not the ingest
            self._stats.dead_letter_errors += 1
            log.warning("could not store a dead letter from %s: %s", letter.source, err)

    async def _health_loop(self, adapter: Adapter) -> None:
        while True:
            try:
                for h in adapter.health():
                    self._note_health(h)
            except Exception:  # an adapter bug must not end the health watch
                log.exception("health of the %s adapter failed", adapter.protocol)
            await asyncio.sleep(HEALTH_EVERY_S)

    def _note_health(self, h: dict[str, object]) -> None:
        ds = self._stats.devices.get(str(h.get("device_id", "")))
        if ds is None:
            return
        ok = bool(h.get("connected", h.get("online", False)))
        error = h.get("last_error")
        if ok and ds.last_ok is False:
            log.info("device %s connected again", ds.device_id)
            self._device_fault(ds.device_id, None)
        elif not ok and ds.last_ok is not False:
            log.warning("device %s not connected: %s", ds.device_id, error or "connecting")
            ds.last_error, ds.last_error_at = str(error or "not connected"), utcnow()
            self._device_fault(ds.device_id, ds.last_error)
        ds.last_ok = ok

    def _device_fault(self, device_id: str, error: str | None) -> None:
        """A device went offline (error) or came back (None): a fault event for agents and dashboards."""
        if error is None:
            self.events.fault(device_id, f"{device_id} answers again", Severity.INFO,
                              code=FaultCode.DEVICE_ONLINE, device_id=device_id)
        else:
            self.events.fault(device_id, f"{device_id} is offline: {error}", Severity.WARNING,
                              code=FaultCode.DEVICE_OFFLINE, device_id=device_id)

    async def _store_watch(self) -> None:
        """Store failures and a filling buffer as fault events, on each change of state."""
        while True:
            try:
                self._note_store(self.store_health())
            except Exception:  # a bug here must not end the watch
                log.exception("store health check failed")
            await asyncio.sleep(HEALTH_EVERY_S)

    def _note_store(self, h: StoreHealth) -> None:
        if h.ok is not None and h.ok != self._store_ok:
            if not h.ok:
                self.events.fault("store", f"store writes fail ({h.backend}): {h.last_error}", Severity.CRITICAL
                                  if h.capacity == 0 else Severity.WARNING, code=FaultCode.STORE_FAILING)
            elif self._store_ok is False:
                self.events.fault("store", f"store writes succeed again ({h.backend})", Severity.INFO,
                                  code=FaultCode.STORE_RECOVERED)
            self._store_ok = h.ok
        if h.near_full != self._store_near_full:
            if h.near_full:
                self.events.fault("store", f"buffer {h.fill:.0%} full ({h.buffered} readings wait for {h.backend})",
                                  Severity.WARNING, code=FaultCode.BUFFER_HIGH, value=round(h.fill * 100, 1), unit="%")
            else:
                self.events.fault("store", f"buffer below 80% ({h.buffered} readings)", Severity.INFO,
                                  code=FaultCode.BUFFER_OK, value=round(h.fill * 100, 1), unit="%")
            self._store_near_full = h.near_full

    # -- polling ---------------------------------------------------------------------------
    async def _poll_loop(self, group: PollGroup) -> None:
        adapter = self._adapters[group.protocol]
        loop = asyncio.get_running_loop()
        interval = group.interval_s
        due = loop.time()
        while True:
            try:
                await self.poll_once(adapter, group)
            except Exception:  # a bug past the adapter must not end this device's polling for good
                log.exception("poll of %s failed", group.device_id)
            due += interval
            now = loop.time()
            if now >= due:  # the poll overran: skip the missed ticks rather than catching up
                missed = int((now - due) // interval) + 1
                due += missed * interval
                self._stats.devices[group.device_id].skipped_ticks += missed
            await asyncio.sleep(due - now)

    async def poll_once(self, adapter: Adapter, group: PollGroup) -> list[Reading]:
        """Read one group, validate it and queue it for the store. Never raises for a device failure."""
        guard = max(MIN_READ_GUARD_S, group.interval_s * self.cfg.ingest.stale_after_polls)
        points = group.points
        pushed = getattr(adapter, "pushed", None)
        if pushed is not None:  # points that arrive by change of value now need no poll
            skip = {p.id for p in pushed(points)}
            points = [p for p in points if p.id not in skip]
            if not points:  # all subscribed: the live subscription is the sign of life
                self._note_alive(group.device_id)
                return []
        try:
            async with asyncio.timeout(guard):
                readings = await adapter.read(points)
        except TimeoutError:
            readings = failed_readings(points, f"timeout: {group.device_id} read took over {guard:g} s")
        except Exception as err:  # an adapter bug must not stop this device's polling, nor the others'
            log.exception("read of %s failed unexpectedly", group.device_id)
            readings = failed_readings(points, f"protocol_error: {type(err).__name__}: {err}")
        batch = self._validator.validate_readings(readings, utcnow(), self._stale)
        self._note_poll(group.device_id, readings)
        self._derive_and_publish(batch)
        self._enqueue(batch)
        return readings

    def _note_poll(self, device_id: str, readings: list[Reading]) -> None:
        ds = self._stats.devices[device_id]
        ds.polls += 1
        ds.last_poll = utcnow()
        failure = next((r for r in readings if Reason.COMM_FAILURE in r.reasons), None)
        if failure is None:
            self._note_alive(device_id)
            return
        if ds.last_ok is not False:
            log.warning("device %s failed: %s", device_id, failure.detail or "comm_failure")
            self._device_fault(device_id, failure.detail or Reason.COMM_FAILURE.value)
        ds.failed_polls += 1
        ds.last_ok = False
        ds.last_error = failure.detail or Reason.COMM_FAILURE.value
        ds.last_error_at = ds.last_poll

    def _note_alive(self, device_id: str) -> None:
        ds = self._stats.devices[device_id]
        if ds.last_ok is False:
            log.info("device %s answers again", device_id)
            self._device_fault(device_id, None)
        ds.last_ok = True

    # -- storing ---------------------------------------------------------------------------
    def _enqueue(self, batch: ReadingBatch) -> None:
        if len(batch):
            self._pending.append(batch)
            self._pending_n += len(batch)
            self._queued_total += len(batch)
            self._trim()
        if self._wake is not None:
            self._wake.set()

    def _trim(self) -> None:
        over = self._pending_n - self._backlog_limit
        if over <= 0:
            return
        self._stats.dropped += over
        self._pending_n -= over
        self._left(over)  # lost and counted: their messages are acknowledged, not sent again forever
        log.warning("store backlog full (%d readings): dropped the %d oldest", self._backlog_limit, over)
        while over > 0:
            head = self._pending[0]
            if len(head) <= over:
                self._pending.popleft()
                over -= len(head)
            else:
                head.take(over)
                over = 0

    def _take(self, n: int) -> ReadingBatch:
        """The oldest ``n`` pending readings as one batch (n <= pending)."""
        out = ReadingBatch()
        while len(out) < n:
            head, need = self._pending[0], n - len(out)
            if len(head) > need:
                out.extend(head.take(need))
            elif not len(out):
                out = self._pending.popleft()  # the usual case: a whole batch, no copy
            else:
                out.extend(self._pending.popleft())
        self._pending_n -= n
        return out

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if self._pending_n < self._batch and not self._closing:
                # Let a batch gather: a transaction costs about the same for 10 rows as for 1,000
                # (each rewrites one index page per point), and each write is a thread hand-off.
                await asyncio.sleep(self.cfg.ingest.flush_interval_s)
            self._wake.clear()
            ok = await self._flush()
            if self._closing:
                return
            if not ok:
                # Then try again, even if nothing new arrives meanwhile (a site whose devices all
                # push, and are quiet now).
                await asyncio.sleep(self._retry_s)
                self._wake.set()

    async def _flush(self) -> bool:
        """Write the pending readings in batches; False when the store failed (they stay pending)."""
        assert self.store is not None
        while self._pending_n:
            n = min(self._batch, self._pending_n)
            batch = self._take(n)
            try:
                written = await self.store.write(batch)
            except Exception as err:  # StoreError or worse: keep the batch, keep polling
                self._pending.appendleft(batch)
                self._pending_n += n
                self._trim()
                self._write_failed(str(err))
                log.warning("store write of %d readings failed (%d pending): %s", n, self._pending_n, err)
                return False
            if written < n:
                # The store took the first `written` (a nearly full buffer): the rest waits here.
                stored = batch.take(written)
                self._pending.appendleft(batch)
                self._pending_n += n - written
                self._note_stored(stored)
                self._write_failed(f"the store took {written} of {n} readings (full)")
                log.warning("store took %d of %d readings (%d pending)", written, n, self._pending_n)
                return False
            self._note_stored(batch)
            if self._pending_n < self._backlog_limit:
                self._room.set()
        return True

    def _left(self, n: int) -> None:
        self._left_total += n
        if self._acks:
            self._release()

    def _release(self) -> None:
        """Acknowledge, in order, the pushed batches that have wholly left the backlog."""
        acks = self._acks
        while acks and acks[0][0] <= self._left_total:
            try:
                acks.popleft()[1]()
            except Exception:  # an adapter bug must not stop the writer
                log.exception("acknowledging pushed readings failed")

    def _note_stored(self, batch: ReadingBatch) -> None:
        self._left(len(batch))
        self._stats.readings_stored += len(batch)
        self._stats.bad_stored += batch.bad_count()
        h = self._store_health
        h.ok, h.last_ok_at = True, utcnow()
        h.forwarded += len(batch)

    def _write_failed(self, error: str) -> None:
        self._stats.store_errors += 1
        self._stats.last_store_error = error
        h = self._store_health
        h.ok, h.last_error, h.last_error_at = False, error, utcnow()
        h.retries += 1


def summary(stats: IngestStats, elapsed_s: float) -> str:
    """The one line ``eaio ingest`` logs when it stops."""
    devices = ", ".join(
        f"{d.device_id} {'ok' if d.last_ok else 'never polled' if d.last_ok is None else 'failing'}"
        + (f" ({d.pushed} pushed, {d.dead_letters} dead letters)" if d.protocol in PUSHED
           else f" ({d.polls} polls, {d.failed_polls} failed)")
        for d in stats.devices.values()
    )
    return (
        f"ingest stopped after {elapsed_s:.1f} s: {stats.readings_stored} readings stored "
        f"({stats.bad_stored} bad), {stats.store_errors} store errors, {stats.backlog} not stored, "
        f"{stats.dropped} dropped, {stats.dead_letters} dead letters; {store_state(stats.store)}; "
        f"devices: {devices or 'none'}"
    )


def store_state(h: StoreHealth | None) -> str:
    """The store's part of the summary line, e.g. ``store influxdb v1 failing: ... (1200 buffered, ...)``."""
    if h is None:
        return "store not opened"
    state = "ok" if h.ok else "never written" if h.ok is None else f"failing: {h.last_error}"
    if not h.capacity:  # written directly, no buffer
        return f"store {h.backend} {state}"
    return (f"store {h.backend} {state} ({h.buffered} buffered, {h.fill:.0%} full, {h.forwarded} forwarded, "
            f"{h.retries} retries, {h.parked} parked)")


async def run_ingest(cfg: SiteConfig, duration: float | None = None) -> IngestStats:
    """Run ingest until ``duration`` seconds pass or SIGINT/SIGTERM; log a summary line at the end."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    started = time.monotonic()
    try:
        async with Ingest(cfg) as ingest:
            log.info("ingest started: %d devices, %d points -> %s", len(cfg.devices), len(cfg.points()),
                     describe_store(cfg))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    stats = ingest.stats()
    log.info("%s", summary(stats, time.monotonic() - started))
    return stats
