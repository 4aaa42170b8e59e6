"""The event bus: (a) the cost ``observe`` adds to every validated batch of the hot path when no
event is due, as a ratio to one bare pass over the same columns; (b) events to a private Mosquitto
at QoS 1 through the bus (JSON, queue, paho) against raw paho publishing the same payloads, until
the broker has acknowledged every one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from eaio.config import EventMqtt, EventSettings
from eaio.models import Quality, ReadingBatch
from eaio.pipeline.events import EventBus, ReadingEvents

from .common import tempdir
from .mqtt import _broker

BATCH = 5000  # readings per batch: a pushed batch on the hot path
POINTS = 5000
ROUNDS = 40  # steady batches timed (each point's reading event is 60 s of sample time away)
EVENTS = 20_000  # events published in the MQTT half
MQTT_ROUNDS = 3
T0_US = 1_767_225_600_000_000  # 2026-01-01 UTC


def _batch(t_us: int) -> ReadingBatch:
    b = ReadingBatch()
    for i in range(BATCH):
        b.append(f"dev{i // 50}.p{i % 50}", 20.0 + i % 7, t_us + i, "degC", f"dev{i // 50}", Quality.GOOD)
    return b


def observe_cost() -> dict[str, Any]:
    gen = ReadingEvents("bench", readings_every_s=60)
    first = _batch(T0_US)
    t = time.perf_counter()
    first_events = len(gen.observe(first))  # every point's first reading: all due
    first_s = time.perf_counter() - t
    batches = [_batch(T0_US + k * 1_000_000) for k in range(1, ROUNDS + 1)]  # 1 s apart: nothing due
    t = time.perf_counter()
    due = sum(len(gen.observe(b)) for b in batches)
    ours = (time.perf_counter() - t) / (ROUNDS * BATCH)
    seen: dict[str, int] = {}
    t = time.perf_counter()
    for b in batches:  # the floor: one pass over the columns with one dict look-up per row
        get, ts = seen.get, b.ts_us
        for i, pid in enumerate(b.point_id):
            get(pid, ts[i])
    raw = (time.perf_counter() - t) / (ROUNDS * BATCH)
    return {"batch": BATCH, "readings_every_s": 60, "events_when_nothing_due": due,
            "us_per_reading_nothing_due": ours * 1e6, "us_per_reading_bare_pass": raw * 1e6,
            "ratio_to_bare_pass": ours / raw, "first_batch_events": first_events,
            "us_per_event_first_batch": first_s / BATCH * 1e6}


def _raw_paho(port: int, payloads: list[tuple[str, bytes]]) -> float:
    done, acked = threading.Event(), [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-events-raw")
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    connected.wait(10)
    try:
        t = time.perf_counter()
        for topic, payload in payloads:
            c.publish(topic, payload, qos=1)
        if not done.wait(120):
            raise RuntimeError(f"raw paho: {acked[0]} of {len(payloads)} acknowledged")
        return time.perf_counter() - t
    finally:
        c.disconnect()
        c.loop_stop()


async def _bus(port: int) -> tuple[float, list[tuple[str, bytes]]]:
    settings = EventSettings(mqtt=EventMqtt(port=port, client_id="bench-events"), readings_every_s=0)
    async with EventBus(settings, "bench") as bus:
        while not bus.stats().connected:  # noqa: ASYNC110 - plain state, set from paho's thread
            await asyncio.sleep(0.01)
        batch = _batch(T0_US)
        events = bus.readings.observe(batch) * (EVENTS // BATCH)
        t = time.perf_counter()
        for e in events:
            bus.publish(e)
        while bus.stats().acked < len(events):  # noqa: ASYNC110 - counted in paho's thread
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t
        assert bus.stats().dropped == 0
    return elapsed, [(e.topic, e.model_dump_json().encode()) for e in events]


def run() -> dict[str, Any]:
    out: dict[str, Any] = {"observe": observe_cost()}
    bus_t, raw_t = [], []
    with tempdir() as tmp, _broker(tmp / "broker") as port:
        for _ in range(MQTT_ROUNDS):  # interleaved, so load on the machine hits both alike
            bus_s, payloads = asyncio.run(_bus(port))
            bus_t.append(bus_s)
            raw_t.append(_raw_paho(port, payloads))
    bus_s, raw_s = min(bus_t), min(raw_t)
    out["mqtt_qos1"] = {"events": len(payloads), "bus_events_per_s": len(payloads) / bus_s,
                        "raw_paho_per_s": len(payloads) / raw_s, "ratio_to_raw": raw_s / bus_s}
    out["targets"] = {"observe.us_per_reading_nothing_due": "< 0.5", "mqtt_qos1.ratio_to_raw": ">= 0.5"}
    return out
