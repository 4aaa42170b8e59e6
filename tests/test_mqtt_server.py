"""The MQTT MCP server on the wire: a real `eaio serve mqtt` child against a private Mosquitto.

The test drives the server with the real `mcp` Client over stdio, and plays the devices with a
raw paho client: it publishes sensor values on mapped topics and listens on command topics.
Every test has its own broker, topics, client ids and data dir (audit).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from mcp import Client

from eaio.config import SiteConfig, load_config
from eaio.models import WriteOutcome
from eaio.servers import CORE_TOOLS, ToolName
from eaio.servers.audit import read_audit
from helpers import call, error_of, eventually, stdio_session

pytestmark = pytest.mark.anyio

CORE = {t.value for t in CORE_TOOLS}
MQTT_EXTRAS = {ToolName.SUBSCRIBE_TOPICS, ToolName.READ_MESSAGES, ToolName.PUBLISH_MESSAGE, ToolName.BROKER_INFO}


def mqtt_device(port: int, prefix: str) -> dict[str, Any]:
    """A gateway with zone temperatures (number), a meter (JSON, several points) and one setpoint."""
    return {
        "id": "iot-gw",
        "name": "IoT gateway",
        "protocol": "mqtt",
        "connection": {
            "host": "127.0.0.1", "port": port, "client_id": f"test-{uuid.uuid4().hex[:8]}",
            "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "timeout_s": 2.0, "keepalive_s": 5,
        },
        "subscriptions": [
            {"topic": f"{prefix}/zones/+/temp", "qos": 1, "format": "number", "point": "{1}.temp"},
            {"topic": f"{prefix}/meter", "qos": 1, "format": "json",
             "fields": {"power.kw": "meter.kw", "energy": "meter.kwh"}},
            {"topic": f"{prefix}/zones/zone1/sp", "qos": 1, "format": "json", "point": "zone1.sp", "path": "value"},
        ],
        "points": [
            {"id": "zone1.temp", "kind": "temperature", "unit": "degC", "zone": "zone1"},
            {"id": "zone2.temp", "kind": "temperature", "unit": "degC", "zone": "zone2"},
            {"id": "meter.kw", "kind": "power", "unit": "kW"},
            {"id": "meter.kwh", "kind": "energy", "unit": "kWh"},
            {"id": "zone1.sp", "kind": "setpoint", "unit": "degC", "zone": "zone1", "writable": True,
             "write_bounds": {"low": 18, "high": 26},
             "command": {"topic": f"{prefix}/zones/zone1/sp/set", "format": "json", "field": "value", "qos": 1}},
        ],
        "publish_prefixes": [f"{prefix}/out/"],
    }


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mqtt_site(site_file: Callable[..., Path], mosquitto: Any, prefix: str) -> SiteConfig:
    return load_config(site_file(devices=[mqtt_device(mosquitto.port, prefix)]))


class RawClient:
    """A plain paho client: the 'devices' the server talks to, and an independent observer."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.closed = False
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, msg.payload, bool(msg.retain)))

    def messages(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.got if t == topic]

    def subscribe(self, topic: str) -> None:
        # Wait for the SUBACK, so nothing published afterwards can be missed.
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def raw(mosquitto: Any) -> Iterator[RawClient]:
    client = RawClient(mosquitto.port)
    try:
        yield client
    finally:
        client.close()


async def connected(c: Client) -> bool:
    brokers = (await call(c, "broker_info"))["brokers"]
    return all(b["connected"] for b in brokers)


async def values(c: Client, ids: list[str]) -> dict[str, Any]:
    readings = (await call(c, "read_points", {"point_ids": ids}))["readings"]
    return {r["point_id"]: r for r in readings}


# -- tools -----------------------------------------------------------------------------------------
async def test_tool_list_and_annotations(mqtt_site: SiteConfig) -> None:
    async with stdio_session(mqtt_site, "mqtt") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == CORE | {t.value for t in MQTT_EXTRAS}
    for name, tool in tools.items():
        assert tool.description, name
        assert tool.output_schema, name
        assert tool.annotations, name
    ann = {name: tool.annotations for name, tool in tools.items()}
    assert ann["read_messages"].read_only_hint
    assert ann["broker_info"].read_only_hint
    assert ann["subscribe_topics"].read_only_hint is False
    assert ann["subscribe_topics"].destructive_hint is False
    assert ann["publish_message"].destructive_hint is True
    assert ann["publish_message"].read_only_hint is False
    assert ann["publish_message"].idempotent_hint is False
    assert "age_s" in json.dumps(tools["read_points"].output_schema)
    assert set(tools["publish_message"].input_schema["required"]) == {"topic", "payload"}


