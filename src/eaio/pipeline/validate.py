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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..config import SiteConfig
from ..models import Point, Quality, Reading, ReadingBatch, Reason, to_us

__all__ = ["PointRule", "QualityValidator", "StaleState"]

_GOOD = Quality.GOOD
_BAD = Quality.BAD
_NAN = "protocol_status:nan"


@dataclass(frozen=True, slots=True)
class PointRule:
    """What the validator needs to know of one point, flattened once for the hot path."""

    low: float | None = None
    high: float | None = None
    stale_after: timedelta | None = None


@dataclass(slots=True)
class StaleState:
    """Last good sample time per point (microseconds since the epoch), owned by the ingest
    loop across batches.

    ``first_seen`` stands in for ``last_good`` until a point has had one good sample, so a point
    that never answers also goes stale.
    """

    last_good: dict[str, int] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)

    def since(self, point_id: str, now_us: int) -> int:
        """When the point last had a good sample (or was first seen)."""
        last = self.last_good.get(point_id)
        if last is not None:
            return last
        return self.first_seen.setdefault(point_id, now_us)


class QualityValidator:
    """Implements ``pipeline.base.Validator``. Build it once per site; call ``validate`` per batch.

    The work is done on columns (``validate_batch``): one pass over a ``ReadingBatch``, with
    each point's rule flattened into a tuple, so a stream of 100k readings/s costs well under a
    microsecond per reading. ``validate`` takes ``Reading`` objects through the same pass.
    """

    def __init__(self, rules: Mapping[str, PointRule]) -> None:
        self._rules = dict(rules)
        # pid -> (low, high, stale_after_us or None); only points with something to check.
        self._flat: dict[str, tuple[float | None, float | None, int | None]] = {
            pid: (r.low, r.high, r.stale_after // timedelta(microseconds=1) if r.stale_after else None)
            for pid, r in self._rules.items()
            if r.low is not None or r.high is not None or r.stale_after is not None
        }

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

    def set_limits(self, point_id: str, low: float | None, high: float | None) -> None:
        """Give a point the range check its configuration lacks (e.g. a server's EURange)."""
        old = self._rules.get(point_id, PointRule())
        rule = PointRule(low, high, old.stale_after)
        self._rules[point_id] = rule
        self._flat[point_id] = (low, high, rule.stale_after // timedelta(microseconds=1) if rule.stale_after else None)

    def validate(self, readings: list[Reading], now: datetime, state: StaleState | None = None) -> list[Reading]:
        """Mark quality on ``readings`` in place and return the same list.

        ``now`` is the poll time (aware UTC); ``state`` enables the stale rule and is updated
        with every good sample. Points without a rule (not in the config) keep their quality.
        """
        batch = ReadingBatch.from_readings(readings)
        self.validate_batch(batch, to_us(now), state)
        for i in batch.reasons:
            r = readings[i]
            r.quality, r.reasons = batch.quality[i], batch.reasons[i]
        return readings

    def validate_batch(self, batch: ReadingBatch, now_us: int, state: StaleState | None = None) -> None:
        """Mark quality on the batch's rows in place (``now_us``: microseconds since the epoch)."""
        flat = self._flat
        quality, ts_us, mark = batch.quality, batch.ts_us, batch.mark
        last_good = state.last_good if state is not None else None
        for i, (pid, v) in enumerate(zip(batch.point_id, batch.value, strict=True)):
            rule = flat.get(pid)
            # -- the value ---------------------------------------------------------------------
            if v is None:
                # The adapter contract: None only when the read failed. Keep it bad, or make it so.
                if quality[i] != _BAD:
                    mark(i, _BAD, Reason.COMM_FAILURE)
            elif v != v:  # NaN, without a call
                mark(i, _BAD, _NAN)
            elif rule is not None and v.__class__ is not bool:  # limits mean nothing for a binary point
                low, high, _ = rule
                if high is not None and v > high:
                    mark(i, _BAD, Reason.RANGE_HIGH)
                elif low is not None and v < low:
                    mark(i, _BAD, Reason.RANGE_LOW)
            # -- staleness ---------------------------------------------------------------------
            if last_good is None or rule is None or rule[2] is None:
                continue
            stale_after = rule[2]
            if quality[i] == _GOOD:
                ts = ts_us[i]
                # A good sample stamped long ago (a retained or buffered message) is itself stale.
                if now_us - ts > stale_after:
                    mark(i, _BAD, Reason.STALE)
                elif ts > last_good.get(pid, ts - 1):
                    last_good[pid] = ts
            elif now_us - state.since(pid, now_us) > stale_after:  # type: ignore[union-attr]
                mark(i, _BAD, Reason.STALE)
