"""The agent's records in SQLite (WAL): recommendations, the decision behind each workflow run,
and every write the agent asked for (the approvals queue).

A finding that holds cycle after cycle is ONE open recommendation keyed by (kind, zone), whose
``last_seen`` and ``count`` move, so the table reads as a list of problems, not a log of
repeats. When a complete cycle no longer finds it, it is marked resolved; found again within
``reopen_within_s`` (``agent.reopen_within_s``, 15 min) the same row is reopened, so a finding
that flaps (a zone whose occupancy comes and goes) stays one problem, announced once.

Every write request is one ``approvals`` row whatever the policy said: ``executed``/``failed``
(auto), ``pending`` then ``executed``/``failed``/``rejected``/``expired`` (approve), ``denied``
or ``refused`` (the server's dry run said no). The queue and the history are the same table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field

from ..errors import StoreError
from ..models import Decision, Recommendation, utcnow

__all__ = ["ApprovalRow", "RecordedRecommendation", "Records"]

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
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    tool TEXT NOT NULL,                 -- namespaced: modbus__write_point
    point_id TEXT,
    arguments TEXT NOT NULL,            -- JSON, exactly what the tool is (or was) called with
    reason TEXT NOT NULL,
    decision_id TEXT,
    policy TEXT NOT NULL,               -- auto | approve | deny
    status TEXT NOT NULL,               -- pending | approved (the running agent writes it) | executed |
                                        -- failed | rejected | expired | denied | refused
    decided TEXT,
    note TEXT NOT NULL DEFAULT '',      -- who/why for approve and reject, the error for failed
    result TEXT,                        -- the tool's result (JSON) when it ran
    decided_by TEXT                     -- who approved or rejected it (None: the policy did)
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, created);
"""

# Columns added after the first release: (table, column, definition) added to older files on open.
MIGRATIONS = [("decisions", "model", "TEXT"), ("decisions", "workflow", "TEXT"), ("approvals", "decided_by", "TEXT")]


class ApprovalRow(BaseModel):
    """One write request: what, why, under which policy, and what became of it."""

    id: str
    created: AwareDatetime = Field(default_factory=utcnow)
    tool: str
    point_id: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    decision_id: str | None = None
    policy: str
    status: str
    decided: AwareDatetime | None = None
    note: str = ""
    result: dict[str, Any] | None = None
    decided_by: str | None = None  # who approved or rejected it; None when the policy decided

    @property
    def value(self) -> Any:
        return self.arguments.get("value")

    @property
    def duration_s(self) -> float | None:
        return self.arguments.get("duration_s")

class RecordedRecommendation(BaseModel):
    """A stored recommendation with its history."""

    recommendation: Recommendation
    status: str
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    count: int


# A finding back this soon after it was resolved is the same problem flapping (a zone whose
# occupancy comes and goes, a value near a threshold): its row is reopened, not a new one made.
REOPEN_WITHIN_S = 900.0


def dedup_key(kind: str, zone: str | None) -> str:
    return f"{kind}|{zone or ''}"