# -- read_points: last values with their age ----------------------------------------------------------
async def test_read_points_gives_last_values_with_age(mqtt_site: SiteConfig, raw: RawClient, prefix: str) -> None:
    async with stdio_session(mqtt_site, "mqtt") as c:
        await eventually(lambda: connected(c))
        before = await values(c, ["zone1.temp"])
        assert before["zone1.temp"]["value"] is None
        assert "stale" in before["zone1.temp"]["reasons"]

        raw.publish(f"{prefix}/zones/zone1/temp", "21.5")
        raw.publish(f"{prefix}/zones/zone2/temp", "19.25")
        raw.publish(f"{prefix}/meter", json.dumps({"power": {"kw": 42.5}, "energy": 1234}))
        ids = ["zone1.temp", "zone2.temp", "meter.kw", "meter.kwh"]

        async def all_there() -> dict[str, Any] | None:
            got = await values(c, ids)
            return got if all(r["value"] is not None for r in got.values()) else None

        got = await eventually(all_there)
        assert {pid: r["value"] for pid, r in got.items()} == {
            "zone1.temp": 21.5, "zone2.temp": 19.25, "meter.kw": 42.5, "meter.kwh": 1234
        }
        assert got["zone1.temp"]["unit"] == "degC"
        assert got["zone1.temp"]["quality"] == "good"
        first_age = got["zone1.temp"]["age_s"]
        assert first_age is not None
        assert first_age >= 0
        # Nothing new arrives: the same sample is answered, older each time.
        await eventually(lambda: _older(c, "zone1.temp", first_age))


async def _older(c: Client, pid: str, age: float) -> bool:
    r = (await values(c, [pid]))[pid]
    return r["value"] == 21.5 and r["age_s"] > age


# -- write_point ---------------------------------------------------------------------------------------
async def test_write_point_publishes_command_and_audits(mqtt_site: SiteConfig, raw: RawClient, prefix: str) -> None:
    command = f"{prefix}/zones/zone1/sp/set"
    raw.subscribe(command)
    async with stdio_session(mqtt_site, "mqtt") as c:
        await eventually(lambda: connected(c))
        raw.publish(f"{prefix}/zones/zone1/sp", json.dumps({"value": 21.0}))
        await eventually(lambda: _has_value(c, "zone1.sp"))

        dry = await call(c, "write_point", {"point_id": "zone1.sp", "value": 23.5, "dry_run": True})
        assert dry["outcome"] == "dry_run"
        assert dry["previous_value"] == 21.0
        done = await call(c, "write_point", {"point_id": "zone1.sp", "value": 23.5, "reason": "test"})
        assert done["outcome"] == "accepted"
        assert done["previous_value"] == 21.0
        payloads = await eventually(lambda: raw.messages(command))
        assert [json.loads(p) for p in payloads] == [{"value": 23.5}]  # the dry run published nothing

        assert (await error_of(c, "write_point", {"point_id": "zone1.sp", "value": 40})).startswith("out_of_bounds:")
        assert (await error_of(c, "write_point", {"point_id": "zone1.temp", "value": 20})).startswith("not_writable:")
        assert (await error_of(c, "write_point", {"point_id": "nope.x", "value": 20})).startswith("unknown_point:")

    audit = read_audit(mqtt_site.audit_path("mqtt"))
    assert [(a.point_id, a.outcome, a.code) for a in audit] == [
        ("zone1.sp", WriteOutcome.DRY_RUN, None),
        ("zone1.sp", WriteOutcome.ACCEPTED, None),
        ("zone1.sp", WriteOutcome.REFUSED, "out_of_bounds"),
        ("zone1.temp", WriteOutcome.REFUSED, "not_writable"),
        ("nope.x", WriteOutcome.REFUSED, "unknown_point"),
    ]
    assert audit[1].requested_value == 23.5
    assert audit[1].reason == "test"
    assert audit[1].device_id == "iot-gw"


