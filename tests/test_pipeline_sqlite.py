"""The embedded SQLite store: writes, latest, raw and bucketed history, counts, WAL, reopening."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eaio.config import SiteConfig
from eaio.errors import StoreError
from eaio.models import DeadLetter, Quality, Reading
from eaio.pipeline import Bucket, SqliteStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)  # on a 15-minute boundary


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def good(point_id: str, value: float | int | bool, seconds: float) -> Reading:
    return Reading(point_id=point_id, value=value, ts=at(seconds), unit="degC", device_id="zones-ctrl")


def bad(point_id: str, value: float | None, seconds: float, reason: str) -> Reading:
    r = Reading(point_id=point_id, value=value, ts=at(seconds), device_id="zones-ctrl",
                detail="device_offline: no answer" if value is None else None)
    r.mark(Quality.BAD, reason)
    return r


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:  # type: ignore[misc]
    async with SqliteStore(tmp_path / "nested" / "eaio.db") as s:
        yield s


# zone1.temp: two buckets of 15 minutes, with a bad reading in each that aggregates must skip.
SERIES = [
    good("zone1.temp", 20.0, 0),
    good("zone1.temp", 21.0, 300),
    bad("zone1.temp", 99.0, 400, "range_high"),
    good("zone1.temp", 23.5, 600),
    good("zone1.temp", 22.0, 900),
    bad("zone1.temp", None, 1000, "comm_failure"),
    good("zone1.temp", 24.0, 1500),
]


async def test_write_returns_count_and_counts_per_quality(store: SqliteStore) -> None:
    assert await store.write(SERIES) == len(SERIES)
    assert await store.write([]) == 0
    c = await store.counts()
    assert (c.total, c.good, c.uncertain, c.bad) == (7, 5, 0, 2)


async def test_readings_round_trip_unchanged(store: SqliteStore) -> None:
    odd = Reading(point_id="x.flags", value=True, ts=datetime(2026, 1, 1, 0, 0, 0, 123457, tzinfo=UTC))
    counter = Reading(point_id="meter.energy", value=4_294_967_295, unit="Wh", ts=at(1))
    uncertain = Reading(point_id="x.u", value=1.25, ts=at(2), quality=Quality.UNCERTAIN,
                        reasons=["protocol_status:override"])
    written = [*SERIES, odd, counter, uncertain]
    await store.write(written)
    back = []
    for pid in ("zone1.temp", "x.flags", "meter.energy", "x.u"):
        back += await store.history(pid, T0 - timedelta(days=365), at(10_000))
    assert sorted((r.model_dump() for r in back), key=lambda d: (d["point_id"], d["ts"])) == sorted(
        (r.model_dump() for r in written), key=lambda d: (d["point_id"], d["ts"])
    )
    for r in back:
        assert r.ts.utcoffset() == timedelta(0)
    types = {r.point_id: type(r.value) for r in back}
    assert (types["x.flags"], types["meter.energy"], types["x.u"]) == (bool, int, float)


async def test_latest_per_point(store: SqliteStore) -> None:
    await store.write(SERIES)
    await store.write([good("zone2.temp", 19.0, 10), good("zone2.temp", 19.5, 20)])
    latest = {r.point_id: r for r in await store.latest()}
    assert set(latest) == {"zone1.temp", "zone2.temp"}
    assert (latest["zone1.temp"].value, latest["zone1.temp"].ts) == (24.0, at(1500))
    assert latest["zone2.temp"].value == 19.5
    only = await store.latest(["zone2.temp", "never.seen"])
    assert [(r.point_id, r.value) for r in only] == [("zone2.temp", 19.5)]


async def test_latest_may_be_a_bad_reading(store: SqliteStore) -> None:
    await store.write(SERIES[:-1])
    [r] = await store.latest(["zone1.temp"])
    assert (r.value, r.quality, r.reasons) == (None, Quality.BAD, ["comm_failure"])
    assert r.detail == "device_offline: no answer"


async def test_raw_history_is_half_open_and_keeps_bad_readings(store: SqliteStore) -> None:
    await store.write(SERIES)
    rows = await store.history("zone1.temp", at(300), at(1000))
    assert [(r.ts, r.value, r.quality) for r in rows] == [
        (at(300), 21.0, Quality.GOOD),
        (at(400), 99.0, Quality.BAD),
        (at(600), 23.5, Quality.GOOD),
        (at(900), 22.0, Quality.GOOD),
    ]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        # bucket 12:00 holds 20.0, 21.0, 23.5 (99.0 is bad); bucket 12:15 holds 22.0, 24.0 (None is bad)
        ("mean", [(20.0 + 21.0 + 23.5) / 3, (22.0 + 24.0) / 2]),
        ("min", [20.0, 22.0]),
        ("max", [23.5, 24.0]),
        ("last", [23.5, 24.0]),
        ("count", [3.0, 2.0]),
    ],
)
async def test_buckets_aggregate_good_readings_only(store: SqliteStore, agg: str, expected: list[float]) -> None:
    await store.write(SERIES)
    buckets = await store.history("zone1.temp", T0, at(1800), bucket_s=900, agg=agg)  # type: ignore[arg-type]
    assert all(isinstance(b, Bucket) for b in buckets)
    assert [b.start for b in buckets] == [T0, at(900)]
    assert [b.value for b in buckets] == pytest.approx(expected)
    assert [b.count for b in buckets] == [3, 2]


async def test_buckets_leave_out_empty_spans_and_respect_the_range(store: SqliteStore) -> None:
    await store.write([good("p.x", 1.0, 0), good("p.x", 3.0, 3600 + 10)])
    buckets = await store.history("p.x", at(60), at(7200), bucket_s=900)
    assert [(b.start, b.value, b.count) for b in buckets] == [(at(3600), 3.0, 1)]


async def test_bad_agg_is_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="agg"):
        await store.history("p.x", T0, at(60), bucket_s=60, agg="median")  # type: ignore[arg-type]


async def test_wal_mode_and_normal_sync(store: SqliteStore) -> None:
    assert await store.journal_mode() == "wal"
    # The mode lives in the file: a second, independent connection sees it too.
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[1] for r in other.execute("PRAGMA index_list(readings)")}
        assert "readings_sid_ts" in names


async def test_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "db" / "eaio.db"
    async with SqliteStore(path) as s:
        await s.write(SERIES)
        await s.add_dead_letter(letter("malformed", b"\x00not json"))
    async with SqliteStore(path) as s:
        assert (await s.counts()).total == len(SERIES)
        assert await s.dead_letter_count() == 1
        [r] = await s.latest(["zone1.temp"])
        assert r.value == 24.0


def letter(reason: str, payload: bytes) -> DeadLetter:
    return DeadLetter(received_at=datetime.now(UTC), source="mqtt:iot-gw", topic="site/iot/zone1/env",
                      reason=reason, detail="a detail", payload=payload)


async def test_dead_letters_keep_topic_reason_detail_and_raw_bytes(store: SqliteStore) -> None:
    await store.add_dead_letter(letter("malformed", b"\xff{not json"))
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT source, topic, reason, detail, payload FROM dead_letter").fetchall()
    assert rows == [("mqtt:iot-gw", "site/iot/zone1/env", "malformed", "a detail", b"\xff{not json")]


async def test_dead_letters_are_counted(store: SqliteStore) -> None:
    assert await store.dead_letter_count() == 0
    for i in range(3):
        await store.add_dead_letter(letter("unmapped", f"payload {i}".encode()))
    assert await store.dead_letter_count() == 3


async def test_a_closed_store_raises_store_error(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "eaio.db")
    with pytest.raises(StoreError) as info:
        await s.write(SERIES)
    assert info.value.retryable is False
    assert str(info.value).startswith("store_error:")


async def test_an_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        async with SqliteStore(blocker / "eaio.db"):
            pass


async def test_from_config_uses_the_data_dir(site: SiteConfig) -> None:
    async with SqliteStore.from_config(site) as s:
        await s.write(SERIES[:1])
    assert site.sqlite_path().exists()
    assert site.sqlite_path().is_relative_to(site.data_dir)


async def test_a_unit_change_is_a_new_series_of_the_same_point(store: SqliteStore) -> None:
    before = Reading(point_id="main.power", value=87.5, ts=at(0), unit="kW", device_id="iot-gw")
    after = Reading(point_id="main.power", value=87500, ts=at(60), unit="W", device_id="iot-gw")
    other = Reading(point_id="main.power", value=1.0, ts=at(30), unit="kW")  # no device
    await store.write([before, after, other])
    assert [(r.value, r.unit, r.device_id) for r in await store.history("main.power", at(0), at(61))] == [
        (87.5, "kW", "iot-gw"), (1.0, "kW", None), (87500, "W", "iot-gw")]
    assert [(r.value, r.unit) for r in await store.latest()] == [(87500, "W")]
    assert [(r.value, r.unit) for r in await store.latest(["main.power"])] == [(87500, "W")]
    [bucket] = await store.history("main.power", at(0), at(61), bucket_s=3600, agg="count")
    assert bucket.count == 3


async def test_the_reading_rows_view_reads_like_the_readings(store: SqliteStore) -> None:
    await store.write(SERIES[:3])
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT point_id, time, value, quality, reasons, unit, device_id FROM reading_rows"
                            " ORDER BY ts_us").fetchall()
    assert rows == [
        ("zone1.temp", "2026-07-15T12:00:00.000Z", 20.0, "good", None, "degC", "zones-ctrl"),
        ("zone1.temp", "2026-07-15T12:05:00.000Z", 21.0, "good", None, "degC", "zones-ctrl"),
        ("zone1.temp", "2026-07-15T12:06:40.000Z", 99.0, "bad", '["range_high"]', "", "zones-ctrl"),
    ]


V1_SCHEMA = """
CREATE TABLE readings (point_id TEXT NOT NULL, ts INTEGER NOT NULL, value REAL, vtype INTEGER NOT NULL DEFAULT 0,
    quality TEXT NOT NULL, reasons TEXT, unit TEXT NOT NULL DEFAULT '', device_id TEXT, detail TEXT);
