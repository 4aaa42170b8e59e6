"""Ingest over MQTT: the sim's IoT face through a private Mosquitto into the store, next to Modbus."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import SiteConfig, load_config
from eaio.models import Quality, Reading, utcnow
from eaio.pipeline import SqliteStore
from eaio.pipeline.ingest import Ingest, poll_groups
from eaio.sim.runner import SimThread
from helpers import until
from test_sim_mqtt_face import PREFIX, mqtt_site

T = TypeVar("T")
SPEED = 120  # sim seconds per wall second: one env message per zone every half second
IOT_POINTS = ["zone1.iot_temp", "zone1.rh", "zone1.co2", "zone1.iot_occ", "submeter.lighting", "submeter.hvac"]


def site(site_file: Callable[..., Path], port: int) -> SiteConfig:
    cfg = mqtt_site(site_file, port, speed=SPEED)
    for dev in cfg.devices_for("modbus"):
        dev.poll_interval_s = 0.2  # many Modbus polls in a second, to store both side by side
    return cfg


def publish(port: int, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def dead_letters(cfg: SiteConfig) -> list[tuple[str, str, bytes]]:
    with sqlite3.connect(cfg.sqlite_path()) as conn:
        rows = conn.execute("SELECT source, topic, reason, payload FROM dead_letter")
        return [(f"{s}:{t}", r, bytes(p)) for s, t, r, p in rows]


async def latest(store: SqliteStore, ids: list[str]) -> dict[str, Reading]:
    return {r.point_id: r for r in await store.latest(ids)}


def test_mqtt_devices_are_subscribed_not_polled(site_file: Callable[..., Path]) -> None:
    cfg = site(site_file, 1883)
    assert {g.device_id for g in poll_groups(cfg)} == {d.id for d in cfg.devices_for("modbus")}


@pytest.mark.anyio
async def test_stores_mqtt_readings_next_to_modbus(site_file: Callable[..., Path], mosquitto: Any) -> None:
    cfg = site(site_file, mosquitto.port)
    with SimThread(cfg) as sim:
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store) as ingest:
            wanted = [*IOT_POINTS, "zone1.temp"]
            got = await until(lambda: _all(store, wanted), "IoT and Modbus readings in the store")
            assert all(r.quality == Quality.GOOD for r in got.values()), got
            assert got["zone1.iot_temp"].device_id == "iot-gw"
            assert got["zone1.temp"].device_id == "zones-ctrl"
            assert got["zone1.iot_temp"].unit == "degC"
            assert got["zone1.co2"].unit == "ppm"
            assert got["zone1.iot_temp"].value == pytest.approx(got["zone1.temp"].value, abs=1.0)
            assert 30 <= got["zone1.rh"].value <= 65  # type: ignore[operator]
            assert 400 <= got["zone1.co2"].value <= 3000  # type: ignore[operator]
            assert isinstance(got["zone1.iot_occ"].value, bool)
            assert got["submeter.hvac"].value == pytest.approx(sim.true_value("submeter.hvac"), rel=0.5)
            stats = ingest.stats()
            assert stats.devices["iot-gw"].pushed >= len(IOT_POINTS)
            assert stats.devices["iot-gw"].polls == 0
            await until(lambda: _connected(ingest), "the iot-gw connection in the stats")


@pytest.mark.anyio
async def test_malformed_messages_become_dead_letters_and_ingest_goes_on(
    site_file: Callable[..., Path], mosquitto: Any
) -> None:
    cfg = site(site_file, mosquitto.port)
    limit = cfg.devices_for("mqtt")[0].connection.max_payload_bytes
    # A valid message, but one byte per byte too many: it is not even parsed.
    huge = b'{"kw": 1.0, "pad": "' + b"x" * limit + b'"}'
    bad = {  # topic -> (payload, reason)
        f"{PREFIX}/iot/zone1/env": (b"{not json", "malformed"),
        f"{PREFIX}/meters/plugs/power": (b'{"kw": "lots"}', "not_a_number"),
        f"{PREFIX}/meters/elevator/power": (b'{"kw": 3.0}', "unmapped"),  # matches the filter, maps to no point
        f"{PREFIX}/meters/lighting/power": (huge, "too_large"),
    }
    with SimThread(cfg):
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store) as ingest:
            await until(lambda: _all(store, ["zone1.co2"]), "the first IoT reading")
            for topic, (payload, _) in bad.items():
                publish(mosquitto.port, topic, payload)
            letters = await until(lambda: _letters(cfg, len(bad)), f"{len(bad)} dead letters")
            by_source = {s: (r, p) for s, r, p in letters}
            assert set(by_source) == {f"mqtt:iot-gw:{topic}" for topic in bad}
            for topic, (payload, want) in bad.items():
                reason, kept = by_source[f"mqtt:iot-gw:{topic}"]
                assert reason == want, (topic, reason)
                assert kept == payload[:limit], topic  # the raw bytes (an oversized one up to the limit)
            assert len(by_source[f"mqtt:iot-gw:{PREFIX}/meters/lighting/power"][1]) == limit
            assert ingest.stats().dead_letters == len(bad)
            # Ingest goes on: fresh IoT readings keep arriving after the bad ones.
            since = utcnow()
            await until(lambda: _newer(store, "zone1.co2", since), "an IoT reading after the dead letters")


@pytest.mark.anyio
async def test_bool_payloads_reach_the_store_as_bools(site_file: Callable[..., Path], mosquitto: Any) -> None:
    """A binary point whose messages are a bare word or digit ("true", "0", "on"), as many
    occupancy sensors send; a point of its own, so that the sim's JSON occupancy does not mix in."""
    base = site(site_file, mosquitto.port)
    raw = base.model_dump(mode="json", exclude={"source"})
    for dev in raw["devices"]:
        for p in dev["points"]:
            p.pop("device_id", None)
        if dev["id"] == "iot-gw":
            dev["subscriptions"].append({"topic": f"{PREFIX}/iot/lobby/occupancy", "format": "number",
                                         "point": "lobby.occ"})
            dev["points"].append({"id": "lobby.occ", "kind": "occupancy", "value_type": "bool"})
    assert base.source is not None
    base.source.write_text(json.dumps(raw))
    cfg = load_config(base.source)
    sent = [(b"true", True), (b"0", False), (b"on", True), (b"1", True), (b"false", False)]
    with SimThread(cfg):
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store):
            await until(lambda: _all(store, ["zone1.co2"]), "the first IoT reading")  # subscribed
            since = utcnow()
            for payload, _ in sent:
                publish(mosquitto.port, f"{PREFIX}/iot/lobby/occupancy", payload)  # QoS 1, in order
            rows = await until(lambda: _history(store, "lobby.occ", since, len(sent)), "every occupancy message")
            assert [r.value for r in rows] == [want for _, want in sent]
            assert all(isinstance(r.value, bool) and r.quality == Quality.GOOD for r in rows), rows
            assert rows[0].device_id == "iot-gw"
            assert dead_letters(cfg) == []


