"""The embedded store: one SQLite file in WAL mode. Implements ``pipeline.base.Store``.

One connection per store, guarded by a lock, used only from worker threads
(``asyncio.to_thread``) so a slow disk never blocks the event loop. Each ``write`` is one
transaction (one JSON statement). Timestamps are integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from ..config import SiteConfig
from ..errors import StoreError
from ..models import DeadLetter, Quality, Reading, ReadingBatch, from_us, to_us
from .base import Aggregate, Bucket

__all__ = ["SqliteStore", "StoreCounts", "from_us", "to_us"]

T = TypeVar("T")
SCHEMA_VERSION = 2
_CACHE_KIB = 64 * 1024

# flags = value type (bits 0-1: the REAL column would turn True into 1.0) + 4 x quality code.
_FLOAT, _INT, _BOOL = 0, 1, 2
_VTYPE = {float: _FLOAT, int: _INT, bool: _BOOL}
_QBITS = {Quality.GOOD: 0, Quality.UNCERTAIN: 4, Quality.BAD: 8}
_QUALITY = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)

# Input that could not become readings, with its raw bytes; the durable buffer keeps one too.
DEAD_LETTER_DDL = """
CREATE TABLE IF NOT EXISTS dead_letter (
    received_at INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    topic       TEXT    NOT NULL DEFAULT '',
    reason      TEXT    NOT NULL,
    detail      TEXT    NOT NULL DEFAULT '',
    payload     BLOB
);
"""
INSERT_DEAD_LETTER = ("INSERT INTO dead_letter (received_at, source, topic, reason, detail, payload) "
                      "VALUES (?, ?, ?, ?, ?, ?)")


def dead_letter_row(letter: DeadLetter) -> tuple[object, ...]:
    return (to_us(letter.received_at), letter.source, letter.topic, letter.reason, letter.detail, letter.payload)


# A series is one point as one device reported it in one unit (as InfluxDB keys a series by its
# tags): readings carry its small integer id, so each row and each index entry stays a few
# bytes, which is what makes 100k rows/s possible. device_id '' stands for none.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS series (
    sid       INTEGER PRIMARY KEY,
    point_id  TEXT NOT NULL,
    unit      TEXT NOT NULL DEFAULT '',
    device_id TEXT NOT NULL DEFAULT '',
    UNIQUE (point_id, unit, device_id)
);
CREATE TABLE IF NOT EXISTS readings (
    sid     INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    value   REAL,
    flags   INTEGER NOT NULL DEFAULT 0,
    reasons TEXT,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS readings_sid_ts ON readings (sid, ts);
{DEAD_LETTER_DDL}-- For people with the sqlite3 shell: readings as they were written, one row each.
CREATE VIEW IF NOT EXISTS reading_rows AS
SELECT s.point_id, strftime('%Y-%m-%dT%H:%M:%fZ', r.ts / 1e6, 'unixepoch') AS time, r.ts AS ts_us, r.value,
       CASE r.flags >> 2 WHEN 0 THEN 'good' WHEN 1 THEN 'uncertain' ELSE 'bad' END AS quality,
       r.reasons, s.unit, NULLIF(s.device_id, '') AS device_id, r.detail
FROM readings r JOIN series s ON s.sid = r.sid;
"""

# Version 1 kept the point id, unit and device id as text in every row.
_MIGRATE_V1 = """
ALTER TABLE readings RENAME TO readings_v1;
DROP INDEX IF EXISTS readings_point_ts;
{schema}
INSERT OR IGNORE INTO series (point_id, unit, device_id)
    SELECT DISTINCT point_id, unit, COALESCE(device_id, '') FROM readings_v1;
INSERT INTO readings (sid, ts, value, flags, reasons, detail)
    SELECT s.sid, r.ts, r.value,
           r.vtype + 4 * (CASE r.quality WHEN 'good' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END), r.reasons, r.detail
    FROM readings_v1 r JOIN series s
      ON s.point_id = r.point_id AND s.unit = r.unit AND s.device_id = COALESCE(r.device_id, '')
    ORDER BY r.rowid;
DROP TABLE readings_v1;
"""

