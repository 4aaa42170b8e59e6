"""The MQTT adapter against a private Mosquitto, with a real paho publisher on the other side."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from eaio.errors import DeviceError
from eaio.models import DeadLetter, MqttDevice, Reading, ReadingBatch
from eaio.protocol_adapters import build_adapter
from eaio.protocol_adapters.mqtt import MqttAdapter

pytestmark = pytest.mark.anyio


def make_device(port: int, **connection: Any) -> MqttDevice:
    return MqttDevice.model_validate({
        "id": "iot-gw",
        "protocol": "mqtt",
        "connection": {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "timeout_s": 3,
                       "max_payload_bytes": 512, **connection},
        "subscriptions": [
            {"topic": "site/+/+/temp", "point": "{2}.temp"},
            {"topic": "env/#", "format": "json", "timestamp": "ts",
             "fields": {"t": "zone1.temp", "h": "zone1.hum", "c.ppm": "zone1.co2"}},
            {"topic": "meter/+", "format": "json", "point": "{1}.power", "path": "data.kw"},
            {"topic": "seq", "point": "seq.n"},
        ],
        "points": [
            {"id": "zone1.temp", "unit": "degC", "writable": True, "command": {"topic": "cmd/zone1/temp_sp"}},
            {"id": "zone2.temp", "unit": "degC"},
            {"id": "zone1.hum", "unit": "%RH"},
            {"id": "zone1.co2", "unit": "ppm"},
            {"id": "main.power", "unit": "kW", "writable": True,
             "command": {"topic": "cmd/main/limit", "format": "json", "field": "kw", "qos": 1}},
            {"id": "zone1.occ", "value_type": "bool", "writable": True,
             "command": {"topic": "cmd/zone1/occ", "qos": 0}},
            {"id": "seq.n"},
        ],
        "publish_prefixes": ["site/"],
    })


class Publisher:
    """A plain paho client for the test's side of the broker."""

    def __init__(self, port: int, client_id: str = "", clean: bool = True, tls: Any = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.received: list[paho.MQTTMessage] = []
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def listen(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), "no SUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def publisher(port: int, **kw: Any) -> Iterator[Publisher]:
    pub = Publisher(port, **kw)
    try:
        yield pub
    finally:
        pub.close()


async def until(cond: Callable[[], object], what: str, within: float = 10.0) -> None:
    """Poll ``cond`` until true; fail naming ``what`` after ``within`` seconds."""
    with anyio.move_on_after(within):
        while not cond():  # noqa: ASYNC110 - the condition is plain state, there is no event to wait on
            await anyio.sleep(0.01)
    assert cond(), f"timed out waiting for {what}"


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.dead: list[DeadLetter] = []
        self.batches = 0

    async def on_readings(self, batch: ReadingBatch) -> None:
        self.batches += 1
        self.readings.extend(batch.readings())

    async def on_dead(self, letter: DeadLetter) -> None:
        self.dead.append(letter)

    def last(self) -> dict[str, object]:
        return {r.point_id: r.value for r in self.readings}


async def test_wildcards_formats_and_last_values(mosquitto: Any) -> None:
    adapter = build_adapter("mqtt", [make_device(mosquitto.port)], role="test")
    assert isinstance(adapter, MqttAdapter)
    got = Collector()
    async with adapter:
        (before,) = await adapter.read([adapter.point("zone1.temp")])
        assert (before.value, before.quality, before.reasons) == (None, "uncertain", ["stale"])
        assert before.detail == "no_data: nothing received for zone1.temp yet"
        await adapter.subscribe(adapter.points(), got.on_readings, got.on_dead)
        with publisher(mosquitto.port) as pub:
            pub.send("site/b1/zone2/temp", "19.25")  # '+' captures: {2} = zone2
            pub.send("env/floor1/room7", json.dumps({"t": 22.5, "h": 41, "c": {"ppm": 650}, "ts": 1735729200000}))
            pub.send("meter/main", b'{"data": {"kw": 87.5}}')
            await until(lambda: len(got.readings) >= 5, "five readings")
        assert got.last() == {"zone2.temp": 19.25, "zone1.temp": 22.5, "zone1.hum": 41, "zone1.co2": 650,
                              "main.power": 87.5}
        env = next(r for r in got.readings if r.point_id == "zone1.co2")
        assert (env.unit, env.ts.isoformat(), env.device_id) == ("ppm", "2025-01-01T11:00:00+00:00", "iot-gw")
        read = {r.point_id: r for r in await adapter.read(adapter.points())}
        assert read["zone1.temp"].value == 22.5
        assert read["zone1.temp"].quality == "good"
        assert read["seq.n"].detail == "no_data: nothing received for seq.n yet"
        (unknown,) = await adapter.read([make_device(1).points[0].model_copy(update={"id": "nope.x"})])
        assert (unknown.quality, unknown.reasons) == ("bad", ["unknown_point"])
        (health,) = adapter.health()
        assert health["connected"] is True
        assert health["received"] == 3
        assert health["readings"] == 5
        assert health["subscriptions"] == ["site/+/+/temp", "env/#", "meter/+", "seq"]
        assert got.dead == []


async def test_bad_payloads_become_dead_letters_and_the_stream_goes_on(mosquitto: Any) -> None:
    got = Collector()
    async with MqttAdapter([make_device(mosquitto.port)], role="test") as adapter:
        await adapter.subscribe(adapter.points(), got.on_readings, got.on_dead)
        bad = [
            ("site/b1/zone1/temp", b"warm", "malformed"),
            ("site/b1/zone1/temp", b"\xff\xfe", "malformed"),
            ("meter/main", b"{oops", "malformed"),
            ("meter/main", b'{"data": {}}', "missing_field"),
            ("meter/main", b'{"data": {"kw": "lots"}}', "not_a_number"),
            ("env/x", b'{"t": 1, "h": 2, "c": {"ppm": 3}, "ts": "soon"}', "bad_timestamp"),
            ("site/b1/zone9/temp", b"20", "unmapped"),
            ("meter/main", b'{"data": {"kw": 1}, "pad": "' + b"x" * 600 + b'"}', "too_large"),
        ]
        with publisher(mosquitto.port) as pub:
            for topic, payload, _ in bad:
                pub.send(topic, payload)
            pub.send("site/b1/zone1/temp", b"23.5")  # and the adapter keeps working
            await until(lambda: len(got.dead) == len(bad) and got.readings, "dead letters and a good reading")
        assert [(d.topic, d.reason) for d in got.dead] == [(t, r) for t, _, r in bad]
        assert [d.payload for d in got.dead[:-1]] == [p for _, p, _ in bad[:-1]]
        assert got.dead[-1].payload == bad[-1][1][:512]  # too large: the first max_payload_bytes are kept
        assert all(d.source == "mqtt:iot-gw" and d.detail for d in got.dead)
        assert got.last() == {"zone1.temp": 23.5}
        assert adapter.dead_letters() == len(bad)
        assert adapter.health()[0]["dead_letters"] == len(bad)


async def test_write_publishes_to_the_command_topic(mosquitto: Any) -> None:
    with publisher(mosquitto.port) as raw:
        raw.listen("cmd/#")
        async with MqttAdapter([make_device(mosquitto.port)], role="test") as adapter:
            await adapter.write(adapter.point("zone1.temp"), 21.5)  # qos 1: returns after the PUBACK
            await adapter.write(adapter.point("main.power"), 120)
            await adapter.write(adapter.point("zone1.occ"), True)
            await until(lambda: len(raw.received) == 3, "three commands")
            assert [(m.topic, m.payload, m.qos) for m in raw.received] == [
                ("cmd/zone1/temp_sp", b"21.5", 1), ("cmd/main/limit", b'{"kw": 120}', 1), ("cmd/zone1/occ", b"true", 0),
            ]
            refused = [("zone2.temp", 20, "not_writable"), ("zone1.temp", float("nan"), "invalid_argument"),
                       ("zone1.temp", True, "invalid_argument"), ("zone1.occ", 2, "invalid_argument")]
            for point_id, value, code in refused:
                with pytest.raises(DeviceError) as err:
                    await adapter.write(adapter.point(point_id), value)
                assert err.value.code == code


async def test_raw_publish_subscribe_and_message_cursor(mosquitto: Any) -> None:
    async with MqttAdapter([make_device(mosquitto.port)], role="test", buffer_size=3) as adapter:
        await adapter.subscribe_topics("iot-gw", ["raw/+/x", "raw/bin"], qos=1)
        await adapter.publish("iot-gw", "raw/a/x", b"hello", qos=1)
        await adapter.publish("iot-gw", "raw/bin", b"\x00\xff", qos=1, retain=False)
        await until(lambda: len(adapter.messages()) == 2, "two raw messages")
        first, second = adapter.messages()
        assert (first["id"], first["topic"], first["payload"], first["encoding"], first["qos"]) == (
            1, "raw/a/x", "hello", "utf-8", 1)
        assert (second["payload"], second["encoding"]) == ("AP8=", "base64")
        assert adapter.messages(since_id=1) == [second]
        for i in range(3):
            await adapter.publish("iot-gw", "raw/a/x", str(i).encode(), qos=1)
        await until(lambda: adapter.request_count() == 5, "five messages")
        # A bounded buffer: the oldest went, ids keep counting, the cursor still works.
        assert [m["id"] for m in adapter.messages()] == [3, 4, 5]
        assert [m["payload"] for m in adapter.messages(since_id=3, limit=1)] == ["1"]
        assert adapter.messages(since_id=5) == []
        assert adapter.dead_letters() == 0  # raw-only topics are not dead letters
        assert "raw/+/x" in adapter.health()[0]["subscriptions"]
        for call in (adapter.publish("iot-gw", "raw/+/x", b""), adapter.subscribe_topics("iot-gw", ["a/#/b"]),
                     adapter.publish("nobody", "a", b"")):
            with pytest.raises(DeviceError) as err:
                await call
            assert err.value.code == "invalid_argument"


async def test_broker_down_at_start_then_up(mosquitto: Any) -> None:
    mosquitto.stop()
    got = Collector()
    async with MqttAdapter([make_device(mosquitto.port)], role="test") as adapter:  # does not raise
        (health,) = adapter.health()
        assert health["connected"] is False
        assert str(health["last_error"]).startswith("device_offline: cannot connect")
        with pytest.raises(DeviceError) as err:
            await adapter.write(adapter.point("zone1.temp"), 20)
        assert err.value.code == "device_offline"
        await adapter.subscribe(adapter.points(), got.on_readings)
        await anyio.to_thread.run_sync(mosquitto.start)
        await until(lambda: adapter.health()[0]["subscribed"], "the adapter to connect and subscribe")
        with publisher(mosquitto.port) as pub:
            pub.send("seq", b"1")
            await until(lambda: got.readings, "a reading")


async def test_broker_restart_mid_stream_loses_nothing(mosquitto: Any) -> None:
    """QoS 1 + persistent sessions on both sides: every sequence number arrives across a restart."""
    total = 2000
    got = Collector()
    device = make_device(mosquitto.port, client_id="restart", clean_session=False)
    async with MqttAdapter([device], role="test") as adapter:
        await adapter.subscribe(adapter.points(), got.on_readings)
        pub = Publisher(mosquitto.port, client_id="restart-pub", clean=False)
        sent = 0

        def stream() -> None:
            nonlocal sent
            for n in range(total):
                pub.client.publish("seq", str(n), qos=1)  # queued by paho while the broker is away
                sent = n + 1
                time.sleep(0.0005)  # pace the stream so that the restart falls inside it

        thread = threading.Thread(target=stream)
        thread.start()
        try:
            await until(lambda: len(got.readings) >= total // 5, "a fifth of the stream")
            await anyio.to_thread.run_sync(mosquitto.restart)
            restarted_at = sent
            await until(lambda: len({r.value for r in got.readings}) == total, "every sequence number", within=60)
        finally:
            thread.join()
            pub.close()
        unique = {r.value for r in got.readings}
        assert unique == set(range(total))
        assert 0 < restarted_at < total, "the restart happened in the middle of the stream"
        (health,) = adapter.health()
        assert health["reconnects"] >= 1
        assert health["session_present"] is True
        print(f"restart after {restarted_at} sent: {len(got.readings)} delivered, "
              f"{len(got.readings) - total} duplicates, {got.batches} batches")


async def test_tls_with_client_certificate(mosquitto_tls: Any) -> None:
    certs = mosquitto_tls.certs
    tls = {"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)}
    got = Collector()
    async with MqttAdapter([make_device(mosquitto_tls.tls_port, tls=tls)], role="test") as adapter:
        assert adapter.health()[0]["subscribed"] is True  # __aenter__ waits for the SUBACK
        await adapter.subscribe(adapter.points(), got.on_readings)
        with publisher(mosquitto_tls.port) as pub:  # the plain listener of the same broker
            pub.send("seq", b"42")
            await until(lambda: got.readings, "a reading over TLS")
        assert got.last() == {"seq.n": 42}
        await adapter.write(adapter.point("main.power"), 5)  # PUBACK over TLS


async def test_tls_without_client_certificate_is_refused_and_reported(mosquitto_tls: Any) -> None:
    tls = {"ca": str(mosquitto_tls.certs.ca)}
    async with MqttAdapter([make_device(mosquitto_tls.tls_port, tls=tls, timeout_s=1)], role="test") as adapter:
        await until(lambda: adapter.health()[0]["last_error"], "the refusal in health")
        (health,) = adapter.health()
        assert health["connected"] is False
        assert str(health["last_error"]).startswith("device_offline")
        assert "certificate" in str(health["last_error"]).lower()
    bad_ca = {"ca": "/nonexistent/ca.crt"}
    async with MqttAdapter([make_device(mosquitto_tls.tls_port, tls=bad_ca)], role="test") as adapter:
        (health,) = adapter.health()
        assert health["connected"] is False
        assert str(health["last_error"]).startswith("tls_error")


async def test_a_burst_of_small_messages_arrives_whole_and_in_order(mosquitto: Any) -> None:
    """Many packets per socket read: the buffered socket and the burst reads keep every one."""
    total = 3000
    got = Collector()
    async with MqttAdapter([make_device(mosquitto.port)], role="ingest") as adapter:
        await adapter.subscribe(adapter.points(), got.on_readings)
        with publisher(mosquitto.port) as pub:
            infos = [pub.client.publish("seq", str(n), qos=1) for n in range(total)]
            for info in infos:
                info.wait_for_publish(10)
            await until(lambda: len(got.readings) >= total, "every message", within=30)
        assert [r.value for r in got.readings] == list(range(total))
        assert got.batches < total // 10, "messages are handed over in batches, not one by one"
        # The ingest role keeps neither raw messages nor last values: nobody asks it for them.
        assert adapter.messages() == []
        (last,) = await adapter.read([adapter.point("seq.n")])
        assert last.detail == "no_data: nothing received for seq.n yet"


def test_buffered_socket_serves_small_reads_from_one_system_call() -> None:
    import socket

    from eaio.protocol_adapters.mqtt import _BufferedSocket

    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        sock = _BufferedSocket(b)
        with pytest.raises(BlockingIOError):  # nothing there: paho sees what a plain socket gives
            sock.recv(1)
        a.sendall(b"\x30\x05hello" + b"\x30\x02hi")
        assert sock.recv(1) == b"\x30"
        assert sock.pending() == 10
        assert [sock.recv(1), sock.recv(5)] == [b"\x05", b"hello"]
        assert sock.recv(100) == b"\x30\x02hi"  # never more than was buffered, never blocks
        assert sock.pending() == 0
        assert sock.fileno() == b.fileno()  # the rest is the real socket's
        a.close()
        assert sock.recv(1) == b""  # the peer closed
    finally:
        a.close()
        b.close()


async def test_ingest_role_acknowledges_a_message_only_when_the_subscriber_says_so(mosquitto: Any) -> None:
    """Manual acks (ingest role, persistent session): messages the subscriber did not acknowledge,
    the broker sends again to the next client with the same id; acknowledged ones it does not."""
    device = make_device(mosquitto.port, client_id="acks", clean_session=False, timeout_s=1)

    async def run(publish: list[tuple[str, int]], want: int, acknowledge: bool) -> tuple[list[object], list[Any]]:
        got, acks = Collector(), []

        async def on_readings(batch: ReadingBatch, ack: Callable[[], None] | None) -> None:
            acks.append(ack)
            await got.on_readings(batch)
            if acknowledge and ack is not None:
                ack()

        adapter = MqttAdapter([device], role="ingest")
        # Before connecting, as ingest does: what the broker kept comes right after the CONNACK.
        await adapter.subscribe(adapter.points(), on_readings, acks=True)
        async with adapter:
            with publisher(mosquitto.port) as pub:
                for payload, qos in publish:
                    pub.send("seq", payload, qos=qos)
            await until(lambda: len(got.readings) >= want, f"{want} readings")
            unacked = 0 if acknowledge else want
            await until(lambda: adapter.health()[0]["unacked"] == unacked, f"{unacked} unacknowledged")
        return [r.value for r in got.readings], acks

    values, acks = await run([(str(n), 1) for n in range(5)], 5, acknowledge=False)
    assert values == [0, 1, 2, 3, 4]
    assert acks
    assert all(a is not None for a in acks)
    # Closed without acknowledging: the broker still holds all five for this session.
    values, acks = await run([], 5, acknowledge=True)
    assert values == [0, 1, 2, 3, 4]
    # Acknowledged: a new session start brings only what is new. A QoS 0 message needs no ack.
    values, acks = await run([("99", 0)], 1, acknowledge=True)
    assert values == [99]
    assert acks == [None]


async def test_a_failing_subscriber_does_not_hold_messages_unacknowledged(mosquitto: Any) -> None:
    device = make_device(mosquitto.port, client_id="acks-fail", clean_session=False)

    calls: list[Callable[[], None] | None] = []

    async def fails(_batch: ReadingBatch, ack: Callable[[], None] | None) -> None:
        calls.append(ack)
        raise RuntimeError("subscriber bug")

    adapter = MqttAdapter([device], role="ingest")
    await adapter.subscribe(adapter.points(), fails, acks=True)
    async with adapter:
        with publisher(mosquitto.port) as pub:
            pub.send("seq", "1")
        await until(lambda: len(calls) == 1, "the message handed to the subscriber")
        assert calls[0] is not None  # a QoS 1 message waiting for its acknowledgement
        # Its batch is dropped (logged) and counts as handled: acknowledged, not held for good.
        await until(lambda: adapter.health()[0]["unacked"] == 0, "the message acknowledged")