async def _has_value(c: Client, pid: str) -> bool:
    return (await values(c, [pid]))[pid]["value"] is not None


# -- subscribe_topics + read_messages ------------------------------------------------------------------
async def test_subscribe_wildcards_and_page_messages(mqtt_site: SiteConfig, raw: RawClient, prefix: str) -> None:
    async with stdio_session(mqtt_site, "mqtt") as c:
        await eventually(lambda: connected(c))
        bad = await error_of(c, "subscribe_topics", {"topics": [f"{prefix}/a#"]})
        assert bad.startswith("invalid_argument:")
        sub = await call(c, "subscribe_topics", {"topics": [f"{prefix}/lab/+/x", f"{prefix}/deep/#"], "qos": 1})
        assert set(sub["subscriptions"]) >= {f"{prefix}/lab/+/x", f"{prefix}/deep/#"}
        start = (await call(c, "read_messages", {"limit": 1000}))["next_since_id"]

        sent = [(f"{prefix}/lab/r{i}/x", f"m{i}") for i in range(5)] + [(f"{prefix}/deep/a/b/c", "deep")]
        for topic, payload in sent:
            raw.publish(topic, payload)
        raw.publish(f"{prefix}/lab/r1/y", "not matched")

        async def mine(since: int) -> list[dict[str, Any]]:
            page = await call(c, "read_messages", {"since_id": since, "limit": 1000})
            return [m for m in page["messages"] if m["topic"].startswith((f"{prefix}/lab", f"{prefix}/deep"))]

        got = await eventually(lambda: _at_least(mine(start), len(sent)))
        assert [(m["topic"], m["payload"]) for m in got] == sent
        assert all(m["qos"] == 1 and m["encoding"] == "utf-8" for m in got)

        # The cursor pages: two at a time, in order, nothing twice, nothing skipped.
        seen, since = [], start
        while True:
            page = await call(c, "read_messages", {"since_id": since, "limit": 2})
            assert len(page["messages"]) <= 2
            assert page["dropped"] == 0
            seen += [m["id"] for m in page["messages"]]
            if not page["more"]:
                break
            since = page["next_since_id"]
        assert seen == sorted(set(seen))
        assert {m["id"] for m in got} <= set(seen)
        assert (await error_of(c, "read_messages", {"limit": 0})).startswith("invalid_argument:")


async def _at_least(msgs: Any, n: int) -> list[dict[str, Any]] | None:
    got = await msgs
    return got if len(got) >= n else None


# -- publish_message -----------------------------------------------------------------------------------
async def test_publish_inside_and_outside_allow_list(mqtt_site: SiteConfig, raw: RawClient, prefix: str) -> None:
    allowed = f"{prefix}/out/lights"
    raw.subscribe(f"{prefix}/#")
    async with stdio_session(mqtt_site, "mqtt") as c:
        await eventually(lambda: connected(c))
        ok = await call(c, "publish_message", {"topic": allowed, "payload": "on", "qos": 1, "reason": "test"})
        assert ok["topic"] == allowed
        assert ok["size"] == 2
        assert ok["audit_id"]
        assert await eventually(lambda: raw.messages(allowed)) == [b"on"]

        refused = await error_of(c, "publish_message", {"topic": f"{prefix}/zones/zone1/sp/set", "payload": "30"})
        assert refused.startswith("not_allowed:")
        assert "audit" in refused
        wild = await error_of(c, "publish_message", {"topic": f"{prefix}/out/+", "payload": "x"})
        assert wild.startswith("invalid_argument:")
        big = await error_of(c, "publish_message", {"topic": allowed, "payload": "x" * 70_000})
        assert big.startswith("invalid_argument:")
        # A refusal is decided before any I/O: nothing reached the broker.
        await call(c, "publish_message", {"topic": f"{prefix}/out/marker", "payload": "end"})
        await eventually(lambda: raw.messages(f"{prefix}/out/marker"))
    assert raw.messages(f"{prefix}/zones/zone1/sp/set") == []
    assert raw.messages(f"{prefix}/out/+") == []

    audit = read_audit(mqtt_site.audit_path("mqtt"))
    assert [(a.point_id, a.outcome, a.code) for a in audit] == [
        (f"topic:{allowed}", WriteOutcome.ACCEPTED, None),
        (f"topic:{prefix}/zones/zone1/sp/set", WriteOutcome.REFUSED, "not_allowed"),
        (f"topic:{prefix}/out/+", WriteOutcome.REFUSED, "invalid_argument"),
        (f"topic:{allowed}", WriteOutcome.REFUSED, "invalid_argument"),
        (f"topic:{prefix}/out/marker", WriteOutcome.ACCEPTED, None),
    ]
    assert audit[0].reason == "test"
    assert "qos=1" in audit[0].message
    assert audit[0].device_id == "iot-gw"