_INSERT = "INSERT INTO readings (sid, ts, value, flags, reasons, detail) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_PLAIN = "INSERT INTO readings (sid, ts, value, flags) VALUES (?, ?, ?, ?)"
# The same rows from one JSON array of row arrays. `->>` (SQLite >= 3.38) is the faster way to
# take a member; json_extract works back to 3.9 where JSON1 is compiled in.
_MEMBER = "value->>{i}" if sqlite3.sqlite_version_info >= (3, 38) else "json_extract(value, '$[{i}]')"
_INSERT_JSON = (
    "INSERT INTO readings (sid, ts, value, flags, reasons, detail) SELECT "
    + ", ".join(_MEMBER.format(i=i) for i in range(6)) + " FROM json_each(?)"
)
# Most batches have no reasons or details: four members a row instead of six.
_INSERT_JSON_PLAIN = (
    "INSERT INTO readings (sid, ts, value, flags) SELECT "
    + ", ".join(_MEMBER.format(i=i) for i in range(4)) + " FROM json_each(?)"
)
_SERIES_ADD = "INSERT OR IGNORE INTO series (point_id, unit, device_id) VALUES (?, ?, ?)"
_SERIES_ONE = "SELECT sid FROM series WHERE point_id = ? AND unit = ? AND device_id = ?"


