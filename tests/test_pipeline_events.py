"""The event bus: events from validated batches, in process and on a private Mosquitto (QoS 1, JSON)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import EventMqtt, EventSettings
from eaio.models import Quality, ReadingBatch, Severity, to_us
from eaio.models.event import Event, EventKind, FaultCode, event_topic
from eaio.pipeline.events import EventBus, ReadingEvents
from helpers import until

SITE = "hq"
T0 = to_us(datetime(2026, 1, 5, 8, 0, tzinfo=UTC))
S = 1_000_000  # microseconds in a second


def now(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A plain condition as the async check ``helpers.until`` polls."""

    async def check() -> Any:
        return fn()

    return check


def rows(*items: tuple[str, float | None, int, Quality, list[str] | None]) -> ReadingBatch:
    """A batch from (point id, value, seconds after T0, quality, reasons) rows."""
    b = ReadingBatch()
    for i, (pid, value, at_s, quality, reasons) in enumerate(items):
        b.append(pid, value, T0 + at_s * S, "degC", pid.split(".")[0], quality)
        if reasons:
            b.reasons[i] = list(reasons)
            b.detail[i] = f"why: {', '.join(reasons)}"
    return b


GOOD, BAD, UNCERTAIN = Quality.GOOD, Quality.BAD, Quality.UNCERTAIN


# -- the Event model ------------------------------------------------------------------------------

def test_event_json_round_trip_topic_and_utc() -> None:
    cest = timezone(timedelta(hours=2))
    event = Event(kind=EventKind.QUALITY, site=SITE, subject="ahu1.sat", ts=datetime(2026, 6, 1, 14, 0, tzinfo=cest),
                  value=31.5, unit="degC", quality=BAD, reasons=["range_high"], previous_quality=GOOD,
                  severity=Severity.WARNING, message="ahu1.sat went from good to bad (range_high)", device_id="ahu1")
    assert event.ts == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert event.ts.tzinfo == UTC
    assert event.topic == "eaio/hq/quality/ahu1.sat"
    data = json.loads(event.model_dump_json())
    assert data["topic"] == "eaio/hq/quality/ahu1.sat"
    assert data["kind"] == "quality"
    assert data["value"] == 31.5
    assert Event.model_validate_json(event.model_dump_json()) == event
    # Values keep their type through JSON: a bool stays a bool, an int an int.
    for value in (True, 3, 2.5, None):
        back = Event.model_validate_json(Event(kind="reading", site=SITE, subject="x.y", value=value).model_dump_json())
        assert back.value == value
        assert type(back.value) is type(value)
    assert Event(kind="fault", site=SITE, subject="a").id != Event(kind="fault", site=SITE, subject="a").id


def test_topic_builder_keeps_wildcards_and_separators_out_of_levels() -> None:
    assert event_topic("eaio", "hq", "reading", "zone1.temp") == "eaio/hq/reading/zone1.temp"
    assert event_topic("bldg7/eaio", "h/q", "fault", "a+b#c/d") == "bldg7/eaio/h_q/fault/a_b_c_d"
    assert event_topic("ea+io", "", "fault", "") == "ea_io/_/fault/_"
    with pytest.raises(ValueError, match="kind"):
        Event(kind="gossip", site=SITE, subject="x")


# -- ReadingEvents: pure --------------------------------------------------------------------------

def test_reading_events_are_decimated_exactly_by_sample_time() -> None:
    """Readings every 10 s for 10 minutes, in 60 batches of 2 points: one event per point per minute."""
    gen = ReadingEvents(SITE, readings_every_s=60)
    every = ReadingEvents(SITE, readings_every_s=0)
    none = ReadingEvents(SITE, readings_every_s=None)
    got: list[Event] = []
    for k in range(60):
        batch = rows(("zone1.temp", 21.0 + k, 10 * k, GOOD, None), ("zone2.temp", 20.0, 10 * k + 3, GOOD, None))
        before = batch.copy()
        got += gen.observe(batch)
        assert batch == before, "observe must not change the batch"
        assert len(every.observe(batch)) == 2
        assert none.observe(batch) == []
    assert {e.kind for e in got} == {EventKind.READING}
    for pid, offset in (("zone1.temp", 0), ("zone2.temp", 3)):
        mine = [e for e in got if e.subject == pid]
        assert [e.ts for e in mine] == [datetime.fromtimestamp((T0 + (60 * m + offset) * S) / S, UTC)
                                        for m in range(10)]
    first = got[0]
    assert (first.value, first.unit, first.quality, first.device_id, first.site) == (21.0, "degC", GOOD, "zone1", SITE)
    assert first.topic == "eaio/hq/reading/zone1.temp"
    # A source whose clock goes back by more than a window starts over instead of going silent.
    assert [e.ts for e in gen.observe(rows(("zone1.temp", 1.0, -3600, GOOD, None)))] == [
        datetime.fromtimestamp((T0 - 3600 * S) / S, UTC)]


