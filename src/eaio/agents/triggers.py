"""Event triggers: the pipeline's events on the MQTT bus start workflows.

The agent subscribes to ``<prefix>/<site>/fault/#``, ``.../quality/#`` and ``.../demand/#``
(paho-mqtt 2.x, VERSION2, through the project's ``paho_client``). What starts what:

- a quality event whose new quality is not good and whose reasons include ``stale``,
  ``flatline`` or ``comm_failure`` -> ``data_quality`` for that point;
- a fault event ``device_offline`` -> ``data_quality`` for that device;
- a demand event above ``agent.demand_peak_kw`` -> ``demand`` for that meter.

Bursts are de-duplicated: the same workflow for the same subject runs at most once per
``window_s`` (a flapping sensor is one problem, not sixty). Messages arrive on paho's network
thread and are handed to the event loop; nothing else runs there.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from pydantic import ValidationError

from ..config import SiteConfig
from ..models import Event, EventKind, FaultCode, Quality
from ..protocol_adapters.mqtt import paho_client
from .workflows import Trigger

__all__ = ["DEDUP_WINDOW_S", "QUALITY_REASONS", "Dedup", "EventTriggers", "trigger_for"]

log = logging.getLogger(__name__)

QUALITY_REASONS = frozenset({"stale", "flatline", "comm_failure"})
DEDUP_WINDOW_S = 300.0  # a few minutes: one run per burst, and again if the problem outlives it
_QUEUE = 1000  # triggers waiting for the runtime; more are dropped (they would be duplicates anyway)


def trigger_for(event: Event, demand_peak_kw: float | None) -> Trigger | None:
    """The workflow an event starts, or None when it starts nothing."""
    data = event.model_dump(mode="json")
    if event.kind == EventKind.QUALITY:
        if event.quality != Quality.GOOD and QUALITY_REASONS & set(event.reasons):
            return Trigger(("data_quality",), source="event", subject=event.subject, event=data)
        return None
    if event.kind == EventKind.FAULT:
        if event.code == FaultCode.DEVICE_OFFLINE:
            return Trigger(("data_quality",), source="event", subject=event.device_id or event.subject, event=data)
        return None
    if event.kind == EventKind.DEMAND:
        value = event.value
        if demand_peak_kw is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if value > demand_peak_kw:
            return Trigger(("demand",), source="event", subject=event.subject, event=data)
    return None


class Dedup:
    """Lets the first trigger of a (workflow, subject) through, then none for ``window_s``."""

    def __init__(self, window_s: float = DEDUP_WINDOW_S) -> None:
        self.window_s = window_s
        self._last: dict[tuple[str, str | None], float] = {}

    def fresh(self, trigger: Trigger, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        key = (trigger.name, trigger.subject)
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            return False
        self._last[key] = now
        return True


class EventTriggers:
    """``async with EventTriggers(cfg) as t: async for trigger in t: ...``.

    Connects in the background and keeps reconnecting (paho's backoff); a broker that is away
    only means no event triggers until it is back, never a failed agent."""

    def __init__(self, cfg: SiteConfig, *, window_s: float = DEDUP_WINDOW_S) -> None:
        if cfg.events.mqtt is None:
            raise ValueError("events.mqtt names no broker: there are no event triggers to subscribe to")
        self.settings = cfg.events.mqtt
        self.peak_kw = cfg.agent.demand_peak_kw
        head = f"{cfg.events.prefix}/{cfg.site.id}"
        self.topics = [f"{head}/{kind}/#" for kind in ("fault", "quality", "demand")]
        self.dedup = Dedup(window_s)
        self.received = 0  # events parsed
        self.ignored = 0  # events that start nothing, or duplicates inside the window
        self.invalid = 0  # messages that are not Event JSON
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[Trigger] = asyncio.Queue(_QUEUE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        try:
            client = paho_client(s.connection(), f"{s.client_id}-agent")
        except (OSError, ValueError, ssl.SSLError) as err:
            log.error("event triggers: cannot load the broker's TLS files (%s); running on the schedule only", err)
            return self
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        self._client = client
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def __aiter__(self) -> EventTriggers:
        return self

    async def __anext__(self) -> Trigger:
        return await self._queue.get()

    # -- paho's network thread ------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("event triggers: broker refused the connection: %s", reason)
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, _c: paho.Client, _ud: Any, _mid: int, _codes: Any, _props: Any) -> None:
        log.info("event triggers: subscribed to %s", ", ".join(self.topics))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.subscribed.set)

    def _on_message(self, _c: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        try:
            event = Event.model_validate_json(msg.payload)
        except ValidationError as err:
            self.invalid += 1
            log.warning("event triggers: %s is not an event (%s)", msg.topic, err.errors()[0]["msg"])
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._offer, event)

    # -- the event loop -------------------------------------------------------------------------
    def _offer(self, event: Event) -> None:
        self.received += 1
        trigger = trigger_for(event, self.peak_kw)
        if trigger is None or not self.dedup.fresh(trigger):
            self.ignored += 1
            return
        try:
            self._queue.put_nowait(trigger)
        except asyncio.QueueFull:
            self.ignored += 1
            log.warning("event triggers: %d triggers waiting; dropped %s", _QUEUE, trigger.label)