CREATE INDEX readings_point_ts ON readings (point_id, ts);
CREATE TABLE dead_letter (received_at INTEGER NOT NULL, source TEXT NOT NULL, topic TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', payload BLOB);
PRAGMA user_version=1;
"""


async def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "eaio.db"
    us = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            ("zone1.temp", us, 21.5, 0, "good", None, "degC", "zones-ctrl", None),
            ("zone1.temp", us + 1_000_000, None, 0, "bad", '["comm_failure"]', "degC", "zones-ctrl", "timeout: x"),
            ("ahu1.fan_status", us, 1.0, 2, "uncertain", '["stale"]', "", None, None),
        ])
        conn.execute("INSERT INTO dead_letter VALUES (?, 'mqtt:gw', 't', 'malformed', '', x'00')", (us,))
    async with SqliteStore(path) as s:
        c = await s.counts()
        assert (c.total, c.good, c.uncertain, c.bad) == (3, 1, 1, 1)
        assert await s.dead_letter_count() == 1
        temp = await s.history("zone1.temp", T0, at(2))
        assert [(r.value, r.quality, r.reasons, r.unit, r.device_id, r.detail) for r in temp] == [
            (21.5, "good", [], "degC", "zones-ctrl", None),
            (None, "bad", ["comm_failure"], "degC", "zones-ctrl", "timeout: x"),
        ]
        [fan] = await s.latest(["ahu1.fan_status"])
        assert (fan.value, fan.quality, fan.device_id) == (True, "uncertain", None)
        await s.write([good("zone1.temp", 22.0, 5)])  # and it goes on from there
        assert [r.value for r in await s.latest(["zone1.temp"])] == [22.0]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "readings_v1" not in tables


async def test_a_file_from_a_newer_eaio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eaio.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        async with SqliteStore(path):
            pass