def test_quality_events_once_per_change_with_before_and_after() -> None:
    gen = ReadingEvents(SITE, readings_every_s=None)
    sequence = [
        ("a.t", GOOD, None),  # first sample, good: no event
        ("a.t", GOOD, None),
        ("a.t", BAD, ["stale"]),  # good -> bad [stale]
        ("a.t", BAD, ["stale"]),
        ("a.t", BAD, ["comm_failure", "stale"]),  # a reason more
        ("a.t", BAD, ["stale", "comm_failure"]),  # the same set in another order: no change
        ("a.t", GOOD, None),  # back to good
        ("b.t", UNCERTAIN, ["spike"]),  # first sample, not good: an event with no previous quality
    ]
    events: list[Event] = []
    for k, (pid, quality, reasons) in enumerate(sequence):  # one row per batch, as polls come
        events += gen.observe(rows((pid, 20.0 + k, 10 * k, quality, reasons)))
    assert [(e.subject, e.previous_quality, e.previous_reasons, e.quality, e.reasons) for e in events] == [
        ("a.t", GOOD, [], BAD, ["stale"]),
        ("a.t", BAD, ["stale"], BAD, ["comm_failure", "stale"]),
        ("a.t", BAD, ["comm_failure", "stale"], GOOD, []),
        ("b.t", None, [], UNCERTAIN, ["spike"]),
    ]
    assert all(e.kind == EventKind.QUALITY for e in events)
    assert [e.severity for e in events] == [Severity.WARNING, Severity.WARNING, Severity.INFO, Severity.INFO]
    assert events[0].ts == datetime.fromtimestamp((T0 + 20 * S) / S, UTC)
    assert events[0].value == 22.0
    assert events[0].message == "a.t went from good to bad (stale): why: stale"
    assert events[2].message == "a.t went from bad (comm_failure, stale) to good"
    assert events[3].message == "b.t is uncertain (spike): why: spike"
    assert events[0].topic == "eaio/hq/quality/a.t"
    assert events[0].device_id == "a"
    # Changes inside one batch count row by row.
    many = gen.observe(rows(("c.t", 1.0, 0, GOOD, None), ("c.t", 2.0, 1, BAD, ["stale"]),
                            ("c.t", 3.0, 2, GOOD, None)))
    assert [(e.previous_quality, e.quality) for e in many] == [(GOOD, BAD), (BAD, GOOD)]


def test_demand_and_energy_are_never_decimated() -> None:
    gen = ReadingEvents(SITE, readings_every_s=None)  # no reading events at all
    got: list[Event] = []
    for k in range(5):
        got += gen.observe(rows(("main.demand", 40.0 + k, k, GOOD, None), ("main.interval", 10.0 + k, k, GOOD, None),
                                ("main.power", 41.0, k, GOOD, None)))
    assert [(e.kind, e.subject, e.value) for e in got] == [
        kind for k in range(5)
        for kind in ((EventKind.DEMAND, "main.demand", 40.0 + k), (EventKind.ENERGY, "main.interval", 10.0 + k))
    ]
    assert got[0].topic == "eaio/hq/demand/main.demand"
    assert got[1].topic == "eaio/hq/energy/main.interval"


