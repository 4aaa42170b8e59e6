"""InfluxDB 1.x: ``InfluxV1Store.write`` of 5,000-reading batches (encode + POST) against raw
batched line-protocol POSTs with httpx2 (lines pre-encoded, 5,000 per POST), same private
influxd, same number of readings, same series; each run writes its own time range, so neither
overwrites the other's points.

The influxd is started with tests/influxdb.py (tests/ goes on sys.path): one copy of the code
that runs a private server, used by the tests and here.

Three ways, interleaved in rounds (the best of each is reported):
- raw: pre-encoded bodies POSTed one after the other (what InfluxDB itself takes);
- direct: ``InfluxV1Store.write`` (encode + POST);
- through the buffer (the path ingest uses): every batch appended to the durable buffer and
  forwarded until the buffer is empty, timed from the first append to the drain — sustained
  ingest, not just the appends. Target: at least 50 % of raw.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx2

from eaio.config import InfluxSettings
from eaio.models import Point, ReadingBatch
from eaio.pipeline.buffer import DurableBuffer
from eaio.pipeline.forward import ForwardingStore
from eaio.pipeline.influx_v1 import InfluxV1Store
from eaio.pipeline.lineproto import LineEncoder

from .common import tempdir

TESTS = Path(__file__).resolve().parent.parent / "tests"
BATCH = 5_000
POINTS = 1_000
BATCHES = 30  # 150,000 readings a run
ROUNDS = 3  # raw, direct and buffered alternate; the best of each is reported
SITE = "bench"
T0_US = 1_784_116_800_000_000  # 2026-07-15T12:00:00Z


def _influxd_class() -> Any:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from influxdb import Influxd  # tests/influxdb.py

    return Influxd


def points() -> list[Point]:
    return [Point(id=f"bench.p{i:04d}", kind="temperature", unit="degC", brick="Air_Temperature_Sensor",
                  zone=f"z{i % 20}", device_id=f"plc{i % 10}") for i in range(POINTS)]


def batches(start_us: int, n: int = BATCHES) -> list[ReadingBatch]:
    """``n`` batches of BATCH readings: every point once per second, in time order."""
    out = []
    ids = [f"bench.p{i:04d}" for i in range(POINTS)]
    devices = [f"plc{i % 10}" for i in range(POINTS)]
    row = 0
    for _ in range(n):
        b = ReadingBatch()
        for _ in range(BATCH):
            i = row % POINTS
            b.append(ids[i], 20.0 + (row % 97) * 0.01, start_us + (row // POINTS) * 1_000_000, "degC", devices[i])
            row += 1
        out.append(b)
    return out


async def measure_raw(url: str, bodies: Sequence[bytes]) -> float:
    """Readings/s of POSTing pre-encoded bodies of BATCH lines, one request each."""
    async with httpx2.AsyncClient(base_url=url, timeout=60) as client:
        params = {"db": "eaio", "precision": "u"}
        t = time.perf_counter()
        for body in bodies:
            resp = await client.post("/write", params=params, content=body)
            if resp.status_code != 204:
                raise RuntimeError(f"raw write failed: {resp.status_code} {resp.text}")
        elapsed = time.perf_counter() - t
    return len(bodies) * BATCH / elapsed


async def measure_store(store_factory: Callable[[], AbstractAsyncContextManager[Any]],
                        batches: Sequence[ReadingBatch]) -> float:
    """Readings/s of ``store.write(batch)`` for every batch, the store opened beforehand (not timed).

    ``store_factory`` returns an unopened store (anything ``async with``-able with ``write``),
    e.g. ``lambda: InfluxV1Store(settings, site, points)`` or a buffer wrapping one.
    """
    async with store_factory() as store:
        n = 0
        t = time.perf_counter()
        for b in batches:
            n += await store.write(b)
        elapsed = time.perf_counter() - t
    return n / elapsed


async def measure_forwarded(remote: Any, buffer_path: Path, batches: Sequence[ReadingBatch]) -> float:
    """Readings/s from the first append to the buffer until the forwarder has emptied it."""
    fwd = ForwardingStore(DurableBuffer(buffer_path, 10_000_000, chunk_size=BATCH), remote, backend="influxdb v1",
                          batch_size=BATCH)
    async with fwd:  # opens the remote itself
        t = time.perf_counter()
        for b in batches:
            await fwd.write(b)
        if not await fwd.drain(300):
            raise RuntimeError("the buffer did not drain in 300 s")
        elapsed = time.perf_counter() - t
    return sum(map(len, batches)) / elapsed


def encode_us(encoder: LineEncoder, batch: ReadingBatch, repeat: int = 20) -> float:
    """Microseconds to encode one batch (best of ``repeat``, prefixes already cached)."""
    encoder.encode(batch)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        encoder.encode(batch)
        best = min(best, time.perf_counter() - t)
    return best * 1e6


async def _run(url: str, tmp: Path) -> dict[str, Any]:
    settings = InfluxSettings(version=1, url=url)
    pts = points()
    encoder = LineEncoder(settings.measurement, SITE, pts)
    # Warm-up: database, shard and series exist before anything is timed.
    async with InfluxV1Store(settings, SITE, pts) as store:
        for b in batches(T0_US - 10_000_000_000, 2):
            await store.write(b)
    span = BATCHES * BATCH // POINTS * 1_000_000
    raw_rates, store_rates, fwd_rates = [], [], []
    for k in range(ROUNDS):
        raw_bodies = [encoder.encode(b) for b in batches(T0_US + (3 * k) * span)]
        raw_rates.append(await measure_raw(url, raw_bodies))
        store_batches = batches(T0_US + (3 * k + 1) * span)
        store_rates.append(await measure_store(lambda: InfluxV1Store(settings, SITE, pts), store_batches))
        fwd_batches = batches(T0_US + (3 * k + 2) * span)
        fwd_rates.append(await measure_forwarded(InfluxV1Store(settings, SITE, pts), tmp / f"buffer-{k}.db",
                                                 fwd_batches))
    raw, direct, forwarded = max(raw_rates), max(store_rates), max(fwd_rates)
    sample = batches(T0_US, 1)[0]
    enc = encode_us(encoder, sample)
    return {
        "readings_per_run": BATCHES * BATCH,
        "batch": BATCH,
        "points": POINTS,
        "raw_readings_per_s": round(raw),
        "store_readings_per_s": round(direct),
        "store_vs_raw": round(direct / raw, 3),
        "buffered_readings_per_s": round(forwarded),
        "buffered_vs_raw": round(forwarded / raw, 3),
        "targets": {"buffered_vs_raw": ">= 0.5"},
        "encode_us_per_batch": round(enc),
        "encode_share_of_raw_post": round(enc / (BATCH / raw * 1e6), 3),
        "body_bytes_per_batch": len(encoder.encode(sample)),
        "rounds": {"raw": [round(r) for r in raw_rates], "store": [round(r) for r in store_rates],
                   "buffered": [round(r) for r in fwd_rates]},
    }


def run() -> dict[str, Any]:
    influxd_cls = _influxd_class()
    with tempdir() as tmp:
        server = influxd_cls(tmp / "influxd")
        server.start()
        try:
            return asyncio.run(_run(server.url, tmp))
        finally:
            server.stop()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
