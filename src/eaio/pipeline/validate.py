"""The quality validator: marks readings good / uncertain / bad. Pure: no I/O, no clock.

Each point's rules are decided once (``pipeline/rules.py``: defaults per role, overrides from
``Point.rules``) and flattened into a tuple; ``validate_batch`` makes one pass over a batch's
columns. Rules, applied in this order to every reading (nothing is ever dropped, quality only
goes down, reasons accumulate):

- communication failure: a reading the adapter already marked (``comm_failure``, value None)
  stays bad; a None value that arrives marked good is made bad the same way. NaN is bad with
  ``protocol_status:nan``. Protocol quality (BACnet status flags, OPC-UA StatusCodes, Modbus
  exception responses) arrives already marked by the adapters as ``protocol_status:...``;
- unit: the point's configured unit, in canonical spelling (``units.canonical``), is the unit of
  record. A reading in another unit of the same dimension (a BACnet device reporting °F on a
  degC point) is converted and its unit set to the point's; one in a unit that cannot be
  converted keeps its value and unit and is ``uncertain`` with ``unit_mismatch`` (and no value
  rule below applies to it: its number means nothing against the point's thresholds);
- limits: a numeric value outside ``point.limits`` is ``bad`` (``range_high`` / ``range_low``);
- expected range: outside the role's default or ``rules.expected`` it is ``uncertain`` with the
  same reasons: outside what practice expects, not a broken sensor (see ``rules.py``);
- spike (``bad``, ``spike``): the change from the point's last ACCEPTED value is larger than
  ``max_rate_per_h`` x max(hours between the two, 1). The floor of one hour means samples
  seconds apart may still move by one hour's worth of the rate (noise and quantisation pass);
  a long gap allows more. A spiked sample does not move the reference, so a return to the old
  level after a spike is good again. Level shift: when 3 consecutive spiked samples agree with
  each other (each within the allowed change of the one before) the change is real (a fan
  start, a recalibration): the third is accepted and becomes the reference, the first two stay
  flagged. A point's first sample is its first reference;
- flatline (``uncertain``, ``flatline``): once a point has been sampled without a gap longer
  than the window for at least ``flatline_window_s``, a sample is flagged when max - min of the
  samples of the last window is under ``flatline_min_spread``. Monotonic deques keep the window's
  max and min at O(1) amortised per sample; samples are merged per 1/128 of the window, so a
  point holds at most ~130 entries per deque whatever its rate (a merged entry may outlive its
  sample by that slot: the spread can only be overstated, never a flatline invented);
- stale (``bad``, ``stale``): no fresh sample (one with a value, not bad: good or uncertain) for
  more than ``rules.stale_after_s``, or ``stale_after_polls`` x the poll interval; a fresh sample
  stamped that long ago is itself stale.

Spike, flatline and stale need history: it lives in a ``RuleState`` (``StaleState`` is the
same class under its old name) that the caller (the ingest loop) owns and passes in. Without a
state only the stateless rules apply. Time comes from the readings' ``ts_us`` and ``now_us``.
Spike and flatline see only samples that are numeric and not already bad (a bad sample is never
a reference and never part of a window); binary values have none of the value rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..config import SiteConfig
from ..models import Point, Quality, Reading, ReadingBatch, Reason, to_us
from . import units
from .rules import PointRule, point_rule

__all__ = ["PointRule", "QualityValidator", "RuleState", "StaleState"]

_GOOD = Quality.GOOD
_UNCERTAIN = Quality.UNCERTAIN
_BAD = Quality.BAD
_NAN = "protocol_status:nan"
UNIT_MISMATCH = Reason.UNIT_MISMATCH.value
_US = timedelta(microseconds=1)
_HOUR_US = 3_600_000_000
_SLOTS = 128  # flatline window resolution: slots per window
_LEVEL_SHIFT = 3  # consecutive agreeing spikes that make a new level

# pid -> (low, high, stale_us, expected_low, expected_high, rate_per_h, rate_per_us, window_us,
#         min_spread, slot_us, unit, needs_history)
_Flat = tuple[float | None, float | None, int | None, float | None, float | None, float | None, float,
              int | None, float, int, str, bool]


class _Track:
    """One point's history: the spike reference, level-shift candidates, the flatline window."""

    __slots__ = ("hi", "last_ts", "lo", "pending", "ref_ts", "ref_v", "run_start")

    def __init__(self) -> None:
        self.ref_v = 0.0
        self.ref_ts: int | None = None  # None: no accepted sample yet
        self.pending: list[tuple[int, float]] = []  # spiked samples that agree with each other
        self.hi: deque[tuple[int, float]] = deque()  # (ts, value), values decreasing: front = max
        self.lo: deque[tuple[int, float]] = deque()  # values increasing: front = min
        self.run_start = 0
        self.last_ts: int | None = None


