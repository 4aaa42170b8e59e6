"""The InfluxDB 1.x store against a real private influxd 1.6.7 (the `influxd` fixture): round trips
compared with SqliteStore on the same input, the line-protocol schema as stored, escaping,
idempotency, dead letters, and which failures are retryable."""

from __future__ import annotations

import base64
import math
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from eaio.config import InfluxSettings
from eaio.errors import StoreError
from eaio.models import DeadLetter, ModbusAddress, ModbusPoint, Point, Quality, Reading, ReadingBatch
from eaio.pipeline import Bucket, SqliteStore
from eaio.pipeline.influx_v1 import InfluxV1Store
from influxdb import Influxd

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)  # on a 15-minute boundary
SITE = "hq"

POINTS: list[Point] = [
    Point(id="zone1.temp", kind="temperature", unit="deg C", brick="Zone_Air_Temperature_Sensor", zone="zone1",
          device_id="zones-ctrl"),
    Point(id="ahu1.flow", kind="generic", unit="m3/h", equip="ahu1", device_id="ahu1"),
    Point(id="zone1.rh", kind="humidity", unit="%RH", device_id="zones-ctrl"),
    ModbusPoint(id="ahu1.fan_cmd", kind="command", device_id="ahu1",
                address=ModbusAddress(table="coil", register=3, type="bool")),
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reading(point_id: str, value: float | int | bool | None, seconds: float, unit: str = "",
            device: str | None = None, quality: Quality = Quality.GOOD, *reasons: str,
            detail: str | None = None) -> Reading:
    r = Reading(point_id=point_id, value=value, ts=at(seconds), unit=unit, device_id=device, detail=detail)
    for reason in reasons:
        r.mark(quality, reason)
    return r


# Every kind of row the schema has: good floats in two 15-minute buckets with bad ones among them,
# a failed read (no value) whose detail needs escaping, ints, bools, an uncertain reading, units
# and a device id with spaces, commas and '=', and a point the configuration does not know.
READINGS = [
    reading("zone1.temp", 20.0, 0, "deg C", "zones-ctrl"),
    reading("zone1.temp", 21.0, 300, "deg C", "zones-ctrl"),
    reading("zone1.temp", 99.0, 400, "deg C", "zones-ctrl", Quality.BAD, "range_high"),
    reading("zone1.temp", 23.5, 600, "deg C", "zones-ctrl"),
    reading("zone1.temp", 22.0, 900, "deg C", "zones-ctrl"),
    reading("zone1.temp", None, 1000, "deg C", "zones-ctrl", Quality.BAD, "comm_failure", "stale",
            detail='device_offline: "zones-ctrl" said \\ no\nsecond line'),
    reading("zone1.temp", 24.0, 1500, "deg C", "zones-ctrl"),
    reading("ahu1.flow", 1200, 10, "m3/h", "ahu1"),
    reading("ahu1.flow", 1300, 20, "m3/h", "ahu1", Quality.UNCERTAIN, "spike"),
    reading("ahu1.flow", 1e16, 30, "m3/h", "ahu1"),
    reading("zone1.rh", 45.5, 40, "%RH", "zones-ctrl"),
    reading("zone1.rh", -1.5e-7, 50, "%RH", "zones-ctrl"),
    reading("ahu1.fan_cmd", True, 60, "", "ahu1"),
    reading("ahu1.fan_cmd", False, 70, "", "ahu1"),
    reading("odd.point", 7.25, 80, "a,b=c d", "gw 2,x=y"),
    reading("odd.point", math.nan, 90, "a,b=c d", "gw 2,x=y", Quality.BAD, "protocol_status:nan"),
]


def settings(url: str, **kw: Any) -> InfluxSettings:
    return InfluxSettings(version=1, url=url, **kw)


@pytest.fixture
async def pair(influxd: Influxd, tmp_path: Path) -> Any:
    """The influx store and a SqliteStore, both holding READINGS."""
    async with InfluxV1Store(settings(influxd.url), SITE, POINTS) as influx, SqliteStore(tmp_path / "s.db") as sql:
        assert await influx.write(ReadingBatch.from_readings(READINGS)) == len(READINGS)
        assert await sql.write(READINGS) == len(READINGS)
        yield influx, sql


def dumped(readings: list[Reading]) -> list[dict[str, Any]]:
    return [r.model_dump() for r in readings]


def assert_same(got: list[Reading], want: list[Reading]) -> None:
    """Same readings; values as the schema reads them back (float, bool for binary points)."""
    assert dumped(got) == dumped(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w.value, bool):
            assert g.value is w.value
        elif w.value is not None:
            assert type(g.value) is float


async def test_latest_matches_sqlite(pair: Any) -> None:
    influx, sql = pair
    assert_same(await influx.latest(), await sql.latest())
    some = ["zone1.rh", "nope", "zone1.temp", "ahu1.fan_cmd"]
    got = await influx.latest(some)
    assert_same(got, await sql.latest(some))
    assert [r.point_id for r in got] == ["zone1.rh", "zone1.temp", "ahu1.fan_cmd"]
    assert (got[1].ts, got[1].value, got[2].value) == (at(1500), 24.0, False)
    assert await influx.latest([]) == []


async def test_raw_history_matches_sqlite(pair: Any) -> None:
    influx, sql = pair
    for point_id in ("zone1.temp", "ahu1.flow", "zone1.rh", "ahu1.fan_cmd", "odd.point", "nope"):
        got = await influx.history(point_id, at(0), at(1500))  # end excluded
        assert_same(got, await sql.history(point_id, at(0), at(1500)))
    temps = await influx.history("zone1.temp", at(300), at(1500))
    assert [r.ts for r in temps] == [at(300), at(400), at(600), at(900), at(1000)]
    failed = temps[-1]  # the failed read, stored with no value field
    assert (failed.value, failed.quality, failed.reasons) == (None, Quality.BAD, ["comm_failure", "stale"])
    assert failed.detail == 'device_offline: "zones-ctrl" said \\ no\nsecond line'
    odd = await influx.history("odd.point", at(0), at(100))
    assert [(r.unit, r.device_id) for r in odd] == [("a,b=c d", "gw 2,x=y")] * 2
    assert odd[1].value is None
    assert odd[1].reasons == ["protocol_status:nan"]


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last", "count"])
async def test_buckets_match_sqlite(pair: Any, agg: str) -> None:
    influx, sql = pair
    got = await influx.history("zone1.temp", at(-900), at(3600), bucket_s=900, agg=agg)  # type: ignore[arg-type]
    want = await sql.history("zone1.temp", at(-900), at(3600), bucket_s=900, agg=agg)  # type: ignore[arg-type]
    assert all(isinstance(b, Bucket) for b in got)
    assert [(b.start, b.count) for b in got] == [(b.start, b.count) for b in want]  # type: ignore[union-attr]
    assert [b.value for b in got] == pytest.approx([b.value for b in want])  # type: ignore[union-attr]
    # Good readings only (the 99.0 range_high and the failed read are left out), epoch-aligned.
    expected = {"mean": [21.5, 23.0], "min": [20.0, 22.0], "max": [23.5, 24.0], "last": [23.5, 24.0],
                "count": [3.0, 2.0]}[agg]
    assert [b.value for b in got] == pytest.approx(expected)  # type: ignore[union-attr]
    assert [(b.start, b.count) for b in got] == [(at(0), 3), (at(900), 2)]  # type: ignore[union-attr]
    # A bucket that starts before the range still carries its aligned start; empty ones are left out.
    part = await influx.history("zone1.temp", at(450), at(3600), bucket_s=900, agg="count")
    assert [(b.start, b.count) for b in part] == [(at(0), 1), (at(900), 2)]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="agg"):
        await influx.history("zone1.temp", at(0), at(10), bucket_s=900, agg="median")  # type: ignore[arg-type]