@pytest.mark.anyio
async def test_ingest_keeps_storing_after_a_broker_restart(site_file: Callable[..., Path], mosquitto: Any) -> None:
    cfg = site(site_file, mosquitto.port)
    with SimThread(cfg):
        async with SqliteStore.from_config(cfg) as store, Ingest(cfg, store=store) as ingest:
            await until(lambda: _all(store, ["zone2.co2"]), "the first IoT reading")
            await anyio.to_thread.run_sync(mosquitto.restart)
            since = utcnow()
            await until(lambda: _newer(store, "zone2.co2", since), "an IoT reading after the broker restart")
            await until(lambda: _newer(store, "zone2.temp", since), "Modbus readings all along")
            assert ingest.stats().devices["iot-gw"].pushed > 0


async def _all(store: SqliteStore, ids: list[str]) -> dict[str, Reading] | None:
    got = await latest(store, ids)
    return got if set(got) == set(ids) else None


async def _newer(store: SqliteStore, point_id: str, since: Any) -> bool:
    got = await latest(store, [point_id])
    return point_id in got and got[point_id].ts > since


async def _history(store: SqliteStore, point_id: str, since: Any, n: int) -> list[Reading] | None:
    rows = await store.history(point_id, since, utcnow())
    return rows if len(rows) >= n else None


async def _letters(cfg: SiteConfig, n: int) -> list[tuple[str, str, bytes]] | None:
    rows = dead_letters(cfg)
    return rows if len(rows) >= n else None


async def _connected(ingest: Ingest) -> bool:
    return ingest.stats().devices["iot-gw"].last_ok is True
