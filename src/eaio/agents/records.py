"""The agent's records in SQLite (WAL): recommendations and the decision behind each cycle.

A finding that holds cycle after cycle is ONE open recommendation keyed by (kind, zone), whose
``last_seen`` and ``count`` move, so the table reads as a list of problems, not a log of
repeats. When a complete cycle no longer finds it, it is marked resolved.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import AwareDatetime, BaseModel

from ..errors import StoreError
from ..models import Decision, Recommendation

__all__ = ["RecordedRecommendation", "Records"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS recommendations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    zone TEXT,
    dedup_key TEXT NOT NULL,
    status TEXT NOT NULL,               -- open | resolved
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    count INTEGER NOT NULL,
    body TEXT NOT NULL                  -- the latest Recommendation as JSON
);
CREATE UNIQUE INDEX IF NOT EXISTS recommendations_open ON recommendations(dedup_key) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    trigger TEXT NOT NULL,
    mode TEXT NOT NULL,
    outcome TEXT NOT NULL,
    body TEXT NOT NULL                  -- the Decision as JSON
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts);
"""


class RecordedRecommendation(BaseModel):
    """A stored recommendation with its history."""

    recommendation: Recommendation
    status: str
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    count: int


def dedup_key(kind: str, zone: str | None) -> str:
    return f"{kind}|{zone or ''}"


class Records:
    """``with Records(path) as rec:`` opens (and creates) the database; the constructor does no I/O."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Records:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"cannot open agent records at {self.path}: {err}", retryable=False) from err
        self._db = db
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("Records used outside 'with'")
        return self._db

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, rec: Recommendation) -> bool:
        """Store a finding; True when it is new (no open one with the same kind and zone)."""
        key, now = dedup_key(rec.kind, rec.zone), rec.ts.isoformat()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM recommendations WHERE dedup_key = ? AND status = 'open'", (key,)
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE recommendations SET last_seen = ?, count = count + 1, severity = ?, message = ?, body = ?"
                    " WHERE id = ?",
                    (now, rec.severity.value, rec.message, _body(rec, row[0]), row[0]),
                )
                return False
            db.execute(
                "INSERT INTO recommendations VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, 1, ?)",
                (rec.id, rec.kind, rec.zone, key, rec.severity.value, rec.message, now, now, rec.model_dump_json()),
            )
            return True

    def resolve_absent(self, present: list[Recommendation]) -> int:
        """Mark resolved every open finding not in ``present`` (call only after a complete cycle)."""
        keys = {dedup_key(r.kind, r.zone) for r in present}
        with self._tx() as db:
            open_keys = [k for (k,) in db.execute("SELECT dedup_key FROM recommendations WHERE status = 'open'")]
            gone = [k for k in open_keys if k not in keys]
            db.executemany(
                "UPDATE recommendations SET status = 'resolved' WHERE dedup_key = ? AND status = 'open'",
                [(k,) for k in gone],
            )
        return len(gone)

    def record_decision(self, decision: Decision) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (decision.id, decision.ts.isoformat(), decision.trigger, decision.mode.value, decision.outcome,
                 decision.model_dump_json()),
            )

    # -- reads --------------------------------------------------------------------------------
    def list_recommendations(self, status: str | None = "open") -> list[RecordedRecommendation]:
        sql = "SELECT body, status, first_seen, last_seen, count FROM recommendations"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self.db.execute(sql + " ORDER BY first_seen, kind, zone", args).fetchall()
        return [
            RecordedRecommendation(
                recommendation=Recommendation.model_validate_json(body),
                status=st,
                first_seen=datetime.fromisoformat(first),
                last_seen=datetime.fromisoformat(last),
                count=count,
            )
            for body, st, first, last, count in rows
        ]

    def list_decisions(self, limit: int = 100) -> list[Decision]:
        rows = self.db.execute("SELECT body FROM decisions ORDER BY ts DESC LIMIT ?", (limit,)).fetchall()
        return [Decision.model_validate_json(body) for (body,) in rows]

    def counts(self) -> dict[str, int]:
        """Open and resolved recommendations, and decisions."""
        out = {"open": 0, "resolved": 0}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM recommendations GROUP BY status"):
            out[status] = n
        out["decisions"] = self.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        return out

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: commit on success, roll back on error, sqlite errors as StoreError."""
        try:
            with self.db as db:
                yield db
        except sqlite3.OperationalError as err:
            # "database is locked" and friends pass; a broken schema or disk does not.
            raise StoreError(f"agent records: {err}", retryable="locked" in str(err)) from err
        except sqlite3.Error as err:
            raise StoreError(f"agent records: {err}", retryable=False) from err


def _body(rec: Recommendation, stored_id: str) -> str:
    """The latest finding, under the id it was first stored with."""
    return rec.model_copy(update={"id": stored_id}).model_dump_json()
