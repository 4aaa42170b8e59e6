"""InfluxDB 2.x through influxdb-client: line protocol to /api/v2/write, Flux to /api/v2/query.
Implements ``pipeline.base.Store`` with the same answers as ``SqliteStore`` (schema: ``lineproto.py``).

The client's synchronous APIs run in worker threads (``asyncio.to_thread``): its asyncio client
needs aiohttp, a second HTTP stack for one store. One HTTP request per ``write`` (the client's
own retries are off: the store-and-forward buffer in front decides), and every failure is a
``StoreError`` whose ``retryable`` says whether the data should wait (server down, 5xx, 401/403
token, 404 bucket) or be set aside (400 bad line or field type conflict, 413).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Self, TypeVar

import urllib3.exceptions
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.flux_table import TableList
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from ..config import InfluxSettings
from ..errors import StoreError
from ..models import DeadLetter, Point, Reading, from_us, to_us
from .base import Aggregate, Bucket
from .influx_base import InfluxStoreBase
from .lineproto import reading_from_row
from .sqlite import StoreCounts

__all__ = ["InfluxV2Store", "flux_string"]

T = TypeVar("T")
_AGG = ("mean", "min", "max", "last", "count")
# range() needs bounds; these hold every timestamp InfluxDB can store after the epoch.
_ALL_TIME = "start: 1970-01-01T00:00:00Z, stop: 2262-04-11T00:00:00Z"
_PIVOT = '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'


def flux_string(text: str) -> str:
    """A Flux string literal (``${`` escaped too: Flux interpolates it)."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t").replace("${", "\\${"))
    return f'"{escaped}"'


def _flux_time(us: int) -> str:
    return f"time(v: {us * 1000})"


def _error(op: str, err: Exception) -> StoreError:
    if isinstance(err, ApiException):
        status = int(err.status or 0)
        body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else str(err.body or err.reason)
        # InfluxDB 2 answers {"code": ..., "message": ...}: the message is what a person needs.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            body = str(json.loads(body)["message"])
        # 400 (a line it cannot parse, a field type conflict) and 413 (too large) fail the same
        # way forever; 5xx, 401/403 (a token an operator must fix) and 404 (no bucket) can pass.
        return StoreError(f"influxdb {op} failed: HTTP {status}: {body.strip()[:500]}",
                          retryable=status not in (400, 413))
    return StoreError(f"influxdb {op}: cannot reach the server: {err!r}", retryable=True)


