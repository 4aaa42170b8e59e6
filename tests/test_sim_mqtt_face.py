"""The virtual building's MQTT face on a private Mosquitto: IoT sensors, sub-meters, commands."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import SiteConfig, load_config
from eaio.errors import ConfigError
from eaio.models import MqttTls
from eaio.sim.physics import IOT_OFFSET, ZONES
from eaio.sim.runner import SimThread

T = TypeVar("T")
PREFIX = "test-site"
ZONE_IDS = [z.name for z in ZONES]


def iot_device(port: int, prefix: str = PREFIX, client_id: str = "eaio-test") -> dict[str, Any]:
    """The IoT gateway device: the sim's zone sensors and sub-meters mapped to points."""
    zone_points = [
        p for z in ZONE_IDS for p in (
            {"id": f"{z}.iot_temp", "kind": "temperature", "unit": "degC", "zone": z, "limits": {"low": 5, "high": 40}},
            {"id": f"{z}.rh", "kind": "humidity", "unit": "%RH", "zone": z, "limits": {"low": 0, "high": 100}},
            {"id": f"{z}.co2", "kind": "co2", "unit": "ppm", "zone": z, "limits": {"low": 300, "high": 5000}},
            {"id": f"{z}.iot_occ", "kind": "occupancy", "zone": z, "value_type": "bool"},
        )
    ]
    meters = [{"id": f"submeter.{m}", "kind": "power", "unit": "kW", "limits": {"low": 0, "high": 200}}
              for m in ("lighting", "plugs", "hvac")]
    return {
        "id": "iot-gw",
        "protocol": "mqtt",
        "poll_interval_s": 60,
        "connection": {"host": "127.0.0.1", "port": port, "client_id": client_id, "reconnect_min_s": 0.2,
                       "reconnect_max_s": 1.0},
        "subscriptions": [
            {"topic": f"{prefix}/iot/+/env", "format": "json",
             "fields": {"temperature": "{1}.iot_temp", "humidity": "{1}.rh", "co2": "{1}.co2",
                        "occupancy": "{1}.iot_occ"}},
            {"topic": f"{prefix}/meters/+/power", "format": "json", "point": "submeter.{1}", "path": "kw"},
        ],
        "points": [*zone_points, *meters],
    }


def mqtt_site(site_file: Callable[..., Path], port: int, **sim: Any) -> SiteConfig:
    """The demo site (Modbus devices on free ports) plus the IoT gateway on ``port``."""
    path = site_file()
    raw = yaml.safe_load(path.read_text())
    raw["devices"].append(iot_device(port))
    raw["sim"].update({"mqtt": {"device": "iot-gw", "prefix": PREFIX, "env_interval_s": 60,
                                "meter_interval_s": 60}, **sim})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def wait_for(check: Callable[[], T | None], what: str, within: float = 10.0) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.02)
    pytest.fail(f"timed out after {within} s waiting for {what}")


