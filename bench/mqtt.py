"""(d) MQTT: messages from a private Mosquitto into the store, against raw paho subscribe
throughput measured in the same run, with the same publisher process.

QoS 0. Case 1: one reading per message (target: EAIO >= 80 % of raw paho's messages/s).
Case 2: 50 readings per JSON message (target: >= 100,000 readings/s into SQLite).
Case 3: case 2 at QoS 1 with a persistent session, the way ingest runs at a site: each message is
acknowledged only once its readings are stored (raw paho acknowledges on receipt).

Ingest runs as a deployment with this load would: `ingest.batch_size` 50,000, so that a writer
that falls behind catches up in big transactions (each rewrites one index page per point, and
case 2 has 5,000 points). The publisher outpaces both subscribers; Mosquitto queues the rest, so
each rate is what the subscriber can take, measured to its last reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from eaio.broker import find_mosquitto, write_mosquitto_conf
from eaio.config import load_config
from eaio.pipeline.ingest import Ingest

from .common import free_port, tempdir, wait_port

TOPICS = 100
FIELDS = 50

# The publisher: connects, says "ready", waits for "go", publishes as fast as paho can, exits.
PUBLISHER = r"""
import json, sys, paho.mqtt.client as mqtt
port, n, fields, qos = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_queued_messages_set(0)
c.max_inflight_messages_set(1000)
c.connect("127.0.0.1", port)
c.loop_start()
print("ready", flush=True)
sys.stdin.readline()
topics = [f"bench/p{i}/v" for i in range(100)]
for i in range(n):
    if fields == 1:
        payload = str(i % 1000 + 0.5)
    else:
        payload = json.dumps({f"f{k}": i + k * 0.1 for k in range(fields)})
    info = c.publish(topics[i % 100], payload, qos=qos)
info.wait_for_publish(120)
c.loop_stop()
c.disconnect()
"""


@contextlib.contextmanager
def _broker(folder: Path) -> Iterator[int]:
    exe = find_mosquitto()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (Debian package 'mosquitto')")
    port = free_port()
    proc = subprocess.Popen([exe, "-c", str(write_mosquitto_conf(folder, port))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _publisher(port: int, n: int, fields: int, qos: int = 0) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(n), str(fields), str(qos)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _go(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None
    t0 = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return t0


def raw_paho(port: int, n: int, fields: int, timeout: float = 120, qos: int = 0) -> dict[str, float]:
    done = threading.Event()
    state = {"count": 0, "last": 0.0}

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        state["count"] += 1
        if state["count"] == n:
            state["last"] = time.perf_counter()
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw")
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("bench/+/v", qos=qos)
    subscribed.wait(10)
    try:
        with _publisher(port, n, fields, qos) as pub:
            t0 = _go(pub)
            done.wait(timeout)
    finally:
        sub.loop_stop()
        sub.disconnect()
    received = state["count"]
    elapsed = (state["last"] or time.perf_counter()) - t0
    return {"messages": received, "seconds": elapsed, "messages_per_s": received / elapsed,
            "readings_per_s": received * fields / elapsed}


def _site(tmp: Path, port: int, fields: int, qos: int = 0) -> Path:
    if fields == 1:
        sub = {"topic": "bench/+/v", "qos": qos, "format": "number", "point": "bench.{1}"}
        points = [{"id": f"bench.p{i}", "kind": "generic"} for i in range(TOPICS)]
    else:
        sub = {"topic": "bench/+/v", "qos": qos, "format": "json",
               "fields": {f"f{k}": f"bench.{{1}}.f{k}" for k in range(fields)}}
        points = [{"id": f"bench.p{i}.f{k}", "kind": "generic"} for i in range(TOPICS) for k in range(fields)]
    raw = {
        "site": {"id": "bench"},
        "data_dir": str(tmp / "data"),
        "devices": [{"id": "bench-broker", "protocol": "mqtt",
                     # QoS 1: a persistent session, so ingest acknowledges each message once stored.
                     "connection": {"host": "127.0.0.1", "port": port, "client_id": f"bench-q{qos}",
                                    "clean_session": qos == 0},
                     "subscriptions": [sub], "points": points}],
        "ingest": {"batch_size": 50_000},
    }
    path = tmp / f"site-{fields}-q{qos}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def eaio_ingest(tmp: Path, port: int, n: int, fields: int, timeout: float = 120, qos: int = 0) -> dict[str, float]:
    cfg = load_config(_site(tmp, port, fields, qos))
    want = n * fields

    async def run() -> dict[str, float]:
        # Entering Ingest returns once the adapter has its CONNACK and SUBACK: nothing is missed.
        async with Ingest(cfg) as ingest:
            with _publisher(port, n, fields, qos) as pub:
                t0 = _go(pub)
                stop = time.monotonic() + timeout
                stored, t1 = 0, time.perf_counter()
                # Until everything is stored or nothing more arrives for 3 s (QoS 0 may drop under
                # back-pressure); the rate is taken at the last reading stored.
                while stored < want and time.monotonic() < stop and time.perf_counter() - t1 < 3:
                    # Seldom, and the bare counter: stats() deep-copies, which would load the very
                    # event loop being measured.
                    await asyncio.sleep(0.05)
                    now_stored = ingest.readings_stored
                    if now_stored > stored:
                        stored, t1 = now_stored, time.perf_counter()
        return {"readings": stored, "lost": want - stored, "seconds": t1 - t0,
                "readings_per_s": stored / (t1 - t0), "messages_per_s": stored / fields / (t1 - t0)}

    return asyncio.run(run())


def run() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempdir() as tmp, _broker(tmp / "broker") as port:
        cases = (("one_reading_per_message", 100_000, 1, 0), ("fifty_readings_per_message", 10_000, FIELDS, 0),
                 ("fifty_readings_per_message_qos1_persistent", 10_000, FIELDS, 1))
        for name, n, fields, qos in cases:
            raw = raw_paho(port, n, fields, qos=qos)
            ours = eaio_ingest(tmp, port, n, fields, qos=qos)
            out[name] = {"messages": n, "readings_per_message": fields, "qos": qos, "raw_paho": raw, "eaio": ours,
                         "ratio_to_raw": ours["messages_per_s"] / raw["messages_per_s"]}
    out["targets"] = {"one_reading_per_message": "EAIO >= 80 % of raw paho",
                      "fifty_readings_per_message": ">= 100,000 readings/s"}
    return out