# -- in process -----------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_in_process_subscribers_get_events_without_a_broker() -> None:
    bus = EventBus(EventSettings(readings_every_s=60), SITE)
    assert bus.settings.mqtt is None
    async with bus:
        everything = bus.subscribe()
        faults = bus.subscribe(kinds=["fault"])
        n = bus.observe(rows(("zone1.temp", 21.0, 0, GOOD, None), ("zone1.co2", 5000.0, 0, BAD, ["range_high"]),
                             ("main.demand", 42.0, 0, GOOD, None)))
        fault = bus.fault("ahu1", "ahu1 did not answer at 127.0.0.1:5020", code=FaultCode.DEVICE_OFFLINE,
                          device_id="ahu1")
        assert n == 4  # 2 readings, 1 quality change, 1 demand
        kinds = [(e.kind, e.subject) async for e in _take(everything, 5)]
        assert kinds == [(EventKind.READING, "zone1.temp"), (EventKind.QUALITY, "zone1.co2"),
                         (EventKind.READING, "zone1.co2"), (EventKind.DEMAND, "main.demand"),
                         (EventKind.FAULT, "ahu1")]
        assert faults.get_nowait() is fault
        assert faults.get_nowait() is None
        assert (fault.topic, fault.severity, fault.code, fault.device_id) == (
            "eaio/hq/fault/ahu1", Severity.WARNING, FaultCode.DEVICE_OFFLINE, "ahu1")
        stats = bus.stats()
        assert (stats.published, stats.subscribers, stats.mqtt, stats.connected, stats.dropped) == (5, 2, False,
                                                                                                   False, 0)
        with pytest.raises(ValueError, match="not_a_code"):
            bus.fault("store", "?", code="not_a_code")

        ended: list[Event] = []

        async def drain() -> None:
            async for e in everything:  # waits for the next event, ends when closed
                ended.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            bus.fault("store", "store writes fail", Severity.CRITICAL, code="store_failing")
            await until(now(lambda: ended), "the waiting subscriber to wake")
            everything.close()  # ends the async for
        assert [e.code for e in ended] == [FaultCode.STORE_FAILING]
    assert bus.stats().subscribers == 0  # closing the bus closed the rest


@pytest.mark.anyio
async def test_a_slow_subscriber_loses_its_oldest_events_and_never_blocks_the_publisher() -> None:
    async with EventBus(EventSettings(), SITE) as bus:
        slow = bus.subscribe(maxsize=5)
        for k in range(12):
            bus.fault("store", f"failure {k}", value=k)  # no await: publishing never waits for a reader
        assert [e.value async for e in _take(slow, 5)] == [7, 8, 9, 10, 11]
        assert slow.dropped == 7
        assert bus.stats().subscriber_dropped == 7
        with pytest.raises(ValueError, match="maxsize"):
            bus.subscribe(maxsize=0)


async def _take(sub: Any, n: int) -> Any:
    with anyio.fail_after(5):
        for _ in range(n):
            yield await sub.__anext__()


# -- on MQTT --------------------------------------------------------------------------------------

class Listener:
    """A plain paho subscriber on ``eaio/<site>/#`` at QoS 1, collecting what arrives."""

    def __init__(self, port: int, client_id: str = "", clean: bool = True) -> None:
        self.port, self.client_id, self.clean = port, client_id, clean
        self.received: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = self._connect()

    def _connect(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=self.clean)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_connect = lambda c, *_: c.subscribe(f"eaio/{SITE}/#", qos=1)
        client.reconnect_delay_set(0.05, 0.5)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        assert subscribed.wait(5), "no SUBACK"
        return client

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(msg)

    def events(self) -> list[Event]:
        with self._lock:
            return [Event.model_validate_json(m.payload) for m in self.received]

    def messages(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self.received)

    def reconnect(self) -> None:
        self.close()
        self.client = self._connect()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def listener(port: int, **kw: Any) -> Iterator[Listener]:
    sub = Listener(port, **kw)
    try:
        yield sub
    finally:
        sub.close()


def settings(port: int, **mqtt: Any) -> EventSettings:
    return EventSettings(mqtt=EventMqtt(port=port, client_id=f"events-{port}", **mqtt), readings_every_s=60)


