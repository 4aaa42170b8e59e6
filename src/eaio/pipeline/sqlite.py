"""The embedded store: one SQLite file in WAL mode. Implements ``pipeline.base.Store``.

One connection per store, guarded by a lock, used only from worker threads
(``asyncio.to_thread``) so a slow disk never blocks the event loop. Each ``write`` is one
transaction (``executemany``). Timestamps are integer microseconds since the epoch, UTC.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from ..config import SiteConfig
from ..errors import StoreError
from ..models import DeadLetter, Quality, Reading
from .base import Aggregate, Bucket

__all__ = ["SqliteStore", "StoreCounts", "from_us", "to_us"]

T = TypeVar("T")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
SCHEMA_VERSION = 1

# vtype keeps the Python type of a value, since the REAL column would turn True into 1.0.
_FLOAT, _INT, _BOOL = 0, 1, 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    point_id  TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    value     REAL,
    vtype     INTEGER NOT NULL DEFAULT 0,
    quality   TEXT    NOT NULL,
    reasons   TEXT,
    unit      TEXT    NOT NULL DEFAULT '',
    device_id TEXT,
    detail    TEXT
);
CREATE INDEX IF NOT EXISTS readings_point_ts ON readings (point_id, ts);
CREATE TABLE IF NOT EXISTS dead_letter (
    received_at INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    topic       TEXT    NOT NULL DEFAULT '',
    reason      TEXT    NOT NULL,
    detail      TEXT    NOT NULL DEFAULT '',
    payload     BLOB
);
"""

_INSERT_DEAD = "INSERT INTO dead_letter (received_at, source, topic, reason, detail, payload) VALUES (?, ?, ?, ?, ?, ?)"
_COLUMNS = "point_id, ts, value, vtype, quality, reasons, unit, device_id, detail"
_INSERT = f"INSERT INTO readings ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The same rows from one JSON array of row arrays. `->>` (SQLite >= 3.38) is the faster way to
# take a member; json_extract works back to 3.9 where JSON1 is compiled in.
_MEMBER = "value->>{i}" if sqlite3.sqlite_version_info >= (3, 38) else "json_extract(value, '$[{i}]')"
_INSERT_JSON = (
    f"INSERT INTO readings ({_COLUMNS}) SELECT "
    + ", ".join(_MEMBER.format(i=i) for i in range(9))
    + " FROM json_each(?)"
)


def _has_json1(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True

# The newest row of each point through the (point_id, ts) index: a loose index scan walks the
# distinct point ids instead of every row.
_LATEST_ALL = f"""
WITH RECURSIVE ids(id) AS (
    SELECT MIN(point_id) FROM readings
    UNION ALL
    SELECT (SELECT MIN(point_id) FROM readings WHERE point_id > ids.id) FROM ids WHERE ids.id IS NOT NULL
)
SELECT {_COLUMNS} FROM ids JOIN readings r ON r.rowid = (
    SELECT rowid FROM readings WHERE point_id = ids.id ORDER BY ts DESC, rowid DESC LIMIT 1)
ORDER BY r.point_id
"""
_LATEST_ONE = f"SELECT {_COLUMNS} FROM readings WHERE point_id = ? ORDER BY ts DESC, rowid DESC LIMIT 1"
_RANGE = f"SELECT {_COLUMNS} FROM readings WHERE point_id = ? AND ts >= ? AND ts < ? ORDER BY ts, rowid"

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


def to_us(ts: datetime) -> int:
    """Integer microseconds since the epoch (exact, no float rounding)."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime; EAIO timestamps are timezone-aware UTC")
    return (ts - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _row(r: Reading) -> tuple[Any, ...]:
    v = r.value
    vtype = _BOOL if isinstance(v, bool) else _INT if isinstance(v, int) else _FLOAT
    if vtype == _FLOAT and v is not None and not math.isfinite(v):
        v = None  # SQLite stores NaN as NULL anyway, and JSON has no NaN or infinity
    reasons = json.dumps([str(x) for x in r.reasons]) if r.reasons else None
    return (r.point_id, to_us(r.ts), v, vtype, str(r.quality), reasons, r.unit, r.device_id, r.detail)


def _reading(row: tuple[Any, ...]) -> Reading:
    point_id, ts, value, vtype, quality, reasons, unit, device_id, detail = row
    if value is not None and vtype == _BOOL:
        value = bool(value)
    elif value is not None and vtype == _INT:
        value = int(value)
    # model_construct: these rows were validated on the way in; skip pydantic on the way out.
    return Reading.model_construct(
        point_id=point_id, value=value, unit=unit, ts=from_us(ts), quality=Quality(quality),
        reasons=json.loads(reasons) if reasons else [], device_id=device_id, detail=detail,
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
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._json1 = _has_json1(conn)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open sqlite store {self.path}: {err}", retryable=False) from err
        self._conn = conn

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
    async def write(self, readings: Sequence[Reading]) -> int:
        """Persist readings (bad ones too) in one transaction; returns how many were written."""
        if not readings:
            return 0
        rows = [_row(r) for r in readings]
        # One statement for the whole batch when SQLite has JSON1: executemany gives up and takes
        # back the GIL for every row, and under load (an MQTT network thread decoding beside us)
        # each take-back waits its turn, which made a row cost 100x more than on an idle process.
        packed = json.dumps(rows) if self._json1 else None

        def insert(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN")
            try:
                if packed is not None:
                    conn.execute(_INSERT_JSON, (packed,))
                else:
                    conn.executemany(_INSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return len(rows)

        return await self._run("write", insert)

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a message that could not become a reading, raw bytes and all, for a person to look at."""
        row = (to_us(letter.received_at), letter.source, letter.topic, letter.reason, letter.detail, letter.payload)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_DEAD, row)

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
                return [_reading(row) for row in conn.execute(_LATEST_ALL)]
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
            "WHERE point_id = :p AND ts >= :lo AND ts < :hi AND quality = 'good' AND value IS NOT NULL "
            "GROUP BY b ORDER BY b"
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
            per = dict(conn.execute("SELECT quality, COUNT(*) FROM readings GROUP BY quality").fetchall())
            return StoreCounts(total=sum(per.values()), **{q: per.get(q, 0) for q in ("good", "uncertain", "bad")})

        return await self._run("counts", query)

    async def journal_mode(self) -> str:
        return await self._run("journal_mode", lambda c: str(c.execute("PRAGMA journal_mode").fetchone()[0]))
