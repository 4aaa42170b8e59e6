"""Ingest publishes what it sees: reading and quality events, a device going offline and coming
back, the store failing and recovering, and the energy intervals it derives — in process and on a
private Mosquitto, from the real sim polled over loopback."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import SimFaultSpec, SiteConfig, load_config
from eaio.errors import StoreError
from eaio.models import Event, EventKind, FaultCode, Quality, ReadingBatch, from_us, to_us
from eaio.pipeline import SqliteStore
from eaio.pipeline.ingest import Ingest
from helpers import until
from test_ingest import fast

pytestmark = pytest.mark.anyio


class Listener:
    """A paho subscriber on eaio/<site>/#, collecting the events it receives."""

    def __init__(self, port: int, site: str) -> None:
        self.events: list[tuple[Event, int]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-listener")
        self.client.on_connect = lambda c, *_: c.subscribe(f"eaio/{site}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(10), "listener never subscribed"

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        event = Event.model_validate(json.loads(msg.payload))
        assert msg.topic == event.topic
        with self._lock:
            self.events.append((event, msg.qos))

    def of(self, kind: EventKind, subject: str | None = None) -> list[Event]:
        with self._lock:
            return [e for e, _ in self.events if e.kind == kind and (subject is None or e.subject == subject)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_readings_and_device_faults_reach_the_broker_and_in_process_subscribers(
    site: SiteConfig, mosquitto: Any
) -> None:
    from eaio.config import EventMqtt
    from eaio.sim.runner import SimThread

    cfg = fast(site)
    cfg.events.mqtt = EventMqtt(port=mosquitto.port, client_id="ingest-events-test")
    cfg.events.readings_every_s = 0  # every reading: the test sees them at once
    listener = Listener(mosquitto.port, cfg.site.id)
    try:
        with SimThread(cfg) as building:
            async with Ingest(cfg) as ingest:
                faults = ingest.events.subscribe(kinds=[EventKind.FAULT])

                async def sat_on_the_wire() -> list[Event]:
                    return listener.of(EventKind.READING, "ahu1.sat")

                first = (await until(sat_on_the_wire, "ahu1.sat reading events on MQTT"))[0]
                assert (first.device_id, first.unit, first.quality) == ("ahu1-ctrl", "degC", Quality.GOOD)
                assert isinstance(first.value, float)

                # Every plant-ctrl point read good first (a loaded machine may not have polled it yet):
                # a point whose FIRST reading is bad is announced as "is bad", not "went from good".
                plant = {p.id for p in cfg.points() if p.device_id == "plant-ctrl"}

                async def plant_good() -> bool:
                    return plant <= {e.subject for e in listener.of(EventKind.READING)
                                     if e.device_id == "plant-ctrl" and e.quality == Quality.GOOD}

                await until(plant_good, "good readings of every plant-ctrl point before its outage")
                building.inject(SimFaultSpec(kind="offline", target="plant-ctrl"))

                async def offline() -> Event | None:
                    while (e := faults.get_nowait()) is not None:
                        if e.code == FaultCode.DEVICE_OFFLINE and e.subject == "plant-ctrl":
                            return e
                    return None

                event = await until(offline, "a device_offline fault in process")
                assert event.device_id == "plant-ctrl"
                assert "offline" in event.message

                async def quality_bad() -> list[Event]:
                    return [e for e in listener.of(EventKind.QUALITY) if e.device_id == "plant-ctrl"
                            and e.quality == Quality.BAD]

                changed = await until(quality_bad, "quality events of plant-ctrl's points going bad")
                assert all(e.previous_quality == Quality.GOOD and "comm_failure" in e.reasons for e in changed), \
                    [e.message for e in changed]

                building.clear_faults("plant-ctrl")

                async def online() -> list[Event]:
                    return [e for e in listener.of(EventKind.FAULT, "plant-ctrl") if e.code == FaultCode.DEVICE_ONLINE]

                await until(online, "a device_online fault on MQTT", within=20)
                offline_on_wire = [e for e in listener.of(EventKind.FAULT, "plant-ctrl")
                                   if e.code == FaultCode.DEVICE_OFFLINE]
                assert len(offline_on_wire) == 1  # once per change of state, not per failed poll
                stats = ingest.stats().events
                assert stats is not None
                assert stats.connected
                assert stats.published > 0
        assert {qos for _, qos in listener.events} == {1}
    finally:
        listener.close()


class _FailingStore(SqliteStore):
    """The real SQLite store, made to refuse writes while ``failing`` is set (a full disk, a lock)."""

    failing = True

    async def write(self, readings: Any) -> int:
        if self.failing:
            raise StoreError("store_error: disk full (test)", retryable=True)
        return await super().write(readings)


async def test_store_failure_and_recovery_are_fault_events(site: SiteConfig, tmp_path: Path) -> None:
    from eaio.sim.runner import SimThread

    cfg = fast(site)
    store = _FailingStore(tmp_path / "s.db")
    with SimThread(cfg):
        async with store, Ingest(cfg, store=store) as ingest:
            faults = ingest.events.subscribe(kinds=[EventKind.FAULT])
            seen: list[Event] = []

            def codes() -> list[FaultCode | None]:
                while (e := faults.get_nowait()) is not None:
                    seen.append(e)
                return [e.code for e in seen if e.subject == "store"]

            async def failing() -> bool:
                return FaultCode.STORE_FAILING in codes()

            await until(failing, "a store_failing fault")
            store.failing = False

            async def recovered() -> bool:
                return FaultCode.STORE_RECOVERED in codes()

            await until(recovered, "a store_recovered fault")
            assert codes() == [FaultCode.STORE_FAILING, FaultCode.STORE_RECOVERED]
            assert "disk full" in seen[0].message


def _meter_site(tmp_path: Path) -> SiteConfig:
    """A meter whose device is never reached (closed port, hourly polls): its readings come from the test."""
    raw = {
        "site": {"id": "meters"}, "data_dir": str(tmp_path / "data"), "energy": {"demand_interval_s": 60},
        "devices": [{
            "id": "meter1", "protocol": "modbus", "poll_interval_s": 3600,
            "connection": {"host": "127.0.0.1", "port": 9, "timeout_s": 0.2, "retries": 0},
            "points": [
                {"id": "meter.energy", "kind": "energy", "unit": "kWh",
                 "address": {"table": "input", "register": 2, "type": "uint32", "scale": 0.001}},
                {"id": "meter.power", "kind": "power", "unit": "kW", "limits": {"low": 0, "high": 500},
                 "address": {"table": "input", "register": 0, "type": "float32"}},
            ],
        }],
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


async def test_energy_intervals_are_derived_stored_and_published(tmp_path: Path) -> None:
    cfg = _meter_site(tmp_path)
    # Recent samples (older ones would be stale, and the tracker takes good readings only), starting
    # on a minute boundary.
    t0 = (to_us(datetime.now(UTC)) // 60_000_000 - 4) * 60_000_000
    batch = ReadingBatch()
    # A counter near the 32-bit wrap (4294967.296 kWh at scale 0.001): +0.5 kWh every 10 s across
    # three one-minute intervals, wrapping in the second; and a steady 30 kW.
    counter = 4294966.5
    for i in range(19):
        value = (counter + 0.5 * i) % 4294967.296
        batch.append("meter.energy", round(value, 3), t0 + i * 10_000_000, "kWh", "meter1")
        batch.append("meter.power", 30.0, t0 + i * 10_000_000, "kW", "meter1")
    async with Ingest(cfg) as ingest:
        demand = ingest.events.subscribe(kinds=[EventKind.DEMAND, EventKind.ENERGY])
        await ingest._on_pushed(batch)

        async def stored() -> list[Any]:
            return [r for r in await ingest.store.latest(["meter.energy.interval", "meter.power.demand"])]  # type: ignore[union-attr]

        await until(stored, "derived readings in the store")
        events: list[Event] = []
        while (e := demand.get_nowait()) is not None:
            events.append(e)
    async with SqliteStore(cfg.sqlite_path()) as store:
        start, end = from_us(t0 - 3600_000_000), from_us(t0 + 3600_000_000)
        intervals = await store.history("meter.energy.interval", start, end)
        demands = await store.history("meter.power.demand", start, end)
    # Three one-minute intervals closed (the sample on the third minute's end closes it): 6 steps of
    # 0.5 kWh each, the wrap in the second counted as energy, not as a reset.
    ends = [from_us(t0 + k * 60_000_000) for k in (1, 2, 3)]
    assert [(r.ts, round(float(r.value), 3), r.quality) for r in intervals] == [  # type: ignore[arg-type]
        (end, 3.0, Quality.GOOD) for end in ends]
    assert [(r.ts, r.value, r.quality) for r in demands] == [(end, 30.0, Quality.GOOD) for end in ends]
    assert sorted((e.kind.value, e.subject, e.ts) for e in events) == sorted(
        [("demand", "meter.power.demand", end) for end in ends]
        + [("demand", "meter.energy.demand", end) for end in ends]  # 3 kWh a minute: 180 kW
        + [("energy", "meter.energy.interval", end) for end in ends])
    assert {round(float(e.value), 3) for e in events if e.subject == "meter.energy.demand"} == {180.0}  # type: ignore[arg-type]
    assert any("counter_rollover" in (r.detail or "") for r in intervals)
