"""The event bus: readings (decimated), quality changes, faults, demand and energy as ``Event``s.

In process always (``subscribe()``); also on MQTT, as JSON on ``<prefix>/<site>/<kind>/<subject>``
at the configured QoS, when ``events.mqtt`` names a broker. The broker is optional: without one,
or while it is away, the pipeline runs on and ``publish`` neither raises nor blocks.

- ``ReadingEvents`` (pure, no I/O) turns validated batches into events in one pass over the columns.
- ``Subscription``: an in-process subscriber's bounded queue; when it falls behind, its oldest
  events are dropped (and counted) so that ingest never waits for it.
- ``EventBus``: the async context manager that owns both, and the MQTT client (paho 2.x,
  network thread, reconnect with backoff).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from pydantic import BaseModel

from ..config import EventMqtt, EventSettings, SiteConfig
from ..models import Quality, ReadingBatch, Severity, Value, from_us, trusted, utcnow
from ..models.event import Event, EventKind, FaultCode, new_event_id
from ..protocol_adapters.mqtt import paho_client

__all__ = ["EventBus", "EventBusStats", "ReadingEvents", "Subscription"]

log = logging.getLogger(__name__)

# Events handed to paho and not yet acknowledged, at most. paho drops the NEWEST message when its
# own queue is full; events beyond this window wait in our deque instead, which drops the oldest.
_PAHO_WINDOW = 1000
_INFLIGHT = 100  # QoS 1 messages on the wire at once (paho's default of 20 caps loopback at ~5k/s)
_CLOSE_WAIT_S = 2.0  # at close, how long queued events get to reach a connected broker
_SUFFIX_KIND = ((".demand", EventKind.DEMAND), (".interval", EventKind.ENERGY))
_ALL_FIELDS = frozenset(Event.model_fields)
_US = 1_000_000
_NEVER = -(1 << 62)  # before any timestamp: a point's first reading is always due


def _kind_of(point_id: str) -> EventKind:
    """Derived interval readings have kinds of their own (never decimated); the rest are readings."""
    for suffix, kind in _SUFFIX_KIND:
        if point_id.endswith(suffix):
            return kind
    return EventKind.READING


def _quality_of(q: Quality | str) -> Quality:
    return q if q.__class__ is Quality else Quality(q)  # type: ignore[return-value]


class _Point:
    """What ReadingEvents remembers per point."""

    __slots__ = ("due_us", "floor_us", "good", "kind", "quality", "reasons")

    def __init__(self, kind: EventKind) -> None:
        self.kind = kind
        # A reading event is due for a sample at or after due_us, or before floor_us (the source's
        # clock went back by more than a window: start over rather than stay silent until it catches up).
        self.due_us = self.floor_us = _NEVER
        self.quality: Quality | None = None  # None: no sample seen yet
        self.reasons: tuple[str, ...] = ()
        self.good = False  # seen, good and without reasons: the state almost every row finds


class ReadingEvents:
    """Validated batches -> events. Pure: keeps per-point state, does no I/O.

    - ``quality``: when a point's quality or its set of reasons changes; a point's first sample
      counts as a change only when it is not good.
    - ``reading``: a point's first sample, then the first whose time is ``readings_every_s`` or more
      after the last one sent (sample time, not wall time: replays and tests are exact). 0 sends
      every reading; None none.
    - ``demand`` / ``energy``: every ``*.demand`` / ``*.interval`` reading.
    """

    def __init__(self, site: str, *, prefix: str = "eaio", readings_every_s: float | None = 60.0) -> None:
        self.site, self.prefix = site, prefix
        self.every_us = None if readings_every_s is None else round(readings_every_s * _US)
        self._points: dict[str, _Point] = {}

    def observe(self, batch: ReadingBatch) -> list[Event]:
        """The events a batch gives, in row order. Reads the batch, never changes it."""
        out: list[Event] = []
        points, every = self._points, self.every_us
        ts_col, quality_col, reasons_col = batch.ts_us, batch.quality, batch.reasons
        good, reading = Quality.GOOD, EventKind.READING
        for i, pid in enumerate(batch.point_id):
            p = points.get(pid)
            if p is None:
                p = points[pid] = _Point(_kind_of(pid))
            # The common row: good, no reasons, as before. A few comparisons and nothing else.
            if quality_col[i] == good and i not in reasons_col:
                if not p.good:
                    self._quality(batch, i, p, out)
            elif quality_col[i] != p.quality or set(reasons_col.get(i, ())) != set(p.reasons):
                self._quality(batch, i, p, out)
            if p.kind is reading:
                if every is not None:
                    t = ts_col[i]
                    if t >= p.due_us or t < p.floor_us:  # with every == 0, one of the two always holds
                        p.due_us, p.floor_us = t + every, t - every
                        out.append(self._value_event(batch, i, reading))
            else:
                out.append(self._value_event(batch, i, p.kind))
        return out

    def _value_event(self, batch: ReadingBatch, i: int, kind: EventKind) -> Event:
        # Built without validation: every value comes from a validated batch (see models.trusted).
        return trusted(Event, {
            "id": new_event_id(), "kind": kind, "site": self.site, "subject": batch.point_id[i],
            "ts": from_us(batch.ts_us[i]), "value": batch.value[i], "unit": batch.unit[i],
            "quality": _quality_of(batch.quality[i]), "reasons": list(batch.reasons.get(i, ())),
            "previous_quality": None, "previous_reasons": [], "severity": None, "code": None, "message": "",
            "device_id": batch.device_id[i], "prefix": self.prefix,
        }, _ALL_FIELDS)

    def _quality(self, batch: ReadingBatch, i: int, p: _Point, out: list[Event]) -> None:
        quality, reasons = Quality(batch.quality[i]), tuple(batch.reasons.get(i, ()))
        before, before_reasons = p.quality, p.reasons
        p.quality, p.reasons = quality, reasons
        p.good = quality == Quality.GOOD and not reasons
        if before is None and quality == Quality.GOOD and not reasons:
            return  # a point that starts good has not changed
        pid, detail = batch.point_id[i], batch.detail.get(i)
        now = f"{quality}" + (f" ({', '.join(reasons)})" if reasons else "")
        if before is None:
            message = f"{pid} is {now}"
        else:
            message = f"{pid} went from {before}" + (f" ({', '.join(before_reasons)})" if before_reasons else "")
            message += f" to {now}"
        if detail:
            message += f": {detail}"
        out.append(Event(
            kind=EventKind.QUALITY, site=self.site, subject=pid, ts=from_us(batch.ts_us[i]),
            value=batch.value[i], unit=batch.unit[i], quality=quality, reasons=list(reasons),
            previous_quality=before, previous_reasons=list(before_reasons),
            severity=Severity.WARNING if quality == Quality.BAD else Severity.INFO,
            message=message, device_id=batch.device_id[i], prefix=self.prefix,
        ))


class Subscription:
    """An in-process subscriber: ``async for event in sub``; ends when closed or the bus closes.

    Bounded: when ``maxsize`` events wait, each new one pushes out the oldest and ``dropped``
    counts it. Publishers never wait for a subscriber.
    """

    def __init__(self, bus: EventBus, kinds: frozenset[EventKind] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.kinds, self.maxsize = kinds, maxsize
        self.dropped = 0
        self._bus = bus
        self._queue: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def get_nowait(self) -> Event | None:
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        """Stop receiving; an ``async for`` ends once it has taken what is already queued."""
        self._closed = True
        self._bus._unsubscribe(self)
        self._ready.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, event: Event) -> bool:
        """Queue an event; False when it pushed out an older one."""
        kept = len(self._queue) < self.maxsize
        if not kept:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        return kept


class EventBusStats(BaseModel):
    published: int  # events given to publish()
    subscribers: int
    subscriber_dropped: int  # events pushed out of slow in-process subscribers' queues
    mqtt: bool  # a broker is configured
    connected: bool
    sent: int  # handed to the MQTT client
    acked: int  # acknowledged by the broker (QoS 1/2) or written to the socket (QoS 0)
    waiting: int  # held until the broker is back (at most events.mqtt.max_queued)
    dropped: int  # never sent: the oldest past max_queued while the broker was away, or left at close
    connects: int
    last_error: str | None


class _MqttSink:
    """The broker side of the bus. paho's network thread runs the callbacks below.

    Every event enters a deque of ``max_queued`` that drops its oldest (paho's own queue would
    refuse the newest); one drainer at a time hands them to paho while it is connected and has
    fewer than ``_PAHO_WINDOW`` unacknowledged, so a broker that is away or slow costs the oldest
    events, and the (re)connect and each acknowledgement drain on. paho's acknowledgement callback
    runs under paho's own lock, so ours is never held while calling paho, and the drain lock is
    only ever tried, never waited for: no order of locks across the two threads can deadlock.
    """

    def __init__(self, settings: EventMqtt, qos: int) -> None:
        self.settings, self.qos = settings, qos
        self.where = f"{settings.host}:{settings.port}"
        self.client: paho.Client | None = None
        self.connected = False
        self.sent = self.acked = self.dropped = self.connects = 0
        self.last_error: str | None = None
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on acknowledgements and disconnects
        # Taken without waiting, and never together with self._lock, so it cannot deadlock with paho's.
        self._draining = threading.Lock()
        self._failures = 0  # connection attempts failed since the last success (logging only)

    def start(self) -> None:
        s = self.settings
        try:
            client = paho_client(s.connection(), s.client_id)
        except (OSError, ValueError, ssl.SSLError) as err:
            # Retrying cannot fix unreadable certificates: say so and keep the events in process.
            self.last_error = f"tls_error: cannot load CA/certificate/key: {err}"
            log.error("events: %s; events stay in process", self.last_error)
            return
        client.suppress_exceptions = True  # an exception in a callback must not end the network thread
        client.max_queued_messages_set(_PAHO_WINDOW)
        client.max_inflight_messages_set(_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        # Errors in our callbacks (suppressed above) are still logged; paho's per-packet debug
        # lines never are, whatever the root level: formatting them would cost more than sending.
        paho_log = logging.getLogger(f"{__name__}.paho")
        paho_log.setLevel(logging.WARNING)
        client.enable_logger(paho_log)
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client = client
        client.loop_start()

    def stop(self, wait_s: float = 0.0) -> None:
        """Blocking (waits up to ``wait_s`` for a connected broker to acknowledge what is queued,
        then joins paho's thread): run it off the event loop. A broker that is away gets no wait."""
        with self._lock:
            self._changed.wait_for(self._settled, timeout=wait_s)
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self.connected = False
        with self._lock:
            left, self._waiting = len(self._waiting), deque()
            self.dropped += left
        if left:
            log.warning("events: %d events never reached the broker %s", left, self.where)

    def drop(self, error: str | None = None) -> None:
        """Count one event that will never be sent (and say why, when it is an error)."""
        with self._lock:
            self.dropped += 1
        if error is not None:
            self.last_error = error
            log.warning("events: %s", error)

    def _settled(self) -> bool:
        return not self.connected or (not self._waiting and self.acked >= self.sent)

    def send(self, topic: str, payload: bytes) -> None:
        """From publish(): never blocks on the network, never raises. Every event passes through
        the deque, so that one drainer at a time hands them to paho in the order they came."""
        with self._lock:
            self._hold(topic, payload)
        if self.connected:
            self._drain()

    def _hold(self, topic: str, payload: bytes) -> None:
        # Under self._lock.
        if len(self._waiting) >= self.settings.max_queued:
            self._waiting.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("events: broker %s away or slow, %d events dropped so far (max_queued %d)",
                            self.where, self.dropped, self.settings.max_queued)
        self._waiting.append((topic, payload))

    def _hand(self, topic: str, payload: bytes) -> bool:
        """Give one message to paho; False when paho did not take it."""
        client = self.client
        if client is None:
            return False
        try:
            rc = client.publish(topic, payload, qos=self.qos, retain=False).rc
        except Exception as err:  # e.g. ValueError for a topic paho refuses: this event is lost, not the bus
            self.drop(f"publish to '{topic}' failed: {err}")
            return True
        # QoS >= 1 with no connection: paho keeps the message and sends it on reconnect.
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.qos > 0):
            self.sent += 1
            return True
        return False  # MQTT_ERR_QUEUE_SIZE (window full), or QoS 0 with no connection

    def _drain(self) -> None:
        """Hand waiting events to paho while it takes them (either thread, one at a time)."""
        while True:
            if not self._draining.acquire(blocking=False):
                return  # the thread draining now looks again after it lets go
            try:
                window_full = self._drain_locked()
            finally:
                self._draining.release()
            # An event held while we drained, whose publisher found the drain busy, is ours to send.
            if window_full or not self.connected or not self._waiting:
                return

    def _drain_locked(self) -> bool:
        """Under self._draining; True when paho's window is full (its acknowledgements drain on)."""
        while self.connected:
            with self._lock:
                if not self._waiting:
                    return False
                topic, payload = self._waiting.popleft()
            if not self._hand(topic, payload):
                with self._lock:
                    if len(self._waiting) >= self.settings.max_queued:
                        self.dropped += 1  # it was the oldest: it goes, as _hold would have let it
                    else:
                        self._waiting.appendleft((topic, payload))
                return True
        return False

    # -- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, _c: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.last_error = f"refused: broker {self.where} answered CONNACK '{reason}'"
            log.warning("events: %s; retrying", self.last_error)
            return
        self.connects += 1
        self._failures = 0
        self.connected = True
        log.info("events: connected to %s as %s (%d events waiting)", self.where, self.settings.client_id,
                 len(self._waiting))
        self._drain()

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        # paho calls this inside its `except OSError:`, so the cause is the exception being handled.
        err = sys.exception()
        self.connected = False
        self.last_error = f"connection_failed: cannot connect to {self.where}: {err or 'connection failed'}"
        self._failures += 1
        log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                "events: %s; retrying with backoff", self.last_error)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        was, self.connected = self.connected, False
        with self._lock:
            self._changed.notify_all()
        if self.client is None:  # our own disconnect at close
            return
        self.last_error = f"connection_failed: disconnected from {self.where}: {reason}"
        if was:
            log.warning("events: %s; reconnecting with backoff", self.last_error)

    def _on_publish(self, _c: paho.Client, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
        with self._lock:
            self.acked += 1
            self._changed.notify_all()
        if self._waiting:
            self._drain()


class EventBus:
    """``async with EventBus(cfg.events, cfg.site.id) as bus:`` — publish, observe, fault, subscribe.

    The constructor does no I/O; ``__aenter__`` starts the MQTT client (when configured) and
    returns at once, whether the broker answers or not. Call ``publish`` / ``observe`` / ``fault``
    from the event loop's thread (in-process subscribers are woken there).
    """

    def __init__(self, settings: EventSettings, site: str) -> None:
        self.settings, self.site = settings, site
        self.readings = ReadingEvents(site, prefix=settings.prefix, readings_every_s=settings.readings_every_s)
        self._subs: list[Subscription] = []
        self._mqtt = _MqttSink(settings.mqtt, settings.qos) if settings.mqtt is not None else None
        self._open = False
        self.published = 0
        self._gone_dropped = 0  # drops of subscribers that have since closed

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> EventBus:
        return cls(cfg.events, cfg.site.id)

    async def __aenter__(self) -> Self:
        if self._mqtt is not None:
            self._mqtt.start()
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        sink = self._mqtt
        if sink is not None:
            await asyncio.to_thread(sink.stop, _CLOSE_WAIT_S)
        for sub in list(self._subs):
            sub.close()

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """To every matching in-process subscriber and, when configured, the broker. Never raises
        for a broker problem and never waits for the network or a subscriber."""
        self.published += 1
        for sub in self._subs:
            if sub.kinds is None or event.kind in sub.kinds:
                sub._put(event)
                sub._ready.set()
        sink = self._mqtt
        if sink is None:
            return
        if not self._open:  # before __aenter__ or after __aexit__: there is no client to take it
            sink.drop()
            return
        try:
            payload = event.model_dump_json().encode()
        except Exception as err:  # a value JSON cannot hold must cost this event only
            sink.drop(f"cannot encode event {event.kind} {event.subject}: {err}")
            return
        sink.send(event.topic, payload)

    def observe(self, batch: ReadingBatch) -> int:
        """Publish the events of one validated batch (see ``ReadingEvents``); returns how many."""
        events = self.readings.observe(batch)
        for event in events:
            self.publish(event)
        return len(events)

    def event(self, kind: EventKind, subject: str, **fields: Any) -> Event:
        """An event of this bus's site and prefix (not published)."""
        return Event(kind=kind, site=self.site, subject=subject, prefix=self.settings.prefix, **fields)

    def fault(self, subject: str, message: str, severity: Severity = Severity.WARNING, *,
              code: FaultCode | str | None = None, device_id: str | None = None, value: Value | None = None,
              unit: str = "", ts: datetime | None = None) -> Event:
        """Publish a fault (or its recovery, with an ``*_online`` / ``*_recovered`` / ``*_ok`` code
        and severity info) about a device id or ``"store"``; returns the event."""
        event = self.event(EventKind.FAULT, subject, message=message, severity=severity,
                           code=None if code is None else FaultCode(code), device_id=device_id,
                           value=value, unit=unit, ts=ts or utcnow())
        self.publish(event)
        return event

    # -- in-process subscribers ----------------------------------------------------------------

    def subscribe(self, kinds: Iterable[EventKind | str] | None = None, maxsize: int = 1000) -> Subscription:
        """A subscriber to events of ``kinds`` (all when None) from now on."""
        wanted = None if kinds is None else frozenset(EventKind(k) for k in kinds)
        sub = Subscription(self, wanted, maxsize)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._gone_dropped += sub.dropped

    def stats(self) -> EventBusStats:
        sink = self._mqtt
        return EventBusStats(
            published=self.published, subscribers=len(self._subs),
            subscriber_dropped=self._gone_dropped + sum(s.dropped for s in self._subs),
            mqtt=sink is not None, connected=bool(sink and sink.connected),
            sent=sink.sent if sink else 0, acked=sink.acked if sink else 0,
            waiting=len(sink._waiting) if sink else 0, dropped=sink.dropped if sink else 0,
            connects=sink.connects if sink else 0, last_error=sink.last_error if sink else None,
        )
