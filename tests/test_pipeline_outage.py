"""Store-and-forward against real servers: an InfluxDB outage and a crash of ingest.

A publisher thread sends QoS 1 JSON messages through a private Mosquitto, each stamped with a
unique millisecond timestamp and carrying three points (660 readings/s); ingest (MQTT adapter ->
validator -> durable buffer -> private influxd 1.6) stores them. Counting in InfluxDB proves
"exactly once": every published (point, time) is there, and nothing else, after an outage of
InfluxDB and after a ``kill -9`` of ingest.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import SiteConfig, load_config
from eaio.pipeline import Ingest, StoreHealth
from eaio.pipeline.buffer import read_outbox
from helpers import until

pytestmark = pytest.mark.anyio

FIELDS = ("a", "b", "c")
POINTS = tuple(f"load.gw.{f}" for f in FIELDS)
RATE = 220  # messages/s, 3 readings each: 660 readings/s
OUTAGE_S = 30.0


def site_file(tmp_path: Path, mqtt_port: int, influx_url: str, client_id: str) -> Path:
    raw = {
        "site": {"id": "outage"},
        "data_dir": str(tmp_path / "data"),
        "devices": [{
            "id": "load-gw", "protocol": "mqtt",
            # A persistent session (the default): the broker keeps what ingest did not acknowledge.
            "connection": {"host": "127.0.0.1", "port": mqtt_port, "client_id": client_id},
            "subscriptions": [{"topic": "load/+/v", "qos": 1, "format": "json", "timestamp": "t",
                               "fields": {f: f"load.{{1}}.{f}" for f in FIELDS}}],
            "points": [{"id": p} for p in POINTS],
        }],
        "storage": {"backend": "influxdb", "influxdb": {"version": 1, "url": influx_url, "timeout_s": 5},
                    "buffer": {"retry_initial_s": 0.2, "retry_max_s": 2.0}},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Publisher(threading.Thread):
    """Publishes RATE messages/s on load/gw/v for ``seconds``, then waits for every PUBACK."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(name="outage-publisher", daemon=True)
        self.port, self.seconds = port, seconds
        self.sent_ms: list[int] = []  # each message's timestamp, in order
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"outage-pub-{self.port}")
        client.max_queued_messages_set(0)
        try:
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            infos = []
            start, last = time.monotonic(), 0
            while (elapsed := time.monotonic() - start) < self.seconds:
                while len(self.sent_ms) < int(elapsed * RATE) + 1:
                    t = max(last + 1, time.time_ns() // 1_000_000)  # unique, increasing
                    last, k = t, len(self.sent_ms)
                    infos.append(client.publish("load/gw/v", json.dumps({"t": t, "a": k, "b": -k, "c": k / 2}), qos=1))
                    self.sent_ms.append(t)
                time.sleep(0.005)  # pacing the load, not waiting for an outcome
            for info in infos:
                info.wait_for_publish(30)
        except BaseException as err:
            self.error = err
        finally:
            client.disconnect()
            client.loop_stop()
            self.done.set()

    def expected(self) -> set[tuple[str, int]]:
        """Every (point, microseconds) published."""
        return {(p, t * 1000) for t in self.sent_ms for p in POINTS}


def open_session(port: int, client_id: str) -> None:
    """Create ingest's persistent session at the broker before anything is published, so the broker
    keeps every message for it from the first one on, however long ingest takes to start."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-load-gw-ingest", clean_session=False)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("load/+/v", qos=1)
        assert subscribed.wait(10), "no SUBACK from the broker"
    finally:
        client.disconnect()
        client.loop_stop()


def influx_rows(influxd: Any) -> list[tuple[str, int]]:
    """Every (point, time in microseconds) in InfluxDB, duplicates included if there were any."""
    out: list[tuple[str, int]] = []
    for res in influxd.query("SELECT value FROM readings GROUP BY point").get("results", []):
        assert "error" not in res, res
        for series in res.get("series", []):
            out += [(series["tags"]["point"], int(row[0])) for row in series["values"]]
    return out


async def in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(fn, *args)


async def test_an_influxdb_outage_of_30_s_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, mosquitto: Any, influxd: Any
) -> None:
    cfg: SiteConfig = load_config(site_file(tmp_path, mosquitto.port, influxd.url, "outage"))
    open_session(mosquitto.port, "outage")
    pub = Publisher(mosquitto.port, seconds=45)
    seen: list[StoreHealth] = []

    async def health() -> StoreHealth:
        h = ingest.stats().store
        assert h is not None
        seen.append(h)
        return h

    async with Ingest(cfg) as ingest:
        pub.start()
        await until(lambda: in_thread(lambda: influxd.count() >= 2_000), "readings in InfluxDB before the outage",
                    within=30)
        await in_thread(influxd.stop)
        stopped = time.monotonic()
        down = await until(lambda: _if(health(), lambda h: h.ok is False), "the store's health to show the outage")
        assert down.last_error
        assert "cannot reach" in down.last_error
        # The outage itself: a scenario length, during which the buffer must take everything.
        while time.monotonic() - stopped < OUTAGE_S:
            await health()
            await anyio.sleep(0.5)
        during = await health()
        assert during.ok is False
        assert during.buffered > 5_000  # readings kept arriving and were kept
        await in_thread(influxd.start)  # the same data directory

        await until(lambda: in_thread(pub.done.is_set), "the publisher to finish", within=40)
        assert pub.error is None, pub.error
        want = len(pub.sent_ms) * len(POINTS)
        assert want >= 45 * RATE * len(POINTS) * 0.9  # at least ~600 readings/s were offered

        async def all_through() -> bool:
            h = await health()
            return ingest.readings_stored >= want and h.buffered == 0 and ingest.stats().backlog == 0

        await until(all_through, "every reading through the buffer into InfluxDB", within=40)
        after = await health()

    rows = await in_thread(influx_rows, influxd)
    assert len(rows) == want  # no loss, no duplicate ...
    assert set(rows) == pub.expected()  # ... and exactly the published (point, time) pairs
    assert await in_thread(influxd.count) == want
    assert ingest.readings_stored == want
    assert ingest.stats().dropped == 0
    assert after.ok is True
    assert after.retries > 0
    assert after.forwarded == want
    assert after.parked == 0
    assert any(h.ok is False for h in seen)
    assert max(h.buffered for h in seen) > 5_000


def test_kill_9_of_ingest_loses_nothing(tmp_path: Path, mosquitto: Any, influxd: Any) -> None:
    """``eaio ingest`` killed with SIGKILL while InfluxDB is down (so the buffer holds thousands of
    readings), then started again: every published reading reaches InfluxDB, exactly once.

    Ingest acknowledges a QoS 1 message to the broker only once its readings are committed to the
    buffer file, so what was only in memory at the kill (the adapter's pending batch, ingest's
    queue) is still the broker's, and it sends it again to the restarted ingest. A message in the
    buffer whose acknowledgement the kill cut off comes twice: InfluxDB keeps one point per series
    and time, so it is still there once."""
    path = site_file(tmp_path, mosquitto.port, influxd.url, "crash")
    cfg = load_config(path)
    buffer = cfg.buffer_path()
    open_session(mosquitto.port, "crash")
    pub = Publisher(mosquitto.port, seconds=25)
    log1, log2 = tmp_path / "ingest-1.log", tmp_path / "ingest-2.log"
    procs: list[subprocess.Popen[bytes]] = []

    def start_ingest(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "eaio", "ingest", "--config", str(path)],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs.append(proc)
        return proc

    try:
        first = start_ingest(log1)
        pub.start()
        wait(lambda: influxd.count() > 0, "the first readings in InfluxDB", 30, first, log1)
        influxd.stop()  # the buffer now keeps everything
        wait(lambda: outbox_count(buffer) >= 3_000, "3,000 readings in the buffer", 30, first, log1)
        first.kill()  # SIGKILL: no shutdown, no last flush, no checkpoint
        first.wait()
        snapshot = set(outbox_rows(buffer))  # what had entered the buffer
        assert len(snapshot) >= 3_000

        influxd.start()
        second = start_ingest(log2)
        assert pub.done.wait(60), "the publisher did not finish"
        assert pub.error is None, pub.error
        last_us = pub.sent_ms[-1] * 1000
        # Messages of one topic arrive in order, and ingest keeps that order into the buffer and
        # out of it: once the last message is in InfluxDB and the buffer is empty, all that will
        # ever arrive has.
        wait(lambda: points_at(influxd, last_us) == len(POINTS) and outbox_count(buffer) == 0,
             "the last message in InfluxDB and an empty buffer", 60, second, log2)
        second.terminate()
        assert second.wait(30) == 0, log2.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pub.done.wait(60)

    rows = influx_rows(influxd)
    got, published = set(rows), pub.expected()
    assert len(rows) == len(got)  # no duplicate
    assert snapshot <= got, f"{len(snapshot - got)} readings that had entered the buffer are missing"
    missing = sorted(published - got)
    assert not missing, (f"{len(missing)} of {len(published)} published readings lost: {missing[:5]}..; buffer at the "
                         f"kill {min(t for _, t in snapshot)}..{max(t for _, t in snapshot)}")
    assert got == published  # every published reading, and nothing else
    print(f"\nkill -9: {len(snapshot)} readings in the buffer at the kill; all {len(published)} published readings "
          "in InfluxDB once")


# -- helpers --------------------------------------------------------------------------------------

def wait(check: Any, what: str, within: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``check()`` is true; fail naming ``what`` (with ingest's log) after ``within`` s or if it exits."""
    deadline = time.monotonic() + within
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"ingest exited with {proc.returncode} while waiting for {what}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}: {log.read_text()[-3000:]}")
        time.sleep(0.1)


def points_at(influxd: Any, us: int) -> int:
    """How many readings InfluxDB holds at exactly this time (microseconds)."""
    q = f"SELECT count(value) FROM readings WHERE time = {us * 1000}"  # InfluxQL integers are nanoseconds
    series = [s for res in influxd.query(q).get("results", []) for s in res.get("series", [])]
    return int(series[0]["values"][0][1]) if series else 0


def outbox_count(path: Path) -> int:
    """Readings in the buffer file's outbox (0 before ingest created it)."""
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        try:
            return int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def outbox_rows(path: Path) -> list[tuple[str, int]]:
    """Every (point, ts) waiting in the buffer file."""
    return [(p, t) for _, b in read_outbox(path) for p, t in zip(b.point_id, b.ts_us, strict=True)]


async def _if(value: Any, cond: Any) -> Any:
    got = await value
    return got if cond(got) else None