@pytest.mark.anyio
async def test_events_on_the_wire_at_qos_1_as_json(mosquitto: Any) -> None:
    """Decimated readings, quality changes exactly once, a fault and every demand reading arrive
    on their topics, at QoS 1, as JSON that parses back into the very events in-process subscribers got."""
    with listener(mosquitto.port) as wire:
        async with EventBus(settings(mosquitto.port), SITE) as bus:
            await until(now(lambda: bus.stats().connected), "the bus to connect")
            local = bus.subscribe(maxsize=10_000)
            # 5 minutes of 10 s polls of two points; zone2 goes stale for a minute; a demand reading a minute.
            for k in range(30):
                zone2 = (BAD, ["stale"]) if 12 <= k < 18 else (GOOD, None)
                batch = rows(("zone1.temp", 21.0, 10 * k, GOOD, None), ("zone2.temp", 19.5, 10 * k, *zone2))
                if k % 6 == 0:
                    batch.append("main.demand", 40.0 + k, T0 + 10 * k * S, "kW", "main")
                bus.observe(batch)
            bus.fault("ahu1", "ahu1 did not answer", code="device_offline", device_id="ahu1")
            marker = bus.fault("store", "last event of the test", Severity.INFO, code="store_recovered")
            # One connection, one topic order: once the marker is in, everything before it is.
            await until(now(lambda: any(e.id == marker.id for e in wire.events())), "the marker event")
            sent = [e async for e in _take(local, len(local))]
        got = wire.events()
        messages = wire.messages()
    assert {m.qos for m in messages} == {1}
    assert not any(m.retain for m in messages)
    assert all(m.topic == e.topic for m, e in zip(messages, got, strict=True))
    assert sorted(e.id for e in got) == sorted(e.id for e in sent)  # nothing lost, nothing twice
    assert {e.id: e for e in got} == {e.id: e for e in sent}  # JSON parses back into the same events
    readings = [e for e in got if e.kind == EventKind.READING]
    assert sorted((e.subject, e.ts) for e in readings) == sorted(
        (pid, datetime.fromtimestamp((T0 + 60 * m * S) / S, UTC)) for pid in ("zone1.temp", "zone2.temp")
        for m in range(5))
    quality = [(e.subject, e.previous_quality, e.quality, e.reasons) for e in got if e.kind == EventKind.QUALITY]
    assert quality == [("zone2.temp", GOOD, BAD, ["stale"]), ("zone2.temp", BAD, GOOD, [])]
    assert [e.value for e in got if e.kind == EventKind.DEMAND] == [40.0, 46.0, 52.0, 58.0, 64.0]
    assert [(e.topic, e.code) for e in got if e.kind == EventKind.FAULT] == [
        ("eaio/hq/fault/ahu1", FaultCode.DEVICE_OFFLINE), ("eaio/hq/fault/store", FaultCode.STORE_RECOVERED)]
    stats = bus.stats()
    assert (stats.sent, stats.acked, stats.dropped, stats.waiting) == (len(got), len(got), 0, 0)


@pytest.mark.anyio
async def test_broker_down_at_start_then_up_delivers_the_newest_max_queued(mosquitto: Any) -> None:
    with listener(mosquitto.port, client_id="dashboard", clean=False):
        pass  # a persistent session: the broker keeps our events for the dashboard while it is away
    await anyio.to_thread.run_sync(mosquitto.stop)
    async with EventBus(settings(mosquitto.port, max_queued=100), SITE) as bus:  # returns with no broker
        await until(now(lambda: bus.stats().last_error), "the first failed connection attempt")
        assert bus.stats().connected is False
        assert bus.stats().last_error.startswith("connection_failed: cannot connect to 127.0.0.1:")
        for k in range(150):
            bus.fault("store", f"event {k}", value=k)  # neither raises nor waits
        stats = bus.stats()
        assert (stats.published, stats.waiting, stats.dropped, stats.sent) == (150, 100, 50, 0)
        await anyio.to_thread.run_sync(mosquitto.start)
        await until(now(lambda: bus.stats().acked == 100), "the held events to reach the broker", within=45)
        with listener(mosquitto.port, client_id="dashboard", clean=False) as wire:
            await until(now(lambda: len({e.value for e in wire.events()}) == 100), "the dashboard's 100 events")
            assert {e.value for e in wire.events()} == set(range(50, 150))  # the oldest 50 were dropped
    stats = bus.stats()
    assert (stats.connected, stats.connects, stats.waiting, stats.dropped) == (False, 1, 0, 50)