async def test_counts_match_sqlite_and_writes_are_idempotent(pair: Any, influxd: Influxd) -> None:
    influx, sql = pair
    c = await influx.counts()
    assert c == await sql.counts()
    assert (c.total, c.good, c.uncertain, c.bad) == (16, 12, 1, 3)
    assert influxd.count() == len(READINGS)
    # The same batch again (a buffer's retry after a lost answer) is the same points.
    await influx.write(READINGS)
    assert await influx.counts() == c
    assert influxd.count() == len(READINGS)


async def test_schema_as_stored(pair: Any, influxd: Influxd) -> None:
    """Tags and fields exactly as lineproto.py documents them, read with raw InfluxQL."""
    fields = influxd.query("SHOW FIELD KEYS FROM readings")["results"][0]["series"][0]["values"]
    assert sorted(map(tuple, fields)) == [("detail", "string"), ("reasons", "string"), ("value", "float")]
    tags = influxd.query("SHOW TAG KEYS FROM readings")["results"][0]["series"][0]["values"]
    assert sorted(t[0] for t in tags) == ["brick", "device", "equip", "kind", "point", "quality", "site",
                                          "unit", "zone"]
    series = {s[0] for s in influxd.query("SHOW SERIES FROM readings")["results"][0]["series"][0]["values"]}
    assert ("readings,brick=Zone_Air_Temperature_Sensor,device=zones-ctrl,kind=temperature,point=zone1.temp,"
            "quality=good,site=hq,unit=deg\\ C,zone=zone1") in series
    assert "readings,device=ahu1,equip=ahu1,kind=generic,point=ahu1.flow,quality=uncertain,site=hq,unit=m3/h" \
        in series
    # No unit tag when the unit is empty; an unknown point has no kind/brick/zone/equip.
    assert "readings,device=ahu1,kind=command,point=ahu1.fan_cmd,quality=good,site=hq" in series
    assert "readings,device=gw\\ 2\\,x\\=y,point=odd.point,quality=good,site=hq,unit=a\\,b\\=c\\ d" in series
    ns = int(at(1000).timestamp()) * 1_000_000_000
    res = influxd.query(f"SELECT * FROM readings WHERE point = 'zone1.temp' AND time = {ns}")["results"][0]
    row = dict(zip(res["series"][0]["columns"], res["series"][0]["values"][0], strict=True))
    assert row["time"] == ns // 1000  # microseconds (epoch=u)
    assert (row["value"], row["reasons"], row["quality"]) == (None, "comm_failure,stale", "bad")
    res = influxd.query("SELECT value FROM readings WHERE point = 'ahu1.fan_cmd'")["results"][0]
    assert [v[1] for v in res["series"][0]["values"]] == [1, 0]  # bools as 1.0 / 0.0 (JSON drops the .0)


