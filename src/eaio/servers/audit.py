"""The append-only JSON-lines audit of every write attempt.

One line per attempt (accepted, dry run, refused, failed, restored, restore_failed), flushed
as it is written so a crash loses nothing already decided.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..models import AuditRecord

__all__ = ["AuditLog", "read_audit"]

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Restores may run from a timer while a tool call writes; keep lines whole.
        self._lock = threading.Lock()

    def append(self, record: AuditRecord) -> AuditRecord:
        line = record.model_dump_json() + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        log.info(
            "audit %s %s=%r by %s: %s%s",
            record.outcome.value, record.point_id, record.requested_value, record.actor,
            record.code or "ok", f" ({record.message})" if record.message else "",
        )
        return record


def read_audit(path: Path) -> list[AuditRecord]:
    """Every record of an audit file, oldest first (an absent file has none)."""
    p = Path(path)
    if not p.exists():
        return []
    return [AuditRecord.model_validate_json(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