# -- broker_info and a broker outage ----------------------------------------------------------------------
async def test_broker_down_keeps_last_values_then_recovers(
    mqtt_site: SiteConfig, mosquitto: Any, raw: RawClient, prefix: str
) -> None:
    async with stdio_session(mqtt_site, "mqtt") as c:
        await eventually(lambda: connected(c))
        (info,) = (await call(c, "broker_info"))["brokers"]
        assert info["broker"] == f"127.0.0.1:{mosquitto.port}"
        assert info["connected"] is True
        assert info["client_id"].startswith(mqtt_site.devices[0].connection.client_id)  # type: ignore[union-attr]
        assert f"{prefix}/zones/+/temp" in info["subscriptions"]

        raw.publish(f"{prefix}/zones/zone1/temp", "22.0")
        await eventually(lambda: _has_value(c, "zone1.temp"))
        raw.close()
        mosquitto.stop()

        await eventually(lambda: _disconnected(c))
        last = await values(c, ["zone1.temp"])
        assert last["zone1.temp"]["value"] == 22.0
        health = await call(c, "server_health")
        assert health["status"] == "degraded"

        mosquitto.start()
        await eventually(lambda: connected(c), limit_s=15)
        again = RawClient(mosquitto.port)
        try:
            again.publish(f"{prefix}/zones/zone1/temp", "23.0")
            await eventually(lambda: _value_is(c, "zone1.temp", 23.0))
        finally:
            again.close()
        (info,) = (await call(c, "broker_info"))["brokers"]
        assert info["reconnects"] >= 1


async def _disconnected(c: Client) -> bool:
    return not (await call(c, "broker_info"))["brokers"][0]["connected"]


async def _value_is(c: Client, pid: str, value: float) -> bool:
    return (await values(c, [pid]))[pid]["value"] == value


# -- the bounded buffer, in process ---------------------------------------------------------------------
async def test_read_messages_counts_what_the_bounded_buffer_dropped(
    mqtt_site: SiteConfig, raw: RawClient, prefix: str
) -> None:
    from eaio.protocol_adapters.mqtt import MqttAdapter
    from eaio.servers import build_server

    adapter = MqttAdapter(mqtt_site.devices_for("mqtt"), role="server", buffer_size=5)  # type: ignore[arg-type]
    server, _ = build_server("mqtt", mqtt_site, adapter)
    async with Client(server) as c:
        await eventually(lambda: connected(c))
        await call(c, "subscribe_topics", {"topics": [f"{prefix}/burst/#"], "qos": 1})
        for i in range(12):
            raw.publish(f"{prefix}/burst/{i}", str(i))
        await eventually(lambda: _last_payload_is(c, "11"))

        page = await call(c, "read_messages", {"since_id": 0, "limit": 100})
        assert [m["payload"] for m in page["messages"]] == ["7", "8", "9", "10", "11"]
        assert page["dropped"] == 7
        assert page["more"] is False
        assert page["next_since_id"] == page["messages"][-1]["id"]
        after = await call(c, "read_messages", {"since_id": page["next_since_id"]})
        assert after["messages"] == []
        assert after["dropped"] == 0
        assert after["next_since_id"] == page["next_since_id"]


async def _last_payload_is(c: Client, payload: str) -> bool:
    msgs = (await call(c, "read_messages", {"limit": 1000}))["messages"]
    return bool(msgs) and msgs[-1]["payload"] == payload