def _has_json1(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


_COLUMNS = "s.point_id, r.ts, r.value, r.flags, r.reasons, s.unit, s.device_id, r.detail"
_NEWEST = "SELECT rowid FROM readings WHERE sid = s.sid ORDER BY ts DESC, rowid DESC LIMIT 1"
# The newest row of each series through the (sid, ts) index (one seek per series); the newest
# of a point's series wins (sorted first).
_LATEST_ALL = f"""
SELECT {_COLUMNS} FROM series s JOIN readings r ON r.rowid = ({_NEWEST})
ORDER BY s.point_id, r.ts DESC, r.rowid DESC
"""
_LATEST_ONE = f"""
SELECT {_COLUMNS} FROM series s JOIN readings r ON r.rowid = ({_NEWEST})
WHERE s.point_id = ? ORDER BY r.ts DESC, r.rowid DESC LIMIT 1
"""
_RANGE = f"""
SELECT {_COLUMNS} FROM series s JOIN readings r ON r.sid = s.sid
WHERE s.point_id = ? AND r.ts >= ? AND r.ts < ? ORDER BY r.ts, r.rowid
"""

# SQLite's documented bare-column rule: with MAX(ts), `value` comes from the row holding the max.
_AGG_SQL: dict[str, str] = {
    "mean": "AVG(value)",
    "min": "MIN(value)",
    "max": "MAX(value)",
    "count": "COUNT(value)",
    "last": "value, MAX(ts)",
}


class StoreCounts(BaseModel):
    total: int = 0
    good: int = 0
    uncertain: int = 0
    bad: int = 0


_VTYPE = {float: _FLOAT, int: _INT, bool: _BOOL}


def _rows(b: ReadingBatch, sids: list[int], finite: bool = False) -> tuple[list[tuple[Any, ...]], bool]:
    """The batch as row tuples for ``readings`` (zipped in C), and whether any has reasons or a
    detail (else the rows are 4 wide: sid, ts, value, flags).

    ``finite``: non-finite floats become None (SQLite stores NaN as NULL anyway, and JSON has
    no NaN or infinity); the caller asks for it only when a batch has any.
    """
    values = b.value
    if finite:
        values = [v if v is None or v.__class__ is not float or math.isfinite(v) else None for v in values]
    vt, qb = _VTYPE.get, _QBITS.__getitem__
    flags = [vt(v.__class__, _FLOAT) | qb(q) for v, q in zip(values, b.quality, strict=True)]
    if not b.reasons and not b.detail:
        return list(zip(sids, b.ts_us, values, flags, strict=True)), False
    n = len(b)
    reasons: list[str | None] = [None] * n
    for i, rs in b.reasons.items():
        if rs:
            reasons[i] = json.dumps([str(x) for x in rs])
    details: list[str | None] = [None] * n
    for i, d in b.detail.items():
        details[i] = d
    return list(zip(sids, b.ts_us, values, flags, reasons, details, strict=True)), True


def _reading(row: tuple[Any, ...]) -> Reading:
    point_id, ts, value, flags, reasons, unit, device_id, detail = row
    vtype = flags & 3
    if value is not None and vtype == _BOOL:
        value = bool(value)
    elif value is not None and vtype == _INT:
        value = int(value)
    # model_construct: these rows were validated on the way in; skip pydantic on the way out.
    return Reading.model_construct(
        point_id=point_id, value=value, unit=unit, ts=from_us(ts), quality=_QUALITY[flags >> 2],
        reasons=json.loads(reasons) if reasons else [], device_id=device_id or None, detail=detail,
    )


def _store_error(op: str, err: sqlite3.Error) -> StoreError:
    # Locked/busy databases and I/O hiccups may pass; a broken schema or a closed store will not.
    retryable = isinstance(err, sqlite3.OperationalError)
    return StoreError(f"sqlite {op} failed: {err}", retryable=retryable)


class SqliteStore:
    """The embedded default store. ``async with SqliteStore(path) as store: ...``"""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._json1 = False  # known once open: whether batches go in as one JSON statement
        self._sids: dict[tuple[str, str, str | None], int] = {}  # (point_id, unit, device_id) -> series id

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> SqliteStore:
        return cls(cfg.sqlite_path())

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._close)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            # Each batch appends to the end of every point's run in the (point_id, ts) index: one
            # leaf page per point. With thousands of points those pages must stay cached, or every
            # batch reads them back (SQLite's default cache is 2 MB).
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            self._migrate(conn)
            self._json1 = _has_json1(conn)
            self._sids = {(p, u, d or None): sid for sid, p, u, d in conn.execute(
                "SELECT sid, point_id, unit, device_id FROM series")}
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open sqlite store {self.path}: {err}", retryable=False) from err
        self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this EAIO ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            # Current already: no write transaction. A reader opening the file while ingest writes
            # would otherwise need the write lock, and in WAL mode a read that turns into a write
            # behind a busy writer fails at once ("database is locked") instead of waiting.
            return
        old = version == 1 and conn.execute(
            "SELECT 1 FROM pragma_table_info('readings') WHERE name = 'point_id'").fetchone() is not None
        # One transaction: a migration that fails half way leaves the version-1 tables as they were.
        script = _MIGRATE_V1.format(schema=_SCHEMA) if old else _SCHEMA
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")

    def _series(self, conn: sqlite3.Connection, b: ReadingBatch) -> list[int]:
        """The series id of every row, adding series seen for the first time."""
        keys = list(zip(b.point_id, b.unit, b.device_id, strict=True))
        get = self._sids.get
        sids = [get(k) for k in keys]
        if None in sids:
            for key in dict.fromkeys(k for k, sid in zip(keys, sids, strict=True) if sid is None):
                point_id, unit, device_id = key
                conn.execute(_SERIES_ADD, (point_id, unit, device_id or ""))
                self._sids[key] = conn.execute(_SERIES_ONE, (point_id, unit, device_id or "")).fetchone()[0]
            sids = [get(k) for k in keys]
        return sids  # type: ignore[return-value]

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise StoreError(f"sqlite {op}: the store is not open", retryable=False)
                try:
                    return fn(self._conn)
                except sqlite3.Error as err:
                    raise _store_error(op, err) from err

        return await asyncio.to_thread(locked)

    # -- writes ----------------------------------------------------------------------------
    async def write(self, readings: Sequence[Reading] | ReadingBatch) -> int:
        """Persist readings (bad ones too) in one transaction; returns how many were written."""
        b = readings if isinstance(readings, ReadingBatch) else ReadingBatch.from_readings(readings)
        if not len(b):
            return 0

        def insert(conn: sqlite3.Connection) -> int:
            sids = self._series(conn, b)
            if not self._json1:
                rows, wide = _rows(b, sids, finite=True)
                conn.execute("BEGIN")
                try:
                    conn.executemany(_INSERT if wide else _INSERT_PLAIN, rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return len(rows)
            # One statement for the whole batch, and it is its own transaction (autocommit): one
            # GIL release. executemany takes the GIL back for every row, and with a busy network
            # thread beside us each take-back waits its turn (a row cost 100x more under load).
            rows, wide = _rows(b, sids)
            try:
                packed = json.dumps(rows, allow_nan=False)
            except ValueError:  # a NaN or infinity somewhere: store it as NULL
                rows, wide = _rows(b, sids, finite=True)
                packed = json.dumps(rows)
            conn.execute(_INSERT_JSON if wide else _INSERT_JSON_PLAIN, (packed,))
            return len(rows)

        return await self._run("write", insert)

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a message that could not become a reading, raw bytes and all, for a person to look at."""
        row = dead_letter_row(letter)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_DEAD_LETTER, row)

        await self._run("add_dead_letter", insert)

    async def dead_letter_count(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])

        return await self._run("dead_letter_count", query)

    # -- queries ---------------------------------------------------------------------------
    async def latest(self, point_ids: Sequence[str] | None = None) -> list[Reading]:
        """The newest reading of each point (all points when None); points never seen are left out."""

        def query(conn: sqlite3.Connection) -> list[Reading]:
            if point_ids is None:
                newest: dict[str, Reading] = {}
                for row in conn.execute(_LATEST_ALL):  # a point's newest series comes first
                    if row[0] not in newest:
                        newest[row[0]] = _reading(row)
                return list(newest.values())
            rows = (conn.execute(_LATEST_ONE, (pid,)).fetchone() for pid in point_ids)
            return [_reading(row) for row in rows if row is not None]

        return await self._run("latest", query)

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
            return await self._run("history", lambda c: [_reading(r) for r in c.execute(_RANGE, (point_id, lo, hi))])
        return await self._buckets(point_id, lo, hi, bucket_s, agg)

    async def _buckets(self, point_id: str, lo: int, hi: int, bucket_s: float, agg: Aggregate) -> list[Bucket]:
        if agg not in _AGG_SQL:
            raise ValueError(f"agg must be one of {', '.join(_AGG_SQL)}, not {agg!r}")
        width = round(bucket_s * 1_000_000)
        if width <= 0:
            raise ValueError(f"bucket_s must be positive, not {bucket_s}")
        # Buckets align to the epoch, so a bucket means the same span in every query; the double
        # modulo keeps pre-1970 timestamps in the right bucket (SQLite's % follows the dividend's sign).
        sql = (
            f"SELECT ts - ((ts % :w) + :w) % :w AS b, {_AGG_SQL[agg]}, COUNT(value) FROM readings "
            "WHERE sid IN (SELECT sid FROM series WHERE point_id = :p) AND ts >= :lo AND ts < :hi "
            "AND flags < 4 AND value IS NOT NULL GROUP BY b ORDER BY b"
        )
        args = {"w": width, "p": point_id, "lo": lo, "hi": hi}

        def query(conn: sqlite3.Connection) -> list[Bucket]:
            out = []
            for row in conn.execute(sql, args):
                value = float(row[1]) if row[1] is not None else None
                out.append(Bucket(point_id=point_id, start=from_us(row[0]), value=value, count=row[-1]))
            return out

        return await self._run("history", query)

    async def counts(self) -> StoreCounts:
        """How many readings the store holds, in total and per quality."""

        def query(conn: sqlite3.Connection) -> StoreCounts:
            per = dict(conn.execute("SELECT flags >> 2, COUNT(*) FROM readings GROUP BY 1").fetchall())
            return StoreCounts(total=sum(per.values()), good=per.get(0, 0), uncertain=per.get(1, 0), bad=per.get(2, 0))

        return await self._run("counts", query)

    async def journal_mode(self) -> str:
        return await self._run("journal_mode", lambda c: str(c.execute("PRAGMA journal_mode").fetchone()[0]))