class Listener:
    """A raw paho subscriber that keeps every message it gets."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{port}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, f"the listener's subscription to {topic}")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def latest(self, topic: str) -> dict[str, Any] | None:
        with self._lock:
            found = [p for t, p in self.messages if t == topic]
        return json.loads(found[-1]) if found else None

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(mosquitto: Any) -> Iterator[Listener]:
    ear = Listener(mosquitto.port, f"{PREFIX}/#")
    try:
        yield ear
    finally:
        ear.close()


def test_publishes_zone_sensors_and_submeters(site_file: Callable[..., Path], mosquitto: Any,
                                              listener: Listener) -> None:
    cfg = mqtt_site(site_file, mosquitto.port, speed=1)
    with SimThread(cfg) as sim:
        topics = [f"{PREFIX}/iot/{z}/env" for z in ZONE_IDS] + [
            f"{PREFIX}/meters/{m}/power" for m in ("lighting", "plugs", "hvac")]
        wait_for(lambda: all(listener.latest(t) for t in topics), "every zone's env and every sub-meter")
        # A fresh round, published from a known physics state, to compare against it.
        listener.clear()
        sim.advance(60)
        wait_for(lambda: all(listener.latest(t) for t in topics), "the next round after 60 sim seconds")
        for z in ZONE_IDS:
            env = listener.latest(f"{PREFIX}/iot/{z}/env")
            assert env is not None
            assert set(env) == {"temperature", "humidity", "co2", "occupancy", "ts"}
            # The clock task moves the sim on a little meanwhile (speed 1): a loose tolerance.
            assert env["temperature"] == pytest.approx(sim.true_value(f"{z}.temp") + IOT_OFFSET[z], abs=0.1)
            assert env["temperature"] != pytest.approx(sim.true_value(f"{z}.temp"), abs=0.05)  # the offset shows
            assert 30 <= env["humidity"] <= 65
            assert 400 <= env["co2"] <= 3000
            assert env["occupancy"] is sim.true_value(f"{z}.occ")
            assert env["ts"].endswith("Z")
        kw = {m: listener.latest(f"{PREFIX}/meters/{m}/power")["kw"] for m in ("lighting", "plugs", "hvac")}  # type: ignore[index]
        assert all(v >= 0 for v in kw.values())
        assert sum(kw.values()) == pytest.approx(sim.true_value("meter.power"), abs=0.1)


def test_command_changes_zone_setpoint_and_bad_ones_are_ignored(
    site_file: Callable[..., Path], mosquitto: Any, listener: Listener
) -> None:
    cfg = mqtt_site(site_file, mosquitto.port, speed=1)
    with SimThread(cfg) as sim:
        face = sim.simulation.mqtt_face
        assert face is not None
        wait_for(face.connected.is_set, "the sim's MQTT connection")
        listener.publish(f"{PREFIX}/iot/zone1/cmd", b'{"cool_sp": 25.5}')
        wait_for(lambda: sim.value("zone1.cool_sp") == 25.5, "zone1.cool_sp to follow the command")
        for bad in (b"not json", b'{"cool_sp": 99}', b'{"cool_sp": "warm"}', b'{"fan": 1}', b"[]"):
            listener.publish(f"{PREFIX}/iot/zone1/cmd", bad)
        listener.publish(f"{PREFIX}/iot/zone9/cmd", b'{"cool_sp": 24}')
        wait_for(lambda: face.rejected == 6, "six rejected commands")
        listener.publish(f"{PREFIX}/iot/zone2/cmd", b'{"heat_sp": 18.5}')
        wait_for(lambda: sim.value("zone2.heat_sp") == 18.5, "zone2.heat_sp to follow the command")
        assert sim.value("zone1.cool_sp") == 25.5  # the bad commands changed nothing
        assert face.commands == 2


def test_survives_a_broker_that_comes_later(site_file: Callable[..., Path], mosquitto: Any) -> None:
    cfg = mqtt_site(site_file, mosquitto.port, speed=1)
    mosquitto.stop()
    with SimThread(cfg) as sim:  # starts without a broker, and the physics keeps going
        sim.advance(120)
        face = sim.simulation.mqtt_face
        assert face is not None
        assert not face.connected.is_set()
        mosquitto.start()
        ear = Listener(mosquitto.port, f"{PREFIX}/iot/+/env")
        try:
            def fresh_round() -> dict[str, Any] | None:
                sim.advance(60)
                return ear.latest(f"{PREFIX}/iot/zone3/env")

            wait_for(fresh_round, "env messages once the broker is up")
            # Rounds from the advances above may still be in flight: pick this round by its timestamp.
            since = sim.sim_time + timedelta(seconds=59)
            sim.advance(60)

            def this_round() -> dict[str, Any] | None:
                env = ear.latest(f"{PREFIX}/iot/zone3/env")
                return env if env and datetime.fromisoformat(env["ts"]) >= since else None

            env = wait_for(this_round, "the round after 60 more sim seconds")
            assert env["temperature"] == pytest.approx(sim.true_value("zone3.temp") + IOT_OFFSET["zone3"], abs=0.2)
        finally:
            ear.close()


def test_publishes_over_tls_with_a_client_certificate(site_file: Callable[..., Path], mosquitto_tls: Any) -> None:
    broker = mosquitto_tls
    cfg = mqtt_site(site_file, broker.tls_port, speed=1)
    iot = cfg.devices_for("mqtt")[0]
    certs = broker.certs
    iot.connection.tls = MqttTls(ca=str(certs.ca), cert=str(certs.client_cert), key=str(certs.client_key))
    ear = Listener(broker.port, f"{PREFIX}/meters/+/power")  # the same broker's plain listener
    try:
        with SimThread(cfg) as sim:
            face = sim.simulation.mqtt_face
            assert face is not None
            wait_for(face.connected.is_set, "the sim's TLS connection")
            assert wait_for(lambda: ear.latest(f"{PREFIX}/meters/hvac/power"), "a sub-meter message via TLS")
    finally:
        ear.close()


def test_sim_mqtt_device_must_be_an_mqtt_device(site_file: Callable[..., Path]) -> None:
    path = site_file(sim={"mqtt": {"device": "zones-ctrl"}})  # a Modbus device
    with pytest.raises(ConfigError, match=r"sim\.mqtt\.device.*not an MQTT device"):
        load_config(path)
