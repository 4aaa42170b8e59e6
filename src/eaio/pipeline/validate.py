"""The quality validator: marks readings good / uncertain / bad. Pure: no I/O, no clock.

Rules, applied in this order to every reading of a batch (nothing is ever dropped):

- communication failure: a reading the adapter already marked (``comm_failure``, value None)
  stays bad; a None value that arrives marked good is made bad the same way;
- range: a numeric value outside ``point.limits`` is bad with ``range_high`` / ``range_low``
  (NaN is bad with ``protocol_status:nan``);
- stale: a point with no good sample for more than ``stale_after_polls`` x its poll interval
  is bad with ``stale``. The last-good times live in a ``StaleState`` that the caller (the
  ingest loop) owns and passes in, so the validator itself keeps no state between batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..config import SiteConfig
from ..models import Point, Quality, Reading, Reason

__all__ = ["PointRule", "QualityValidator", "StaleState"]

_GOOD = Quality.GOOD
_BAD = Quality.BAD


@dataclass(frozen=True, slots=True)
class PointRule:
    """What the validator needs to know of one point, flattened once for the hot path."""

    low: float | None = None
    high: float | None = None
    stale_after: timedelta | None = None


@dataclass(slots=True)
class StaleState:
    """Last good sample time per point, owned by the ingest loop across batches.

    ``first_seen`` stands in for ``last_good`` until a point has had one good sample, so a point
    that never answers also goes stale.
    """

    last_good: dict[str, datetime] = field(default_factory=dict)
    first_seen: dict[str, datetime] = field(default_factory=dict)

    def since(self, point_id: str, now: datetime) -> datetime:
        """When the point last had a good sample (or was first seen)."""
        last = self.last_good.get(point_id)
        if last is not None:
            return last
        return self.first_seen.setdefault(point_id, now)


class QualityValidator:
    """Implements ``pipeline.base.Validator``. Build it once per site; call ``validate`` per batch."""

    def __init__(self, rules: Mapping[str, PointRule]) -> None:
        self._rules = dict(rules)

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> QualityValidator:
        intervals = {p.id: p.poll_interval_s or d.poll_interval_s for d in cfg.devices for p in d.points}
        return cls.from_points(cfg.points(), intervals, cfg.ingest.stale_after_polls)

    @classmethod
    def from_points(
        cls, points: Iterable[Point], intervals: Mapping[str, float], stale_after_polls: float
    ) -> QualityValidator:
        rules: dict[str, PointRule] = {}
        for p in points:
            lim = p.limits
            interval = intervals.get(p.id)
            stale = timedelta(seconds=interval * stale_after_polls) if interval else None
            rules[p.id] = PointRule(lim.low if lim else None, lim.high if lim else None, stale)
        return cls(rules)

    def rule(self, point_id: str) -> PointRule | None:
        return self._rules.get(point_id)

    def validate(self, readings: list[Reading], now: datetime, state: StaleState | None = None) -> list[Reading]:
        """Mark quality on ``readings`` in place and return the same list.

        ``now`` is the poll time (aware UTC); ``state`` enables the stale rule and is updated
        with every good sample. Points without a rule (not in the config) keep their quality.
        """
        rules = self._rules
        empty = PointRule()
        for r in readings:
            rule = rules.get(r.point_id, empty)
            _check_value(r, rule)
            if state is not None and rule.stale_after is not None:
                _check_stale(r, rule.stale_after, now, state)
        return readings


def _check_value(r: Reading, rule: PointRule) -> None:
    v = r.value
    if v is None:
        # The adapter contract: None only when the read failed. Keep it bad, or make it so.
        if r.quality != _BAD:
            r.mark(_BAD, Reason.COMM_FAILURE)
        return
    if isinstance(v, bool):
        return  # limits mean nothing for a binary point
    if isinstance(v, float) and math.isnan(v):
        r.mark(_BAD, "protocol_status:nan")
    elif rule.high is not None and v > rule.high:
        r.mark(_BAD, Reason.RANGE_HIGH)
    elif rule.low is not None and v < rule.low:
        r.mark(_BAD, Reason.RANGE_LOW)


def _check_stale(r: Reading, stale_after: timedelta, now: datetime, state: StaleState) -> None:
    pid = r.point_id
    if r.quality == _GOOD:
        # A good sample stamped long ago (a retained or buffered message) is itself stale.
        if now - r.ts > stale_after:
            r.mark(_BAD, Reason.STALE)
            return
        last = state.last_good.get(pid)
        if last is None or r.ts > last:
            state.last_good[pid] = r.ts
        return
    if now - state.since(pid, now) > stale_after:
        r.mark(_BAD, Reason.STALE)
