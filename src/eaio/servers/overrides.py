"""Pending relinquishes of temporary BACnet writes, kept on disk.

A temporary write (``write_point`` with ``duration_s``) puts a command into the object's
priority array; it must be relinquished when the duration ends even if the server was stopped
or killed meanwhile, or the building would stay overridden with nobody watching. The book is a
small JSON file rewritten atomically (temporary file, fsync, rename) on every change.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, Field, ValidationError

from ..models import Value

__all__ = ["Override", "OverrideBook"]

log = logging.getLogger(__name__)


class Override(BaseModel):
    point_id: str
    priority: int = Field(ge=1, le=16)
    relinquish_at: AwareDatetime
    value: Value
    audit_id: str


class OverrideBook:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Override]:
        """Every pending relinquish; an unreadable file is kept aside (renamed), not trusted."""
        if not self.path.exists():
            return []
        try:
            rows = json.loads(self.path.read_text())
            return [Override.model_validate(r) for r in rows]
        except (OSError, ValueError, ValidationError) as err:
            aside = self.path.with_suffix(".unreadable")
            log.error("pending BACnet relinquishes in %s cannot be read (%s); moved to %s — check those points",
                      self.path, err, aside)
            os.replace(self.path, aside)
            return []

    def put(self, override: Override) -> None:
        rows = [o for o in self.load() if o.point_id != override.point_id]
        self._save([*rows, override])

    def drop(self, point_id: str, priority: int | None = None) -> None:
        """Forget the point's pending relinquish (only one at ``priority``, when given)."""
        rows = self.load()
        kept = [o for o in rows if o.point_id != point_id or (priority is not None and o.priority != priority)]
        if len(kept) != len(rows):
            self._save(kept)

    def _save(self, rows: list[Override]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump([o.model_dump(mode="json") for o in rows], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