class Records:
    """``with Records(path) as rec:`` opens (and creates) the database; the constructor does no I/O."""

    def __init__(self, path: Path, *, reopen_within_s: float = REOPEN_WITHIN_S) -> None:
        self.path = path
        self.reopen_within_s = reopen_within_s
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Records:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            # WAL + NORMAL: a crash never corrupts the file; a power cut may lose the last decisions,
            # which the next cycle makes again. FULL would fsync every one (~10 ms each here).
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            _migrate(db)
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
        """Store a finding; True when it is new: no open one with the same kind and zone, and none
        resolved within ``reopen_within_s`` (that one is reopened)."""
        key, now = dedup_key(rec.kind, rec.zone), rec.ts.isoformat()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM recommendations WHERE dedup_key = ? AND status = 'open'", (key,)
            ).fetchone()
            if row is None:
                last = db.execute(
                    "SELECT id, last_seen FROM recommendations WHERE dedup_key = ? AND status = 'resolved'"
                    " ORDER BY last_seen DESC LIMIT 1", (key,)
                ).fetchone()
                recent = last is not None and (rec.ts - datetime.fromisoformat(last[1])).total_seconds() \
                    <= self.reopen_within_s
                row = last if recent else None
            if row is not None:
                db.execute(
                    "UPDATE recommendations SET status = 'open', last_seen = ?, count = count + 1, severity = ?,"
                    " message = ?, body = ? WHERE id = ?",
                    (now, rec.severity.value, rec.message, _body(rec, row[0]), row[0]),
                )
                return False
            db.execute(
                "INSERT INTO recommendations VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, 1, ?)",
                (rec.id, rec.kind, rec.zone, key, rec.severity.value, rec.message, now, now, rec.model_dump_json()),
            )
            return True

    def resolve_absent(self, present: list[Recommendation], kinds: Iterable[str] | None = None) -> int:
        """Mark resolved every open finding (of ``kinds``, default all) not in ``present`` (call only
        after a complete cycle: one that looked for every finding of those kinds)."""
        keys = {dedup_key(r.kind, r.zone) for r in present}
        wanted = set(kinds) if kinds is not None else None
        with self._tx() as db:
            rows = db.execute("SELECT dedup_key, kind FROM recommendations WHERE status = 'open'").fetchall()
            gone = [k for k, kind in rows if k not in keys and (wanted is None or kind in wanted)]
            db.executemany(
                "UPDATE recommendations SET status = 'resolved' WHERE dedup_key = ? AND status = 'open'",
                [(k,) for k in gone],
            )
        return len(gone)

    def record_decision(self, decision: Decision, *, model: str | None = None, workflow: str | None = None) -> None:
        """Store a decision; ``model`` (None: no model ran) and ``workflow`` are columns for queries."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO decisions (id, ts, trigger, mode, outcome, body, model, workflow)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (decision.id, decision.ts.isoformat(), decision.trigger, decision.mode.value, decision.outcome,
                 decision.model_dump_json(), model, workflow),
            )

    def add_approval(self, row: ApprovalRow) -> ApprovalRow:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO approvals ({_APPROVAL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.created.isoformat(), row.tool, row.point_id, json.dumps(row.arguments), row.reason,
                 row.decision_id, row.policy, row.status, row.decided.isoformat() if row.decided else None,
                 row.note, json.dumps(row.result) if row.result is not None else None, row.decided_by),
            )
        return row

    def settle_approval(
        self, approval_id: str, status: str, *, note: str = "", result: dict[str, Any] | None = None,
        only_if: str | None = "pending", by: str | None = None,
    ) -> bool:
        """Move a request to its final status; False when it was not ``only_if`` any more (a race
        between two `eaio approve` runs, or with expiry, is lost by one of them, never doubled).
        ``by``: who decided (kept when None: the agent executing an approved request)."""
        sql = ("UPDATE approvals SET status = ?, decided = ?, note = ?, result = ?,"
               " decided_by = COALESCE(?, decided_by) WHERE id = ?")
        args: list[Any] = [status, utcnow().isoformat(), note, json.dumps(result) if result is not None else None,
                           by, approval_id]
        if only_if is not None:
            sql, args = sql + " AND status = ?", [*args, only_if]
        with self._tx() as db:
            return db.execute(sql, args).rowcount == 1

    def get_approval(self, approval_id: str) -> ApprovalRow | None:
        row = self.db.execute(f"SELECT {_APPROVAL_COLS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _approval(row) if row else None

    def list_approvals(self, status: str | None = "pending", limit: int = 100) -> list[ApprovalRow]:
        sql, args = f"SELECT {_APPROVAL_COLS} FROM approvals", tuple[Any, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        rows = self.db.execute(sql + " ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [_approval(r) for r in rows]

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

    def list_decisions(self, limit: int = 100, workflow: str | None = None) -> list[Decision]:
        sql, args = "SELECT body FROM decisions", tuple[Any, ...]()
        if workflow is not None:
            sql, args = sql + " WHERE workflow = ?", (workflow,)
        rows = self.db.execute(sql + " ORDER BY ts DESC LIMIT ?", (*args, limit)).fetchall()
        return [Decision.model_validate_json(body) for (body,) in rows]

    def decision_model(self, decision_id: str) -> tuple[str | None, str | None]:
        """(model, workflow) of a recorded decision."""
        row = self.db.execute("SELECT model, workflow FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def counts(self) -> dict[str, int]:
        """Open and resolved recommendations, and decisions."""
        out = {"open": 0, "resolved": 0}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM recommendations GROUP BY status"):
            out[status] = n
        out["decisions"] = self.db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        out["pending"] = self.db.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()[0]
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


_APPROVAL_COLS = ("id, created, tool, point_id, arguments, reason, decision_id, policy, status, decided, note,"
                  " result, decided_by")


def _approval(row: tuple[Any, ...]) -> ApprovalRow:
    (aid, created, tool, point_id, arguments, reason, decision_id, policy, status, decided, note, result, by) = row
    return ApprovalRow(
        id=aid, created=datetime.fromisoformat(created), tool=tool, point_id=point_id, arguments=json.loads(arguments),
        reason=reason, decision_id=decision_id, policy=policy, status=status,
        decided=datetime.fromisoformat(decided) if decided else None, note=note,
        result=json.loads(result) if result else None, decided_by=by,
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns a file from an older release lacks (agent.db outlives upgrades)."""
    for table, column, kind in MIGRATIONS:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.commit()


def _body(rec: Recommendation, stored_id: str) -> str:
    """The latest finding, under the id it was first stored with."""
    return rec.model_copy(update={"id": stored_id}).model_dump_json()
