"""The durable buffer and the forwarding store, against real SQLite files and a real SqliteStore target.

The outage and crash tests with a real influxd are in test_pipeline_outage.py.
"""

from __future__ import annotations

import logging
import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from eaio.config import load_config
from eaio.errors import StoreError
from eaio.models import DeadLetter, Quality, Reading, ReadingBatch, utcnow
from eaio.pipeline import DurableBuffer, ForwardingStore, Ingest, SqliteStore, StoreHealth, open_store
from eaio.pipeline.buffer import decode_chunk, read_outbox
from eaio.pipeline.ingest import IngestStats, summary
from helpers import until

pytestmark = pytest.mark.anyio
T0 = 1_700_000_000_000_000  # microseconds


def batch(n: int, start: int = 0, points: int = 3) -> ReadingBatch:
    """``n`` readings over ``points`` points; reading k has ts T0 + start + k (unique, increasing)."""
    b = ReadingBatch()
    for k in range(start, start + n):
        b.append(f"p{k % points}", float(k), T0 + k, "degC", "dev")
    return b


def mixed() -> ReadingBatch:
    """Every kind of value and quality a batch may carry."""
    b = ReadingBatch()
    b.append("f", 21.5, T0, "degC", "dev")
    b.append("i", 2**40 + 1, T0 + 1, "", None)  # an int beyond float32, no device
    b.append("b", True, T0 + 2, "", "dev")
    b.append("b", False, T0 + 3, "", "dev")
    b.append("none", None, T0 + 4, "kW", "dev", Quality.BAD)
    b.append("nan", float("nan"), T0 + 5, "", "dev", Quality.BAD)
    b.append("u", 1.0, T0 + 6, "", "dev", Quality.UNCERTAIN)
    b.reasons[4] = ["comm_failure", "stale"]
    b.detail[4] = "device_offline: no answer"
    b.reasons[5] = ["protocol_status:nan"]
    return b


async def test_appended_readings_survive_a_close_and_come_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with DurableBuffer(path, 10_000) as buf:
        assert await buf.append(mixed()) == 7
        assert await buf.append(batch(5)) == 5
        assert buf.count == 12
    async with DurableBuffer(path, 10_000) as buf:
        assert buf.count == 12
        last, got = await buf.peek(7)
        assert len(got) == 7
        want = mixed()
        assert got.point_id == want.point_id
        assert got.ts_us == want.ts_us
        assert got.unit == want.unit
        assert got.device_id == want.device_id
        assert got.quality == want.quality
        assert got.reasons == want.reasons
        assert got.detail == want.detail
        assert got.value[:5] == want.value[:5]
        assert [type(v) for v in got.value[:4]] == [float, int, bool, bool]
        assert math.isnan(got.value[5])  # type: ignore[arg-type]
        assert got.value[6] == 1.0
        assert type(got.value[6]) is float
        # peek removes nothing; ack removes exactly what was peeked.
        assert (await buf.peek(7))[0] == last
        assert await buf.ack(last) == 7
        assert buf.count == 5
        last2, rest = await buf.peek(100)
        assert last2 > last
        assert rest.ts_us == batch(5).ts_us
    async with DurableBuffer(path, 10_000) as buf:
        assert buf.count == 5
        await buf.ack(last2)
        assert buf.count == 0
        assert not len((await buf.peek(10))[1])


async def test_peek_hands_out_whole_chunks_in_order(tmp_path: Path) -> None:
    async with DurableBuffer(tmp_path / "b.db", 10_000, chunk_size=100) as buf:
        for i in range(4):
            await buf.append(batch(250, start=250 * i))  # rows of 100, 100 and 50 readings each time
        got, after = [], 0
        while len(b := (peeked := await buf.peek(400, after=after))[1]):
            after = peeked[0]
            got.append(b)
        # Whole rows, as many as fit in 400: 100+100+50+100, 100+50+100+100+50, 100+100+50.
        assert [len(b) for b in got] == [350, 400, 250]
        assert [t for b in got for t in b.ts_us] == [T0 + k for k in range(1_000)]
        assert buf.count == 1_000  # peeking removes nothing