async def test_dead_letter(influxd: Influxd) -> None:
    async with InfluxV1Store(settings(influxd.url), SITE, POINTS) as store:
        when = at(5)
        for _ in range(2):  # the same microsecond twice: two points, not one
            await store.add_dead_letter(DeadLetter(received_at=when, source="mqtt:gw", topic="site/x",
                                                   reason="not_a_number", detail='"abc"', payload=b"\x00\xffabc"))
    assert influxd.count(measurement="dead_letter") == 2
    res = influxd.query("SELECT * FROM dead_letter")["results"][0]["series"][0]
    row = dict(zip(res["columns"], res["values"][0], strict=True))
    assert (row["source"], row["site"], row["topic"], row["reason"], row["detail"]) == (
        "mqtt:gw", SITE, "site/x", "not_a_number", '"abc"')
    assert base64.b64decode(row["payload"]) == b"\x00\xffabc"


def raw_write(url: str, body: bytes, db: str = "eaio") -> None:
    req = urllib.request.Request(f"{url}/write?" + urllib.parse.urlencode({"db": db, "precision": "u"}),
                                 data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204


async def test_field_type_conflict_is_final_with_influx_message(influxd: Influxd) -> None:
    async with InfluxV1Store(settings(influxd.url), SITE, POINTS) as store:
        # Someone else's writer made `value` a string in this shard first.
        raw_write(influxd.url, b'readings,point=x,site=hq,quality=good value="text" 1784116800000000\n')
        with pytest.raises(StoreError) as info:
            await store.write([reading("zone1.temp", 20.0, 0, "deg C")])
    assert info.value.retryable is False
    assert "HTTP 400" in str(info.value)
    assert "field type conflict" in str(info.value)


async def test_server_down_is_retryable_and_recovers(influxd: Influxd) -> None:
    async with InfluxV1Store(settings(influxd.url, timeout_s=5), SITE, POINTS) as store:
        await store.write(READINGS[:2])
        influxd.stop()
        with pytest.raises(StoreError) as info:
            await store.write(READINGS[2:4])
        assert info.value.retryable is True
        assert "cannot reach" in str(info.value)
        with pytest.raises(StoreError) as info:
            await store.latest()
        assert info.value.retryable is True
        influxd.start()  # same port, same data
        assert await store.write(READINGS[2:4]) == 2
        assert (await store.counts()).total == 4


async def test_down_at_start_does_not_refuse_to_open(tmp_path: Path) -> None:
    """A server that is not up yet at start is the buffer's business: writes fail retryably until
    it is, then the database is created before the first write that reaches it."""
    server = Influxd(tmp_path / "late")
    async with InfluxV1Store(settings(server.url), SITE, POINTS) as store:
        with pytest.raises(StoreError) as info:
            await store.write(READINGS[:1])
        assert info.value.retryable is True
        server.start()
        try:
            assert await store.write(READINGS[:1]) == 1
            assert server.count() == 1
        finally:
            server.stop()


async def test_dropped_database_is_retryable_then_recreated(influxd: Influxd) -> None:
    async with InfluxV1Store(settings(influxd.url), SITE, POINTS) as store:
        await store.write(READINGS[:1])
        influxd.query("DROP DATABASE eaio")
        with pytest.raises(StoreError) as info:
            await store.write(READINGS[1:2])
        assert info.value.retryable is True
        assert "HTTP 404" in str(info.value)
        assert await store.write(READINGS[1:2]) == 1
        assert influxd.count() == 1


async def test_refused_port_and_not_open() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = InfluxV1Store(settings(url), SITE)
    with pytest.raises(StoreError) as info:
        await store.write(READINGS[:1])  # never entered
    assert info.value.retryable is False
    assert "not open" in str(info.value)
    async with store:
        with pytest.raises(StoreError) as info:
            await store.counts()
        assert info.value.retryable is True


def test_encoder_edge_rows() -> None:
    """Rows the round trips do not reach: infinities, a row with no field at all, tag values
    line protocol cannot carry as they are (newline, trailing backslash), prefixes cached."""
    from eaio.pipeline.lineproto import LineEncoder

    enc = LineEncoder("my readings", "hq", POINTS)
    b = ReadingBatch()
    b.append("zone1.temp", math.inf, 1, "deg C", "zones-ctrl")
    b.append("zone1.temp", -math.inf, 2, "deg C", "zones-ctrl")
    b.append("x", None, 3, "a\nb\\", None)  # unvalidated failed read: no value, no reasons
    b.append("x", 5, 4, "a\nb\\", None)
    b.detail[3] = ""
    assert enc.encode(b).decode().split("\n") == [
        "my\\ readings,brick=Zone_Air_Temperature_Sensor,device=zones-ctrl,kind=temperature,point=zone1.temp,"
        'quality=good,site=hq,unit=deg\\ C,zone=zone1 reasons="" 1',
        "my\\ readings,brick=Zone_Air_Temperature_Sensor,device=zones-ctrl,kind=temperature,point=zone1.temp,"
        'quality=good,site=hq,unit=deg\\ C,zone=zone1 reasons="" 2',
        'my\\ readings,point=x,quality=good,site=hq,unit=a\\ b/ reasons="" 3',
        'my\\ readings,point=x,quality=good,site=hq,unit=a\\ b/ value=5.0,detail="" 4',
        "",
    ]
    assert enc.encode(ReadingBatch()) == b""