class InfluxV2Store(InfluxStoreBase):
    """``async with InfluxV2Store(settings, site_id, points) as store: ...``"""

    def __init__(self, settings: InfluxSettings, site_id: str, points: Iterable[Point] = ()) -> None:
        if not settings.token or not settings.org:
            raise StoreError("InfluxDB 2 needs 'token' and 'org' (storage.influxdb)", retryable=False)
        super().__init__(settings, site_id, points)
        self._client: InfluxDBClient | None = None
        self._where = (f"r._measurement == {flux_string(settings.measurement)} and "
                       f"r.site == {flux_string(site_id)}")
        self._from = f"from(bucket: {flux_string(settings.bucket)})"

    # -- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        s = self.settings
        # No I/O here: the client connects on the first request (a server that is down at start
        # is the buffer's business). retries=False: one request per write.
        self._client = InfluxDBClient(url=s.url, token=s.token, org=s.org, timeout=int(s.timeout_s * 1000),
                                      verify_ssl=s.verify_ssl, retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._query_api = self._client.query_api()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    async def _run(self, op: str, fn: Callable[[], T]) -> T:
        if self._client is None:
            raise StoreError(f"influxdb {op}: the store is not open", retryable=False)

        def call() -> T:
            try:
                return fn()
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
                raise _error(op, err) from err

        return await asyncio.to_thread(call)

    # -- writes --------------------------------------------------------------------------------
    async def write_lines(self, body: bytes, precision: str = WritePrecision.US) -> None:
        """POST pre-encoded line protocol (``precision``: ns, us, ms, s)."""
        if not body:
            return
        s = self.settings
        await self._run("write", lambda: self._write_api.write(bucket=s.bucket, org=s.org, record=body,
                                                               write_precision=precision))

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a message that could not become a reading (raw bytes base64) as a ``dead_letter`` point."""
        await self.write_lines(self.encoder.dead_letter(letter), precision=WritePrecision.NS)

    # -- queries -------------------------------------------------------------------------------
    async def query(self, op: str, flux: str) -> TableList:
        return await self._run(op, lambda: self._query_api.query(flux, org=self.settings.org))

    def _readings(self, tables: TableList) -> list[Reading]:
        return [reading_from_row(rec.values, rec.values["_time"], self._binary) for t in tables for rec in t.records]

    def latest_flux(self, point_ids: Sequence[str] | None) -> str:
        where = self._where
        if point_ids is not None:
            where += f" and contains(value: r.point, set: [{', '.join(map(flux_string, point_ids))}])"
        # Whole rows (pivot first): last() per field would mix the newest value with an older
        # row's reasons.
        return (f"{self._from}\n  |> range({_ALL_TIME})\n  |> filter(fn: (r) => {where})\n  {_PIVOT}\n"
                '  |> group(columns: ["point"])\n  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 1)')

    async def latest(self, point_ids: Sequence[str] | None = None) -> list[Reading]:
        """The newest reading of each point (all points when None); points never seen are left out."""
        if point_ids is not None and not point_ids:
            return []
        ids = None if point_ids is None else list(dict.fromkeys(point_ids))
        newest = {r.point_id: r for r in self._readings(await self.query("latest", self.latest_flux(ids)))}
        if ids is None:
            return [newest[p] for p in sorted(newest)]
        return [newest[p] for p in ids if p in newest]

    def history_flux(self, point_id: str, lo: int, hi: int) -> str:
        return (f"{self._from}\n  |> range(start: {_flux_time(lo)}, stop: {_flux_time(hi)})\n"
                f"  |> filter(fn: (r) => {self._where} and r.point == {flux_string(point_id)})\n  {_PIVOT}\n"
                '  |> group()\n  |> sort(columns: ["_time"])')

    def buckets_flux(self, point_id: str, lo: int, hi: int, width_us: int, agg: str) -> str:
        data = (f"{self._from}\n  |> range(start: {_flux_time(lo)}, stop: {_flux_time(hi)})\n"
                f"  |> filter(fn: (r) => {self._where} and r.point == {flux_string(point_id)}"
                ' and r.quality == "good" and r._field == "value")\n  |> group()\n  |> sort(columns: ["_time"])')
        # Windows are aligned to the epoch; the first is cut at the range start, which
        # _buckets() aligns again. The count goes beside the aggregate as a second result.
        window = f"every: {width_us}us, createEmpty: false, timeSrc: \"_start\""
        return (f"data = {data}\n"
                f'data |> aggregateWindow({window}, fn: {agg}) |> yield(name: "agg")\n'
                f'data |> aggregateWindow({window}, fn: count) |> yield(name: "count")')

    async def history(
        self,
        point_id: str,
        start: datetime,
        end: datetime,
        bucket_s: float | None = None,
        agg: Aggregate = "mean",
    ) -> list[Reading] | list[Bucket]:
        """Raw readings in [start, end) (every quality), or good-only buckets of ``bucket_s`` seconds."""
        lo, hi = to_us(start), to_us(end)
        if bucket_s is None:
            return self._readings(await self.query("history", self.history_flux(point_id, lo, hi)))
        if agg not in _AGG:
            raise ValueError(f"agg must be one of {', '.join(_AGG)}, not {agg!r}")
        width = round(bucket_s * 1_000_000)
        if width <= 0:
            raise ValueError(f"bucket_s must be positive, not {bucket_s}")
        tables = await self.query("history", self.buckets_flux(point_id, lo, hi, width, agg))
        values: dict[int, float | None] = {}
        counts: dict[int, int] = {}
        for t in tables:
            for rec in t.records:
                us = to_us(rec.values["_time"])
                start_us = us - us % width
                v = rec.values.get("_value")
                if rec.values.get("result") == "count":
                    counts[start_us] = int(v or 0)
                else:
                    values[start_us] = None if v is None else float(v)
        return [Bucket(point_id=point_id, start=from_us(b), value=values.get(b), count=counts[b])
                for b in sorted(counts) if counts[b]]

    def counts_flux(self) -> str:
        # A row is a (series, time) pair whatever fields it has: pivot, then count a tag every
        # row carries (a failed read has no value field, so counting `value` would miss it).
        return (f"{self._from}\n  |> range({_ALL_TIME})\n  |> filter(fn: (r) => {self._where})\n  {_PIVOT}\n"
                '  |> group(columns: ["quality"])\n  |> count(column: "point")')

    async def counts(self) -> StoreCounts:
        """How many readings the store holds for this site, in total and per quality (exact)."""
        per: dict[str, int] = {}
        for t in await self.query("counts", self.counts_flux()):
            for rec in t.records:
                q = str(rec.values.get("quality") or "")
                per[q] = per.get(q, 0) + int(rec.values.get("point") or 0)
        return StoreCounts(total=sum(per.values()), good=per.get("good", 0),
                           uncertain=per.get("uncertain", 0), bad=per.get("bad", 0))