def test_a_killed_process_loses_nothing_it_had_appended(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    script = textwrap.dedent(f"""
        import asyncio, os, signal
        from eaio.models import ReadingBatch
        from eaio.pipeline.buffer import DurableBuffer

        async def main():
            buf = await DurableBuffer({str(path)!r}, 100_000).__aenter__()
            for i in range(20):
                b = ReadingBatch()
                for k in range(500):
                    b.append("p", float(k), 1_700_000_000_000_000 + 500 * i + k)
                await buf.append(b)
            print(buf.count, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: a crash

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "10000"
    assert [t for _, b in read_outbox(path) for t in b.ts_us] == [T0 + k for k in range(10_000)]


async def test_a_full_buffer_refuses_and_warns_at_90_percent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eaio.buffer")
    async with DurableBuffer(tmp_path / "b.db", 1_000, chunk_size=50) as buf:
        await buf.append(batch(890))
        assert not buf.near_full
        assert not caplog.records
        await buf.append(batch(20, start=890))
        assert buf.near_full
        assert buf.fill == pytest.approx(0.91)
        assert len(caplog.records) == 1
        assert "91% full" in caplog.records[0].getMessage()
        await buf.append(batch(40, start=910))
        assert len(caplog.records) == 1  # once per rise, not per append

        with pytest.raises(StoreError, match="buffer full") as err:
            await buf.append(batch(100, start=950))
        assert err.value.retryable
        assert buf.count == 950  # the refused batch left nothing behind, and nothing was evicted
        assert await buf.append(batch(50, start=950)) == 50
        assert buf.count == 1_000

        last, _ = await buf.peek(150)
        await buf.ack(last)  # 85%: still above the re-arm mark
        assert buf.near_full
        last, _ = await buf.peek(100, after=last)
        await buf.ack(last)  # 75%
        assert not buf.near_full
        await buf.append(batch(200, start=1_000))  # 95% again: a second warning
        assert buf.near_full
        assert len(caplog.records) == 2
    async with DurableBuffer(tmp_path / "b.db", 1_000) as buf:
        assert buf.count == 950
        assert buf.near_full


async def test_forwarding_into_a_sqlite_store_delivers_everything_once_in_order(tmp_path: Path) -> None:
    # The forwarding store opens and closes its remote itself (it retries the opening too).
    fwd = ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000, chunk_size=700),
                          SqliteStore(tmp_path / "target.db"), backend="sqlite-target", batch_size=700)
    async with fwd:
        for i in range(10):
            assert await fwd.write(batch(1_000, start=1_000 * i)) == 1_000
        assert await fwd.drain(30)
        h = fwd.health()
        assert (h.buffered, h.forwarded, h.ok, h.retries, h.parked) == (0, 10_000, True, 0, 0)
        latest = {r.point_id: r for r in await fwd.latest(["p0", "p1", "p2"])}
        assert latest["p2"].value == 9_998.0
        assert (await fwd.counts()).total == 10_000
    assert inserted_ts(tmp_path / "target.db") == [T0 + k for k in range(10_000)]


class FlakyTarget(SqliteStore):
    """A test double for the retry, backoff and park logic only: a real SqliteStore whose writes
    fail on demand, as an unreachable server (retryable) or a bad line (refused for good) would.
    The end-to-end behaviour against a real server is in test_pipeline_outage.py."""

    def __init__(self, path: Path, fail_first: int = 0, refuse_point: str | None = None,
                 fail_opens: int = 0) -> None:
        super().__init__(path)
        self.fail_first = fail_first
        self.refuse_point = refuse_point
        self.fail_opens = fail_opens
        self.attempts = 0
        self.accepted: list[int] = []  # the size of each batch written
        self.on_attempt: Callable[[], None] | None = None  # called as each write begins

    async def __aenter__(self) -> FlakyTarget:
        if self.fail_opens:
            self.fail_opens -= 1
            raise StoreError("connection refused (test)", retryable=True)
        return await super().__aenter__()

    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        self.attempts += 1
        if self.on_attempt is not None:
            self.on_attempt()
        if self.attempts <= self.fail_first:
            raise StoreError("connection refused (test)", retryable=True)
        if isinstance(readings, ReadingBatch) and self.refuse_point in readings.point_id:
            raise StoreError(f"400 bad line for {self.refuse_point} (test)", retryable=False)
        n = await super().write(readings)
        self.accepted.append(n)
        return n


async def test_retryable_failures_retry_the_same_batch_with_backoff_and_keep_order(tmp_path: Path) -> None:
    target = FlakyTarget(tmp_path / "target.db", fail_first=5)
    fwd = ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000, chunk_size=300), target, backend="flaky",
                          batch_size=300,
                          retry_initial_s=0.01, retry_max_s=0.05)
    seen: list[StoreHealth] = []
    # The health as each write attempt begins: from the second on, it reports the one before. Taken
    # there, not by polling, since five quick failures may all pass between two polls.
    target.on_attempt = lambda: seen.append(fwd.health())
    async with fwd:
        for i in range(5):
            await fwd.write(batch(400, start=400 * i))
        assert await fwd.drain(30)
        down = next((h for h in seen if h.ok is False), None)
        assert down is not None, "the store's health never showed the failure"
        assert down.last_error
        assert "connection refused" in down.last_error
        assert down.last_error_at
        h = fwd.health()
        assert h.ok is True
        assert h.retries == 5
        assert h.forwarded == 2_000
        assert h.buffered == 0
        assert h.last_ok_at is not None
        assert h.last_error_at is not None
        assert h.last_ok_at > h.last_error_at
    # Five failures, then every batch once (none sent again after it had passed), none over 300.
    assert target.attempts == 5 + len(target.accepted)
    assert sum(target.accepted) == 2_000
    assert max(target.accepted) <= 300
    assert inserted_ts(target.path) == [T0 + k for k in range(2_000)]


async def test_a_batch_refused_for_good_is_parked_and_the_rest_goes_on(tmp_path: Path) -> None:
    target = FlakyTarget(tmp_path / "target.db", refuse_point="bad")
    buf = DurableBuffer(tmp_path / "b.db", 100_000, chunk_size=100)
    async with ForwardingStore(buf, target, backend="flaky", batch_size=100) as fwd:
        await fwd.write(batch(100))
        bad = batch(100, start=100)
        bad.point_id[50] = "bad"
        await fwd.write(bad)
        await fwd.write(batch(100, start=200))
        assert await fwd.drain(30)
        h = fwd.health()
        assert (h.forwarded, h.parked, h.buffered, h.retries) == (200, 100, 0, 0)
        assert h.ok is True  # the store answered: a refusal is not an outage
        assert h.last_error
        assert "400 bad line" in h.last_error
    assert target.attempts == 3  # the refused batch was tried once, never again
    with closing(sqlite3.connect(buf.path)) as conn:
        parked = conn.execute("SELECT n, data, error FROM parked ORDER BY seq").fetchall()
    assert len(parked) == 1
    n, data, error = parked[0]
    assert n == 100
    assert decode_chunk(data).ts_us == bad.ts_us
    assert decode_chunk(data).point_id == bad.point_id
    assert "400 bad line" in error
    # A reopened buffer still counts them, and nothing is retried automatically.
    async with DurableBuffer(buf.path, 100_000) as again:
        assert again.parked == 100
        assert again.count == 0
    assert inserted_ts(target.path) == [T0 + k for k in range(100)] + [T0 + k for k in range(200, 300)]


async def test_a_store_down_at_start_only_delays_forwarding(tmp_path: Path) -> None:
    target = FlakyTarget(tmp_path / "target.db", fail_opens=3)
    fwd = ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000), target, backend="flaky",
                          retry_initial_s=0.01, retry_max_s=0.05)
    async with fwd:
        assert await fwd.write(batch(1_000)) == 1_000  # accepted while the store is unreachable
        assert await fwd.drain(30)
        assert fwd.health().retries == 3
        assert len(await fwd.latest()) == 3
    assert inserted_ts(target.path) == [T0 + k for k in range(1_000)]


async def test_what_is_left_at_exit_is_forwarded_first_on_the_next_start(tmp_path: Path) -> None:
    down = FlakyTarget(tmp_path / "target.db", fail_first=10**9)
    async with ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000, chunk_size=500), down, batch_size=500,
                                     retry_initial_s=0.01, retry_max_s=0.05) as fwd:
        await fwd.write(batch(1_200))
        await until(lambda: _async(fwd.health().retries >= 2), "retries while the store is down")
    # The exit made no last attempt at a store that is down, and kept everything.
    async with DurableBuffer(tmp_path / "b.db", 100_000) as buf:
        assert buf.count == 1_200
    async with ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000), SqliteStore(tmp_path / "target.db")) as fwd:
        await fwd.write(batch(300, start=1_200))
        assert await fwd.drain(30)
    assert inserted_ts(tmp_path / "target.db") == [T0 + k for k in range(1_500)]


async def test_queries_while_the_store_is_unreachable_say_so(tmp_path: Path) -> None:
    target = FlakyTarget(tmp_path / "target.db", fail_opens=10**9)
    async with ForwardingStore(DurableBuffer(tmp_path / "b.db", 100_000), target, backend="flaky",
                               retry_initial_s=0.01, retry_max_s=0.05) as fwd:
        await until(lambda: _async(fwd.health().retries >= 1), "a failed attempt to reach the store")
        with pytest.raises(StoreError, match=r"flaky is not reachable yet: .*connection refused") as err:
            await fwd.latest(["p0"])
        assert err.value.retryable


async def test_a_write_bigger_than_the_room_left_takes_what_fits(tmp_path: Path) -> None:
    down = FlakyTarget(tmp_path / "target.db", fail_opens=10**9)
    async with ForwardingStore(DurableBuffer(tmp_path / "b.db", 1_000), down, retry_initial_s=0.01,
                               retry_max_s=0.05) as fwd:
        assert await fwd.write(batch(800)) == 800
        assert await fwd.write(batch(500, start=800)) == 200  # the first 200, in order
        with pytest.raises(StoreError, match="buffer full") as err:
            await fwd.write(batch(1, start=1_300))
        assert err.value.retryable
        h = fwd.health()
        assert (h.buffered, h.capacity, h.fill, h.near_full) == (1_000, 1_000, 1.0, True)
        _, got = await fwd.buffer.peek(2_000)
        assert got.ts_us == [T0 + k for k in range(1_000)]


async def test_dead_letters_stay_in_the_buffer_file(tmp_path: Path) -> None:
    down = FlakyTarget(tmp_path / "target.db", fail_opens=10**9)
    letter = DeadLetter(received_at=utcnow(), source="mqtt:gw", topic="a/b", reason="malformed", payload=b"\xff{")
    async with ForwardingStore(DurableBuffer(tmp_path / "b.db", 1_000), down, retry_initial_s=0.01,
                               retry_max_s=0.05) as fwd:
        await fwd.add_dead_letter(letter)
        assert await fwd.dead_letter_count() == 1
    with closing(sqlite3.connect(tmp_path / "b.db")) as conn:
        assert conn.execute("SELECT source, topic, reason, payload FROM dead_letter").fetchall() == [
            ("mqtt:gw", "a/b", "malformed", b"\xff{")]


# -- the factory and ingest ----------------------------------------------------------------------

def _site(tmp_path: Path, **storage: Any) -> Path:
    raw = {"site": {"id": "buf"}, "data_dir": str(tmp_path / "data"), "devices": [], "storage": storage}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    assert isinstance(open_store(cfg), SqliteStore)
    influx = load_config(_site(tmp_path, backend="influxdb", buffer={"path": "out.db", "max_readings": 5_000,
                                                                      "batch_size": 1_000},
                               influxdb={"version": 1, "url": "http://127.0.0.1:1"}))
    store = open_store(influx)
    assert isinstance(store, ForwardingStore)
    assert type(store.remote).__name__ == "InfluxV1Store"
    assert store.buffer.path == tmp_path / "data" / "out.db"
    assert (store.buffer.max_readings, store.batch_size, store.backend) == (5_000, 1_000, "influxdb v1")


async def test_ingest_reports_the_store_health(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    async with Ingest(cfg) as ingest:
        await ingest._on_pushed(batch(10))
        await until(lambda: _async(ingest.readings_stored == 10), "10 readings stored")
        stats = ingest.stats()
        assert stats.store is not None
        assert (stats.store.backend, stats.store.ok, stats.store.capacity) == ("sqlite", True, 0)
        line = summary(stats, 1.0)
        assert "store sqlite ok;" in line
    # The store was closed after the writer's last flush, and holds what it acknowledged.
    async with SqliteStore(cfg.sqlite_path()) as store:
        assert (await store.counts()).total == 10


async def test_ingest_through_a_forwarding_store_and_the_summary_line(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path))
    target = FlakyTarget(tmp_path / "target.db", fail_first=10**9)
    fwd = ForwardingStore(DurableBuffer(tmp_path / "b.db", 1_000), target, backend="influxdb v1",
                          retry_initial_s=0.01, retry_max_s=0.05)
    async with fwd, Ingest(cfg, store=fwd) as ingest:
        await ingest._on_pushed(batch(950))
        await until(lambda: _async(ingest.stats().store.retries >= 1), "a failed forward")  # type: ignore[union-attr]
        stats = ingest.stats()
        assert stats.readings_stored == 950  # in the buffer: stored, as far as ingest is concerned
        assert stats.store is not None
        assert stats.store.ok is False
        assert stats.store.near_full
        line = summary(stats, 1.0)
        assert "store influxdb v1 failing: store_error: connection refused (test)" in line
        assert "(950 buffered, 95% full, 0 forwarded" in line
        await ingest._on_pushed(batch(100, start=950))  # only 50 fit: the rest waits in memory
        await until(lambda: _async(ingest.stats().store_errors >= 1), "the buffer filling up")
        assert ingest.readings_stored == 1_000
        assert ingest.stats().backlog == 50
        target.fail_first = 0
        await until(lambda: _async(ingest.readings_stored == 1_050), "the backlog entering the buffer")
        assert await fwd.drain(30)
    assert inserted_ts(target.path) == [T0 + k for k in range(1_050)]


def test_summary_without_a_store() -> None:
    assert "store not opened" in summary(IngestStats(), 0.0)


# -- helpers --------------------------------------------------------------------------------------

def inserted_ts(path: Path) -> list[int]:
    """Every reading's ts in the order the target store received it (rowid), all points together."""
    with closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT ts FROM readings ORDER BY rowid")]


async def _async(value: Any) -> Any:
    return value
