"""The MQTT face of the virtual building: IoT zone sensors and sub-meters, and setpoint commands.

Publishes through the broker of one configured MQTT device (its host, port, TLS and
credentials; client id ``<prefix>-sim``):

- ``<prefix>/iot/<zone>/env``     {"temperature", "humidity", "co2", "occupancy", "ts"}
- ``<prefix>/meters/<name>/power`` {"kw", "ts"}  for lighting, plugs and hvac
- subscribes ``<prefix>/iot/+/cmd`` and applies {"cool_sp": x} / {"heat_sp": x} to that zone.

paho runs its network loop in its own thread (``loop_start``) and reconnects with backoff by
itself, so a broker that is down never blocks the sim loop: ``publish`` only queues. Commands
arrive on paho's thread and are handed to the sim's event loop, where the physics lives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho

from ...config import SimMqtt
from ...models import MqttDevice
from ...protocol_adapters.mqtt import paho_client
from ..physics import SUBMETERS, ZONES

__all__ = ["COMMAND_KEYS", "MqttFace", "env_payload", "meter_payload"]

log = logging.getLogger(__name__)

Value = float | int | bool
# Command key -> physics input of the zone, and the range a real thermostat would accept.
COMMAND_KEYS: dict[str, tuple[str, float, float]] = {"cool_sp": ("cool_sp", 10.0, 35.0),
                                                      "heat_sp": ("heat_sp", 5.0, 30.0)}
ZONE_NAMES = frozenset(z.name for z in ZONES)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def env_payload(zone: str, values: Callable[[str], Value], ts: datetime) -> bytes:
    """One zone's IoT sensor message."""
    return json.dumps({
        "temperature": round(float(values(f"{zone}.iot_temp")), 2),
        "humidity": round(float(values(f"{zone}.rh")), 1),
        "co2": round(float(values(f"{zone}.co2"))),
        "occupancy": bool(values(f"{zone}.iot_occ")),
        "ts": _iso(ts),
    }).encode()


def meter_payload(name: str, values: Callable[[str], Value], ts: datetime) -> bytes:
    return json.dumps({"kw": round(float(values(f"submeter.{name}")), 3), "ts": _iso(ts)}).encode()


class MqttFace:
    """Publishes the building's IoT view through ``device``'s broker while started."""

    def __init__(
        self,
        device: MqttDevice,
        settings: SimMqtt,
        prefix: str,
        on_command: Callable[[str, Value], None],
    ) -> None:
        self.device = device
        self.settings = settings
        self.prefix = prefix
        self.on_command = on_command
        # Only zones the gateway declares points for: a sensor nobody mapped would only fill the
        # dead-letter table.
        declared = {p.id.split(".")[0] for p in device.points}
        self.zones = sorted(ZONE_NAMES & declared)
        self.published = 0
        self.commands = 0
        self.rejected = 0
        self.connected = threading.Event()
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_env = 0.0
        self._next_meter = 0.0
        self._was_connected = False

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/iot/+/cmd"

    # -- lifetime -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; returns at once (the broker may come later)."""
        if self._client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        c = self.device.connection
        self._client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        self._client.loop_start()
        log.info("sim mqtt: publishing to %s:%d under '%s/'", c.host, c.port, self.prefix)

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()  # joins paho's thread: nothing of ours runs after this
        self.connected.clear()

    def _make_client(self) -> paho.Client:
        client = paho_client(self.device.connection, f"{self.device.connection.client_id or 'eaio'}-sim")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- publishing (called from the sim step, on the sim's loop) -----------------------------
    def step(self, elapsed: float, now: datetime, values: Callable[[str], Value]) -> None:
        """Publish what is due at sim time ``elapsed``; missed intervals are skipped, not replayed."""
        if self._client is None:
            return
        if elapsed >= self._next_env:
            for zone in self.zones:
                self._publish(f"{self.prefix}/iot/{zone}/env", env_payload(zone, values, now))
            self._next_env = _next_due(self._next_env, elapsed, self.settings.env_interval_s)
        if elapsed >= self._next_meter:
            for name in SUBMETERS:
                self._publish(f"{self.prefix}/meters/{name}/power", meter_payload(name, values, now))
            self._next_meter = _next_due(self._next_meter, elapsed, self.settings.meter_interval_s)

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        if not self.connected.is_set() and self.settings.qos == 0:
            return  # QoS 0 while away is lost anyway; do not let paho queue it
        # Non-blocking: paho queues the message (QoS 1 ones survive a reconnect) and its thread sends it.
        self._client.publish(topic, payload, qos=self.settings.qos)
        self.published += 1

    # -- paho callbacks (paho's thread) ---------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("sim mqtt: broker refused the connection: %s", reason)
            return
        client.subscribe(self.command_filter, qos=1)
        if self._was_connected:
            log.info("sim mqtt: broker back")
        self._was_connected = True
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.connected.is_set() and self._client is not None:
            # Once per outage: paho keeps reconnecting quietly in its thread.
            log.warning("sim mqtt: lost the broker (%s); reconnecting in the background", reason)
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply, msg.topic, bytes(msg.payload))

    # -- commands (the sim's loop) --------------------------------------------------------------
    def _apply(self, topic: str, payload: bytes) -> None:
        zone = topic.split("/")[-2] if topic.count("/") >= 2 else ""
        try:
            changes = parse_command(zone, payload)
        except ValueError as err:
            self.rejected += 1
            log.warning("sim mqtt: ignored command on %s: %s", topic, err)
            return
        for point_id, value in changes:
            log.info("sim mqtt: %s = %s (command on %s)", point_id, value, topic)
            self.on_command(point_id, value)
        self.commands += 1


def parse_command(zone: str, payload: bytes) -> list[tuple[str, float]]:
    """{"cool_sp": x, "heat_sp": y} for ``zone`` -> [(point id, value)]; ValueError if malformed."""
    if zone not in ZONE_NAMES:
        raise ValueError(f"unknown zone '{zone}'")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(body, dict) or not body:
        raise ValueError("expected a JSON object such as {\"cool_sp\": 24}")
    out = []
    for key, value in body.items():
        if key not in COMMAND_KEYS:
            raise ValueError(f"unknown key '{key}'; expected {', '.join(COMMAND_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"'{key}' must be a number (got {value!r})")
        var, low, high = COMMAND_KEYS[key]
        if not low <= value <= high:
            raise ValueError(f"'{key}' {value} is outside {low}..{high}")
        out.append((f"{zone}.{var}", float(value)))
    return out


def _next_due(due: float, elapsed: float, interval: float) -> float:
    """The first due time after ``elapsed`` on the ``interval`` grid (a long step skips some)."""
    return due + (math.floor((elapsed - due) / interval) + 1) * interval
