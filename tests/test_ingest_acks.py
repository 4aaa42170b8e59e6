"""Ingest acknowledges an MQTT QoS 1 message only once its readings are stored (or dropped).

Through a private Mosquitto with a persistent session: what ingest did not store, the broker
sends again to the next ingest with the same client id; what it stored, it does not. The
bookkeeping (acks in order, after the write, and for readings the bounded backlog drops) is also
checked on its own, with stores that refuse or hold writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from eaio.config import SiteConfig
from eaio.errors import StoreError
from eaio.models import Reading, ReadingBatch, to_us, utcnow
from eaio.pipeline import SqliteStore
from eaio.pipeline.ingest import Ingest
from helpers import until

pytestmark = pytest.mark.anyio

DEVICE = "acks-gw"
FIELDS = ("a", "b")


def site(tmp_path: Path, port: int | None, client_id: str = "acks") -> SiteConfig:
    devices = [] if port is None else [{
        "id": DEVICE, "protocol": "mqtt",
        # A persistent session (the default). timeout_s bounds how long a close waits for acks.
        "connection": {"host": "127.0.0.1", "port": port, "client_id": client_id, "timeout_s": 1},
        "subscriptions": [{"topic": "acks/+/v", "qos": 1, "format": "json", "timestamp": "t",
                           "fields": {f: f"acks.{{1}}.{f}" for f in FIELDS}}],
        "points": [{"id": f"acks.gw.{f}"} for f in FIELDS],
    }]
    return SiteConfig.model_validate({"site": {"id": "acks"}, "data_dir": str(tmp_path / "data"),
                                      "devices": devices, "ingest": {"flush_interval_s": 0.05}})


def publish(port: int, payloads: Sequence[bytes]) -> None:
    """QoS 1, each acknowledged by the broker before this returns."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="acks-pub")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for info in [client.publish("acks/gw/v", p, qos=1) for p in payloads]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def messages(first_ms: int, n: int) -> list[bytes]:
    return [json.dumps({"t": first_ms + k, "a": k, "b": -k}).encode() for k in range(n)]


def stored(cfg: SiteConfig) -> list[tuple[str, int]]:
    """Every (point, ts) in the SQLite file, duplicates included."""
    with sqlite3.connect(cfg.sqlite_path()) as conn:
        return [(p, t) for p, t in conn.execute("SELECT point_id, ts_us FROM reading_rows")]


def dead_letters(cfg: SiteConfig) -> int:
    with sqlite3.connect(cfg.sqlite_path()) as conn:
        return int(conn.execute("SELECT count(*) FROM dead_letter").fetchone()[0])


def unacked(ingest: Ingest) -> int:
    return sum(int(h["unacked"]) for h in ingest._adapters["mqtt"].health())  # type: ignore[call-overload]


class RefusingStore(SqliteStore):
    """A SQLite store whose writes fail (retryable) while ``refuse`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refuse = True
        self.refused = 0

    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        if self.refuse:
            self.refused += 1
            raise StoreError("refused by the test", retryable=True)
        return await super().write(readings)


class HeldStore(SqliteStore):
    """A SQLite store whose writes wait for ``release``; ``log`` records what it stored, in order."""

    def __init__(self, path: Path, log: list[tuple[str, int]]) -> None:
        super().__init__(path)
        self.release = asyncio.Event()
        self.waiting = 0
        self.log = log

    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        self.waiting += 1
        await self.release.wait()
        n = await super().write(readings)
        self.log.append(("stored", n))
        return n

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Writes wait inside; released on the way out whatever happens, so a failing test's
        ingest can still make its last flush and close."""
        try:
            yield
        finally:
            self.release.set()


async def test_what_was_not_stored_is_sent_again_to_the_next_ingest(tmp_path: Path, mosquitto: Any) -> None:
    cfg = site(tmp_path, mosquitto.port)
    sent = messages(1_700_000_000_000, 20)
    async with RefusingStore(tmp_path / "refusing.db") as refusing, Ingest(cfg, store=refusing) as first:
        publish(mosquitto.port, sent)
        await until(lambda: _true(first.stats().devices[DEVICE].pushed == 40 and refusing.refused > 0),
                    "40 readings received, and the store refusing them")
        assert unacked(first) == 20  # received, validated, queued: and not acknowledged
    assert first.readings_stored == 0

    # Killed or closed with nothing stored: the broker hands all of it to the next ingest.
    async with Ingest(cfg) as second:
        await until(lambda: _true(second.readings_stored >= 40), "the 20 messages again")
        await until(lambda: _true(unacked(second) == 0), "their acknowledgements")
    rows = stored(cfg)
    assert len(rows) == 40
    assert set(rows) == {(f"acks.gw.{f}", (1_700_000_000_000 + k) * 1000) for k in range(20) for f in FIELDS}