@pytest.mark.anyio
async def test_broker_stopped_mid_stream_reaches_no_caller_and_loses_nothing_held(mosquitto: Any) -> None:
    with listener(mosquitto.port, client_id="agent", clean=False) as wire:
        async with EventBus(settings(mosquitto.port), SITE) as bus:
            await until(now(lambda: bus.stats().connected), "the bus to connect")
            for k in range(50):
                bus.fault("store", f"event {k}", value=k)
            await until(now(lambda: bus.stats().acked == 50), "the first 50 acknowledged")
            await anyio.to_thread.run_sync(mosquitto.stop)
            await until(now(lambda: not bus.stats().connected), "the bus to see the broker gone")
            for k in range(50, 100):
                bus.fault("store", f"event {k}", value=k)  # the broker is away: no exception, no wait
            stats = bus.stats()
            assert stats.waiting == 50
            assert stats.dropped == 0
            assert stats.last_error.startswith("connection_failed:")
            await anyio.to_thread.run_sync(mosquitto.start)
            await until(now(lambda: bus.stats().acked == 100), "the held events after the restart", within=45)
            await until(now(lambda: len({e.value for e in wire.events()}) == 100), "every event at the agent")
        assert {e.value for e in wire.events()} == set(range(100))
        assert bus.stats().connects == 2


@pytest.mark.anyio
async def test_a_burst_past_paho_window_arrives_whole_and_in_order(mosquitto: Any) -> None:
    """5,000 events at once: paho takes 1,000 unacknowledged, the rest wait in the bus and follow
    as acknowledgements come back (from paho's thread), one drainer at a time, in order."""
    total = 5000
    with listener(mosquitto.port) as wire:
        async with EventBus(settings(mosquitto.port), SITE) as bus:
            await until(now(lambda: bus.stats().connected), "the bus to connect")
            for k in range(total):
                bus.fault("store", "burst", value=k)
            assert bus.stats().waiting > 0  # the window filled: some had to wait
            await until(now(lambda: len(wire.messages()) >= total), "the whole burst at the listener", within=60)
        assert [e.value for e in wire.events()] == list(range(total))
    stats = bus.stats()
    assert (stats.sent, stats.acked, stats.dropped, stats.waiting) == (total, total, 0, 0)


@pytest.mark.anyio
async def test_qos_comes_from_the_settings(mosquitto: Any) -> None:
    with listener(mosquitto.port) as wire:
        cfg = settings(mosquitto.port).model_copy(update={"qos": 0})
        async with EventBus(cfg, SITE) as bus:
            await until(now(lambda: bus.stats().connected), "the bus to connect")
            bus.fault("store", "at QoS 0")
            await until(now(wire.messages), "the event")
        assert [m.qos for m in wire.messages()] == [0]


@pytest.mark.anyio
async def test_tls_with_client_certificate_and_unreadable_certificates(mosquitto_tls: Any) -> None:
    certs = mosquitto_tls.certs
    tls = {"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)}
    with listener(mosquitto_tls.port) as wire:  # the plain listener of the same broker
        async with EventBus(settings(mosquitto_tls.tls_port, tls=tls), SITE) as bus:
            await until(now(lambda: bus.stats().connected), "the bus to connect over TLS")
            sent = bus.fault("store", "over TLS")
            await until(now(wire.events), "the event over TLS")
        assert [e.id for e in wire.events()] == [sent.id]
    # Certificates that cannot be read: said once, and the bus runs on in process.
    async with EventBus(settings(mosquitto_tls.tls_port, tls={"ca": "/nonexistent/ca.crt"}), SITE) as bus:
        local = bus.subscribe()
        bus.fault("store", "still in process")
        assert local.get_nowait() is not None
        stats = bus.stats()
        assert stats.last_error.startswith("tls_error: cannot load CA/certificate/key")
        assert (stats.connected, stats.sent, stats.waiting) == (False, 0, 1)