@dataclass(slots=True)
class RuleState:
    """What the rules remember across batches, owned by the ingest loop.

    ``last_good``: time of each point's last fresh (not bad) sample, in microseconds since the
    epoch; ``first_seen`` stands in for it until a point has had one, so a point that never
    answers also goes stale. ``tracks``: spike references and flatline windows, per point.
    """

    last_good: dict[str, int] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)
    tracks: dict[str, _Track] = field(default_factory=dict)

    def since(self, point_id: str, now_us: int) -> int:
        """When the point last had a fresh sample (or was first seen)."""
        last = self.last_good.get(point_id)
        if last is not None:
            return last
        return self.first_seen.setdefault(point_id, now_us)


StaleState = RuleState  # the name ingest and older callers use


def _flatten(r: PointRule) -> _Flat | None:
    if not any((r.low is not None, r.high is not None, r.stale_after, r.expected_low is not None,
                r.expected_high is not None, r.unit, r.needs_history)):
        return None
    window_us = round(r.flatline_window_s * 1e6) if r.flatline_window_s else None
    return (
        r.low, r.high, r.stale_after // _US if r.stale_after else None,
        r.expected_low, r.expected_high,
        r.max_rate_per_h, (r.max_rate_per_h or 0.0) / _HOUR_US,
        window_us, r.flatline_min_spread or 0.0, max(1, (window_us or 0) // _SLOTS),
        r.unit, r.needs_history,
    )


def _level_shift(tr: _Track, v: float, ts: int, rate_h: float, rate_us: float) -> bool:
    """``v`` spiked against the reference: True if it stays a spike, False if it makes the third
    consecutive agreeing sample of a new level (the caller then accepts it)."""
    pending = tr.pending
    if pending:
        pts, pv = pending[-1]
        dt = ts - pts
        if abs(v - pv) > (rate_us * dt if dt > _HOUR_US else rate_h):
            pending.clear()
    pending.append((ts, v))
    if len(pending) < _LEVEL_SHIFT:
        return True
    pending.clear()
    return False


def _window_spread(tr: _Track, v: float, ts: int, window_us: int, slot_us: int) -> float | None:
    """Add a sample to the point's flatline window; max - min once the window is full, else None."""
    last = tr.last_ts
    if last is not None and ts < last:
        return None  # out of order: the window only moves forward
    hi, lo = tr.hi, tr.lo
    if last is None or ts - last > window_us:
        hi.clear()
        lo.clear()
        tr.run_start = ts  # a gap longer than the window: it fills again from here
    tr.last_ts = ts
    slot = ts // slot_us
    while hi and hi[-1][1] <= v:
        hi.pop()
    if hi and hi[-1][0] // slot_us == slot:
        hi[-1] = (ts, hi[-1][1])  # one entry per slot: the larger value lives to the slot's end
    else:
        hi.append((ts, v))
    while lo and lo[-1][1] >= v:
        lo.pop()
    if lo and lo[-1][0] // slot_us == slot:
        lo[-1] = (ts, lo[-1][1])
    else:
        lo.append((ts, v))
    cutoff = ts - window_us
    while hi[0][0] < cutoff:
        hi.popleft()
    while lo[0][0] < cutoff:
        lo.popleft()
    if ts - tr.run_start < window_us:
        return None
    return hi[0][1] - lo[0][1]


class QualityValidator:
    """Implements ``pipeline.base.Validator``. Build it once per site; call ``validate`` per batch.

    The work is done on columns (``validate_batch``): one pass over a ``ReadingBatch``, with
    each point's rule flattened into a tuple. ``validate`` takes ``Reading`` objects through the
    same pass.
    """

    def __init__(self, rules: Mapping[str, PointRule]) -> None:
        self._rules = dict(rules)
        self._flat: dict[str, _Flat] = {}
        for pid, r in self._rules.items():
            if (flat := _flatten(r)) is not None:
                self._flat[pid] = flat
        # (reading unit, unit of record) -> (a, b) with value * a + b, or None: cannot convert.
        self._conv: dict[tuple[str, str], tuple[float, float] | None] = {}

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> QualityValidator:
        intervals = {p.id: d.report_interval_s(p) for d in cfg.devices for p in d.points}
        return cls.from_points(cfg.points(), intervals, cfg.ingest.stale_after_polls)

    @classmethod
    def from_points(
        cls, points: Iterable[Point], intervals: Mapping[str, float], stale_after_polls: float
    ) -> QualityValidator:
        return cls({p.id: point_rule(p, intervals.get(p.id), stale_after_polls) for p in points})

    def rule(self, point_id: str) -> PointRule | None:
        return self._rules.get(point_id)

    def set_limits(self, point_id: str, low: float | None, high: float | None) -> None:
        """Give a point the range check its configuration lacks (e.g. a server's EURange)."""
        rule = replace(self._rules.get(point_id, PointRule()), low=low, high=high)
        self._rules[point_id] = rule
        flat = _flatten(rule)
        if flat is None:
            self._flat.pop(point_id, None)
        else:
            self._flat[point_id] = flat

    def validate(self, readings: list[Reading], now: datetime, state: RuleState | None = None) -> list[Reading]:
        """Mark quality on ``readings`` in place and return the same list.

        ``now`` is the poll time (aware UTC); ``state`` enables the rules that need history
        (spike, flatline, stale) and is updated. Points without a rule (not in the config) keep
        their quality. A converted reading gets its new value and unit.
        """
        self.validate_readings(readings, now, state)
        return readings

    def validate_readings(self, readings: list[Reading], now: datetime, state: RuleState | None = None) -> ReadingBatch:
        """``validate``, returning the batch the readings were validated as (the form the store and
        the event bus take), so a caller that needs both does not build it twice."""
        batch = ReadingBatch.from_readings(readings)
        for i in self._validate(batch, to_us(now), state):
            readings[i].value, readings[i].unit = batch.value[i], batch.unit[i]
        for i in batch.reasons:
            r = readings[i]
            r.quality, r.reasons = batch.quality[i], list(batch.reasons[i])
        return batch

    def validate_batch(self, batch: ReadingBatch, now_us: int, state: RuleState | None = None) -> None:
        """Mark quality on the batch's rows in place (``now_us``: microseconds since the epoch)."""
        self._validate(batch, now_us, state)

    def _conversion(self, unit: str, to: str) -> tuple[float, float] | None:
        key = (unit, to)
        if key not in self._conv:
            try:
                self._conv[key] = (1.0, 0.0) if not unit else units.linear(unit, to)
            except ValueError:
                self._conv[key] = None
        return self._conv[key]

    def _validate(self, batch: ReadingBatch, now_us: int, state: RuleState | None) -> list[int]:
        """The pass over the columns; returns the rows whose value or unit it changed."""
        flat = self._flat
        values, ts_us, unit_col, quality, mark = batch.value, batch.ts_us, batch.unit, batch.quality, batch.mark
        last_good = state.last_good if state is not None else None
        tracks = state.tracks if state is not None else None
        changed: list[int] = []
        for i, pid in enumerate(batch.point_id):
            v = values[i]
            rule = flat.get(pid)
            if rule is None:  # not configured: only what no configuration is needed for
                if v is None:
                    if quality[i] != _BAD:
                        mark(i, _BAD, Reason.COMM_FAILURE)
                elif v != v:
                    mark(i, _BAD, _NAN)
                continue
            low, high, stale_us, elo, ehi, rate_h, rate_us, win_us, spread, slot_us, unit, hist = rule
            # -- the value ---------------------------------------------------------------------
            if v is None:
                # The adapter contract: None only when the read failed. Keep it bad, or make it so.
                if quality[i] != _BAD:
                    mark(i, _BAD, Reason.COMM_FAILURE)
                if unit and unit_col[i] != unit:
                    unit_col[i] = unit
                    changed.append(i)
            elif v != v:  # NaN, without a call
                mark(i, _BAD, _NAN)
            elif v.__class__ is not bool:  # limits and rates mean nothing for a binary point
                if unit and unit_col[i] != unit:
                    conv = self._conversion(unit_col[i], unit)
                    if conv is None:
                        mark(i, _UNCERTAIN, UNIT_MISMATCH)
                        v = None  # its number means nothing against this point's thresholds
                    else:
                        a, b = conv
                        if a != 1.0 or b != 0.0:
                            v = values[i] = v * a + b
                        unit_col[i] = unit
                        changed.append(i)
                if v is not None:
                    if high is not None and v > high:
                        mark(i, _BAD, Reason.RANGE_HIGH)
                    elif low is not None and v < low:
                        mark(i, _BAD, Reason.RANGE_LOW)
                    elif ehi is not None and v > ehi:
                        mark(i, _UNCERTAIN, Reason.RANGE_HIGH)
                    elif elo is not None and v < elo:
                        mark(i, _UNCERTAIN, Reason.RANGE_LOW)
                    if hist and tracks is not None and quality[i] != _BAD:
                        tr = tracks.get(pid)
                        if tr is None:
                            tr = tracks[pid] = _Track()
                        ts = ts_us[i]
                        spiked = False
                        if rate_h is not None:
                            ref_ts = tr.ref_ts
                            if ref_ts is not None:
                                dt = ts - ref_ts
                                d = v - tr.ref_v
                                allowed = rate_us * dt if dt > _HOUR_US else rate_h
                                if d > allowed or -d > allowed:
                                    spiked = _level_shift(tr, v, ts, rate_h, rate_us)
                                elif tr.pending:
                                    tr.pending.clear()
                            if spiked:
                                mark(i, _BAD, Reason.SPIKE)
                            else:
                                tr.ref_v, tr.ref_ts = v, ts
                        if win_us is not None and not spiked:
                            s = _window_spread(tr, v, ts, win_us, slot_us)
                            if s is not None and s < spread:
                                mark(i, _UNCERTAIN, Reason.FLATLINE)
            # -- staleness ---------------------------------------------------------------------
            if last_good is None or stale_us is None:
                continue
            if quality[i] != _BAD:
                ts = ts_us[i]
                # A fresh sample stamped long ago (a retained or buffered message) is itself stale.
                if now_us - ts > stale_us:
                    mark(i, _BAD, Reason.STALE)
                elif ts > last_good.get(pid, ts - 1):
                    last_good[pid] = ts
            elif now_us - state.since(pid, now_us) > stale_us:  # type: ignore[union-attr]
                mark(i, _BAD, Reason.STALE)
        return changed