async def test_what_was_stored_is_not_sent_again(tmp_path: Path, mosquitto: Any) -> None:
    cfg = site(tmp_path, mosquitto.port)
    async with Ingest(cfg) as first:
        publish(mosquitto.port, [*messages(1_700_000_000_000, 20), b"not json"])
        await until(lambda: _true(first.readings_stored == 40 and first.stats().dead_letters == 1),
                    "40 readings and a dead letter stored")
        await until(lambda: _true(unacked(first) == 0), "every message acknowledged")

    async with Ingest(cfg) as second:
        # Messages of one topic come in order, and the broker sends what it kept first: once the
        # marker is stored, anything redelivered would have been too.
        publish(mosquitto.port, messages(1_800_000_000_000, 1))
        await until(lambda: _true(second.readings_stored >= 2), "the marker message")
        stats = second.stats()
    assert stats.devices[DEVICE].pushed == 2
    assert stats.dead_letters == 0
    assert len(stored(cfg)) == 42  # nothing twice
    assert dead_letters(cfg) == 1


async def test_a_message_is_acknowledged_after_its_readings_are_written(tmp_path: Path, mosquitto: Any) -> None:
    cfg = site(tmp_path, mosquitto.port)
    log: list[tuple[str, int]] = []
    async with HeldStore(tmp_path / "held.db", log) as store, Ingest(cfg, store=store) as ingest, store.held():
        publish(mosquitto.port, messages(1_700_000_000_000, 5))
        await until(lambda: _true(ingest.stats().devices[DEVICE].pushed == 10 and store.waiting > 0),
                    "the readings received and a write waiting")
        assert unacked(ingest) == 5  # the write has not returned
        store.release.set()
        await until(lambda: _true(unacked(ingest) == 0), "the acknowledgements once the write returned")
        assert ingest.readings_stored == 10


async def test_acks_fire_in_order_once_their_readings_left_the_backlog(tmp_path: Path) -> None:
    cfg = site(tmp_path, None)
    log: list[tuple[str, int]] = []
    async with HeldStore(tmp_path / "held.db", log) as store, Ingest(cfg, store=store) as ingest, store.held():
        await ingest._on_pushed(batch(60), lambda: log.append(("ack", 60)))
        await ingest._on_pushed(batch(40), lambda: log.append(("ack", 100)))
        await until(lambda: _true(store.waiting > 0), "a write waiting")
        assert log == []  # nothing acknowledged before its write returns
        store.release.set()
        await until(lambda: _true(len([e for e in log if e[0] == "ack"]) == 2), "both acks")
    # Each ack comes after the writes that stored every reading up to its batch, and in order.
    written = 0
    for kind, n in log:
        if kind == "stored":
            written += n
        else:
            assert written >= n, log
    assert [n for kind, n in log if kind == "ack"] == [60, 100]


async def test_readings_dropped_by_the_full_backlog_are_acknowledged(tmp_path: Path) -> None:
    """Lost and counted in stats().dropped: their messages must not come back forever."""
    cfg = site(tmp_path, None)
    acked: list[int] = []
    async with RefusingStore(tmp_path / "refusing.db") as store, \
            Ingest(cfg, store=store, backlog_limit=100) as ingest:
        await ingest._on_pushed(batch(60), lambda: acked.append(60))
        await until(lambda: _true(store.refused > 0), "the store refusing a write")
        assert acked == []
        ingest._enqueue(batch(100, first_ms=1_800_000_000_000))  # as a poll would: pushes the oldest out
        await until(lambda: _true(acked == [60]), "the dropped batch acknowledged")
        assert ingest.stats().dropped == 60
        assert ingest.readings_stored == 0


def batch(n: int, first_ms: int = 1_700_000_000_000) -> ReadingBatch:
    b = ReadingBatch()
    now = to_us(utcnow())
    for k in range(n):
        b.append("acks.gw.a", float(k), min(now, (first_ms + k) * 1000))
    return b


async def _true(value: bool) -> bool:
    return value
