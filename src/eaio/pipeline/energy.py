"""Energy semantics: meter counters to interval energy, power to demand intervals.

A meter's energy register only ever counts up, until it wraps at its register's size (a
rollover) or the meter restarts from 0 (a reset). Consumption is the difference between
consecutive good samples; this module turns those differences into energy per epoch-aligned
interval (a 900 s interval starts on a quarter hour UTC, as the SQLite store's buckets do) and
power samples into demand, the time-weighted mean power of each interval.

Three layers share one streaming core, so the live figures and the ones an agent queries later
are computed by the same code:

- pure functions over columns (``counter_steps``, ``interval_energy``, ``demand``);
- ``EnergyTracker``, which ingest feeds validated batches and which returns derived readings
  (``<point>.interval``, ``<point>.demand``) each time an interval closes;
- ``energy_between`` / ``demand_between``, the same over a store's raw history.

Coverage is the fraction of an interval spanned by consecutive samples no further apart than
``max_gap_s`` (default: one interval). A longer gap still carries a counter's energy (the
difference is measured; only when it was used is not), spread in proportion to time, but it
does not count as covered: such intervals are ``partial_interval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict

from ..config import SiteConfig
from ..errors import ConfigError, ValidationFailed
from ..models import ModbusPoint, Point, PointKind, Quality, Reading, ReadingBatch, from_us, to_us
from .base import Store

__all__ = [
    "COUNTER_JUMP",
    "COUNTER_RESET",
    "COUNTER_ROLLOVER",
    "GOOD_COVERAGE",
    "PARTIAL_INTERVAL",
    "EnergyTracker",
    "IntervalDemand",
    "IntervalEnergy",
    "Step",
    "counter_params",
    "counter_steps",
    "demand",
    "demand_between",
    "derived_points",
    "energy_between",
    "energy_sources",
    "energy_to_demand",
    "interval_energy",
    "is_counter",
]

COUNTER_RESET: Final = "counter_reset"
COUNTER_JUMP: Final = "counter_jump"
COUNTER_ROLLOVER: Final = "counter_rollover"
PARTIAL_INTERVAL: Final = "partial_interval"
GOOD_COVERAGE: Final = 0.9

# Interval flags travel as bits while intervals are open (an int OR per step, no set per interval).
_BITS: Final = {COUNTER_RESET: 1, COUNTER_JUMP: 2, COUNTER_ROLLOVER: 4}
_FLAG_ORDER: Final = (COUNTER_RESET, COUNTER_JUMP, COUNTER_ROLLOVER)
# Demand from a counter: the counter's unit -> kWh per unit. Other units (m3, MJ...) have no kW.
_TO_KWH: Final = {"kWh": 1.0, "Wh": 0.001}
# Signed registers count up to their positive limit (a meter never reports negative energy).
_REGISTER_RANGE: Final = {"uint16": 2**16, "uint32": 2**32, "int16": 2**15, "int32": 2**31}
_US: Final = 1_000_000


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Step:
    """The energy consumed between two consecutive good counter samples, and why it is unusual."""

    start_us: int
    end_us: int
    energy: float
    flag: str | None = None  # counter_rollover | counter_reset | counter_jump


class _Flagged(BaseModel):
    """An interval's figure and the flags its samples raised."""

    model_config = ConfigDict(frozen=True)

    flags: tuple[str, ...] = ()

    @property
    def reasons(self) -> list[str]:
        """The flags that make the figure uncertain (a rollover is handled exactly: not one of them)."""
        return [f for f in self.flags if f != COUNTER_ROLLOVER]

    @property
    def good(self) -> bool:
        return not self.reasons


class IntervalEnergy(_Flagged):
    """Energy used in one epoch-aligned interval [start, end)."""

    start: AwareDatetime
    end: AwareDatetime
    energy: float
    unit: str = ""
    coverage: float  # fraction of the interval spanned by samples (0..1)
    samples: int  # good samples taken inside the interval
    flags: tuple[str, ...] = ()  # partial_interval, counter_reset, counter_jump, counter_rollover


class IntervalDemand(_Flagged):
    """Time-weighted mean power of one interval [start, end); ``demand`` is None without coverage."""

    start: AwareDatetime
    end: AwareDatetime
    demand: float | None
    unit: str = "kW"
    coverage: float
    samples: int
    peak: float | None = None  # highest power sample inside the interval (power points only)
    flags: tuple[str, ...] = ()


# -- the streaming core ----------------------------------------------------------------------------
class _Counter:
    """A counter's baseline: turns each new good value into (energy, flag)."""

    __slots__ = ("glitch_base", "last", "max_step", "rollover")

    def __init__(self, rollover: float | None, max_step: float | None) -> None:
        self.rollover, self.max_step = rollover, max_step
        self.last: float | None = None
        # The value before a counter_jump: if the next sample lands just above it, the jump was a
        # one-sample glitch and the energy since then is recovered rather than read as a reset.
        self.glitch_base: float | None = None

    def step(self, cur: float) -> tuple[float, str | None] | None:
        prev, self.last = self.last, cur
        if prev is None:
            return None
        base, self.glitch_base = self.glitch_base, None
        diff = cur - prev
        max_step = self.max_step
        if diff >= 0:
            if max_step is not None and diff > max_step:
                self.glitch_base = prev
                return 0.0, COUNTER_JUMP
            return diff, None
        if base is not None and max_step is not None and 0 <= cur - base <= max_step:
            return cur - base, COUNTER_JUMP
        if self.rollover is not None:
            wrapped = self.rollover - prev + cur
            plausible = wrapped <= max_step if max_step is not None else wrapped < self.rollover / 2
            if wrapped >= 0 and plausible:
                return wrapped, COUNTER_ROLLOVER
        # The meter restarted from 0: what it shows now was used since, unless that is absurd too.
        if cur < 0 or (max_step is not None and cur > max_step):
            return 0.0, COUNTER_RESET
        return cur, COUNTER_RESET


@dataclass(slots=True)
class _Closed:
    start_us: int
    end_us: int
    amount: float  # energy, or power x microseconds
    covered_us: int
    flags: int
    samples: int
    peak: float | None


class _Intervals:
    """The open interval of one series; spreads amounts over time and closes intervals in order."""

    __slots__ = ("acc", "covered", "flags", "max_gap", "peak", "samples", "start", "touched", "width")

    def __init__(self, width_us: int, max_gap_us: int) -> None:
        self.width, self.max_gap = width_us, max_gap_us
        self.start = 0
        self._reset()

    def _reset(self) -> None:
        self.acc, self.covered, self.flags, self.samples = 0.0, 0, 0, 0
        self.peak: float | None = None
        self.touched = False

    def begin(self, ts: int) -> None:
        self.start = ts - ts % self.width  # floor, also before 1970 (Python's % takes the divisor's sign)

    def _close(self, out: list[_Closed]) -> None:
        end = self.start + self.width
        if self.touched or self.samples:  # an interval inside a gap of a power point holds nothing
            out.append(_Closed(self.start, end, self.acc, self.covered, self.flags, self.samples, self.peak))
        self.start = end
        self._reset()

    def advance(self, ts: int, out: list[_Closed]) -> None:
        """Close every interval that ends at or before ``ts`` (a sample at the end closes it)."""
        while ts >= self.start + self.width:
            self._close(out)

    def spread(self, t0: int, t1: int, amount: float, bits: int, out: list[_Closed]) -> None:
        """Add ``amount``, used evenly over [t0, t1], to the intervals it overlaps; t0 is in the open one."""
        covered = t1 - t0 <= self.max_gap
        if t1 == t0:
            self.advance(t1, out)
            self.acc += amount
            self.flags |= bits
            self.touched = True
            return
        dur, pos, rest = t1 - t0, t0, amount
        while True:
            end = self.start + self.width
            last = t1 <= end
            upto = t1 if last else end
            # The last piece takes what is left, so the pieces add up to the amount exactly.
            part = rest if last else amount * (upto - pos) / dur
            self.acc += part
            rest -= part
            if covered:
                self.covered += upto - pos
            self.flags |= bits
            self.touched = True
            if upto == end:
                self._close(out)
            if last:
                return
            pos = end

    def sample(self, value: float) -> None:
        self.samples += 1
        if self.peak is None or value > self.peak:
            self.peak = value

    def flush(self, out: list[_Closed], *, samples_only: bool = True) -> None:
        """Close the open interval (partial) at the end of a finite series."""
        if self.touched or (samples_only and self.samples):
            self._close(out)


class _CounterTrack:
    __slots__ = ("counter", "intervals", "last_ts")

    def __init__(self, width_us: int, max_gap_us: int, rollover: float | None, max_step: float | None) -> None:
        self.counter = _Counter(rollover, max_step)
        self.intervals = _Intervals(width_us, max_gap_us)
        self.last_ts: int | None = None

    def add(self, ts: int, value: float, out: list[_Closed]) -> None:
        """One good sample (ts not before the last one); closed intervals go to ``out``."""
        prev_ts, self.last_ts = self.last_ts, ts
        got = self.counter.step(value)
        if prev_ts is None or got is None:
            self.intervals.begin(ts)
        else:
            energy, flag = got
            self.intervals.spread(prev_ts, ts, energy, _BITS[flag] if flag else 0, out)
        self.intervals.sample(value)


class _PowerTrack:
    """Sample-and-hold: each power sample stands until the next one (see ``demand``)."""

    __slots__ = ("intervals", "last_ts", "last_value")

    def __init__(self, width_us: int, max_gap_us: int) -> None:
        self.intervals = _Intervals(width_us, max_gap_us)
        self.last_ts: int | None = None
        self.last_value = 0.0

    def add(self, ts: int, value: float, out: list[_Closed]) -> None:
        iv, prev_ts = self.intervals, self.last_ts
        if prev_ts is None:
            iv.begin(ts)
        elif 0 < ts - prev_ts <= iv.max_gap:
            iv.spread(prev_ts, ts, self.last_value * (ts - prev_ts), 0, out)
        else:  # a gap: nothing is known of it, so it adds neither power nor coverage
            iv.advance(ts, out)
        iv.sample(value)
        self.last_ts, self.last_value = ts, value


# -- pure functions over columns -------------------------------------------------------------------
def _usable(v: object) -> bool:
    # A failed read (None), a NaN or a bool is no sample of a meter.
    return v is not None and v.__class__ is not bool and math.isfinite(v)  # type: ignore[arg-type]


def _widths(interval_s: float, max_gap_s: float | None) -> tuple[int, int]:
    if not interval_s > 0:
        raise ValueError(f"interval_s must be positive, not {interval_s}")
    if max_gap_s is not None and not max_gap_s > 0:
        raise ValueError(f"max_gap_s must be positive, not {max_gap_s}")
    width = round(interval_s * _US)
    return width, width if max_gap_s is None else round(max_gap_s * _US)


def _check_columns(ts_us: Sequence[int], values: Sequence[float | None]) -> None:
    if len(ts_us) != len(values):
        raise ValueError(f"ts_us has {len(ts_us)} items but values has {len(values)}")
    for i in range(1, len(ts_us)):
        if ts_us[i] < ts_us[i - 1]:
            raise ValueError(f"ts_us must not decrease: ts_us[{i}] = {ts_us[i]} < ts_us[{i - 1}] = {ts_us[i - 1]}")


def _flag_names(bits: int, covered_us: int, width_us: int) -> tuple[str, ...]:
    # Integer test: coverage >= 0.9 without float rounding at exactly 90 %.
    names = [PARTIAL_INTERVAL] if covered_us * 10 < width_us * 9 else []
    return (*names, *(f for f in _FLAG_ORDER if bits & _BITS[f]))


def _energy(c: _Closed, unit: str = "") -> IntervalEnergy:
    width = c.end_us - c.start_us
    return IntervalEnergy(
        start=from_us(c.start_us), end=from_us(c.end_us), energy=c.amount, unit=unit,
        coverage=c.covered_us / width, samples=c.samples, flags=_flag_names(c.flags, c.covered_us, width),
    )


def _power(c: _Closed, unit: str = "kW") -> IntervalDemand:
    width = c.end_us - c.start_us
    return IntervalDemand(
        start=from_us(c.start_us), end=from_us(c.end_us), demand=c.amount / c.covered_us if c.covered_us else None,
        unit=unit, coverage=c.covered_us / width, samples=c.samples, peak=c.peak,
        flags=_flag_names(c.flags, c.covered_us, width),
    )


def counter_steps(
    ts_us: Sequence[int], values: Sequence[float | None], rollover: float | None = None, max_step: float | None = None
) -> list[Step]:
    """The energy of each pair of consecutive good samples of a counter (None / NaN samples skipped).

    A decrease is a rollover when ``rollover`` is known and ``rollover - prev + cur`` is plausible
    (<= ``max_step`` when given, else < rollover / 2); otherwise a reset, whose energy is ``cur``
    (the meter restarted from 0) or 0 when that is implausible too. An increase above ``max_step``
    is a glitch (``counter_jump``, energy 0); a sample back just above the value before the glitch
    recovers the energy since then (flagged ``counter_jump`` too).
    """
    _check_columns(ts_us, values)
    counter, steps, last_ts = _Counter(rollover, max_step), [], None
    for ts, v in zip(ts_us, values, strict=True):
        if not _usable(v):
            continue
        got = counter.step(float(v))  # type: ignore[arg-type]
        if got is not None and last_ts is not None:
            steps.append(Step(last_ts, ts, got[0], got[1]))
        last_ts = ts
    return steps


def interval_energy(
    ts_us: Sequence[int], values: Sequence[float | None], interval_s: float,
    rollover: float | None = None, max_step: float | None = None, *, max_gap_s: float | None = None,
) -> list[IntervalEnergy]:
    """Energy per epoch-aligned interval, from the first sample's interval to the last one's.

    A step across a boundary is split in proportion to time (linear interpolation), so the
    intervals add up to the counter's total. The last interval is open (partial) unless the
    series ends on its end.
    """
    width, gap = _widths(interval_s, max_gap_s)
    _check_columns(ts_us, values)
    track, closed = _CounterTrack(width, gap, rollover, max_step), []
    for ts, v in zip(ts_us, values, strict=True):
        if _usable(v):
            track.add(ts, float(v), closed)  # type: ignore[arg-type]
    # A counter's last sample alone in its interval says nothing of energy there: no interval.
    track.intervals.flush(closed, samples_only=False)
    return [_energy(c) for c in closed]


def demand(
    ts_us: Sequence[int], kw: Sequence[float | None], interval_s: float, *,
    max_gap_s: float | None = None, unit: str = "kW",
) -> list[IntervalDemand]:
    """Time-weighted mean power per epoch-aligned interval, with coverage and the peak sample.

    Sample-and-hold, not trapezoid: a polled reading is the value at poll time and says nothing
    of the moments between, so it is held until the next one. That invents no ramp across a load
    step (a chiller starting) and is what a meter's own block demand does with its readings; at
    poll intervals far below the demand interval the two differ by noise. The mean is over the
    covered time only; a gap longer than ``max_gap_s`` holds nothing.
    """
    width, gap = _widths(interval_s, max_gap_s)
    _check_columns(ts_us, kw)
    track, closed = _PowerTrack(width, gap), []
    for ts, v in zip(ts_us, kw, strict=True):
        if _usable(v):
            track.add(ts, float(v), closed)  # type: ignore[arg-type]
    track.intervals.flush(closed)
    return [_power(c, unit) for c in closed]


def energy_to_demand(intervals: Iterable[IntervalEnergy], energy_unit: str) -> list[IntervalDemand]:
    """Demand (kW) of a counter's intervals: energy / interval hours. The unit must be kWh or Wh."""
    to_kwh = _TO_KWH.get(energy_unit)
    if to_kwh is None:
        raise ValueError(f"demand needs a counter in kWh or Wh, not {energy_unit!r}")
    return [
        IntervalDemand(
            start=e.start, end=e.end, demand=e.energy * to_kwh * 3600 / (e.end - e.start).total_seconds(),
            coverage=e.coverage, samples=e.samples, flags=e.flags,
        )
        for e in intervals
    ]


# -- configuration -----------------------------------------------------------------------------------
def is_counter(point: Point) -> bool:
    """An accumulating meter register: a ``counter`` section, or kind energy (with defaults)."""
    return point.counter is not None or (point.kind == PointKind.ENERGY and not point.is_binary)


def counter_params(point: Point) -> tuple[float | None, float | None]:
    """(rollover, max_step) of a counter point: its ``counter`` section, else what its register implies.

    A Modbus integer register wraps at its range times ``scale`` (the offset does not change
    the span); other protocols' values carry no register size, so a drop there is a reset.
    """
    rollover = max_step = None
    if point.counter is not None:
        rollover, max_step = point.counter.rollover, point.counter.max_step
    if rollover is None and isinstance(point, ModbusPoint) and point.address.type in _REGISTER_RANGE:
        rollover = _REGISTER_RANGE[point.address.type] * abs(point.address.scale)
    return rollover, max_step


def _derived_ids(point: Point) -> list[tuple[str, PointKind, str]]:
    """(id, kind, unit) of the readings derived from a point: none when it is no energy point."""
    if point.is_binary:
        return []
    if is_counter(point):
        out = [(f"{point.id}.interval", PointKind.ENERGY, point.unit)]
        if point.unit in _TO_KWH:
            out.append((f"{point.id}.demand", PointKind.POWER, "kW"))
        return out
    if point.kind == PointKind.POWER:
        return [(f"{point.id}.demand", PointKind.POWER, point.unit)]
    return []


def energy_sources(cfg: SiteConfig) -> list[Point]:
    """The site's energy points; a derived id that is also a configured point is a config error."""
    where = {p.id: f"devices[{di}].points[{pi}].id"
             for di, d in enumerate(cfg.devices) for pi, p in enumerate(d.points)}
    problems, sources = [], []
    for p in cfg.points():
        derived = _derived_ids(p)
        for pid, _kind, _unit in derived:
            if pid in where:
                problems.append((where[pid], f"'{pid}' is the derived energy reading of '{p.id}': rename one"))
        if derived:
            sources.append(p)
    if problems:
        raise ConfigError(str(cfg.source or "site config"), problems)
    return sources


def derived_points(cfg: SiteConfig) -> list[Point]:
    """The points of the readings ``EnergyTracker`` derives, so validator, store and agent know them."""
    out = []
    for p in energy_sources(cfg):
        what = p.name or p.id
        for pid, kind, unit in _derived_ids(p):
            name = f"{what}: energy per interval" if pid.endswith(".interval") else f"{what}: demand"
            out.append(Point(id=pid, name=name, kind=kind, unit=unit, zone=p.zone, equip=p.equip,
                             device_id=p.device_id))
    return out


# -- the streaming tracker for ingest ------------------------------------------------------------------
class _Source:
    """One tracked point: its track and the derived rows it emits."""

    __slots__ = ("demand_id", "demand_per_amount", "device_id", "interval_id", "last_ts", "track", "unit")

    def __init__(self, point: Point, width_us: int, max_gap_us: int) -> None:
        self.device_id = point.device_id or None
        self.unit = point.unit
        self.last_ts = -(2**63)
        self.track: _CounterTrack | _PowerTrack
        if is_counter(point):
            self.track = _CounterTrack(width_us, max_gap_us, *counter_params(point))
            self.interval_id: str | None = f"{point.id}.interval"
            to_kwh = _TO_KWH.get(point.unit)
            self.demand_id = f"{point.id}.demand" if to_kwh is not None else None
            # kWh per interval -> kW: energy x to_kwh / hours.
            self.demand_per_amount = (to_kwh or 0.0) * 3600 * _US / width_us
        else:
            self.track = _PowerTrack(width_us, max_gap_us)
            self.interval_id, self.demand_id, self.demand_per_amount = None, f"{point.id}.demand", 0.0

    def emit(self, closed: list[_Closed], out: ReadingBatch) -> None:
        for c in closed:
            width = c.end_us - c.start_us
            names = _flag_names(c.flags, c.covered_us, width)
            reasons = [n for n in names if n != COUNTER_ROLLOVER]
            quality = Quality.UNCERTAIN if reasons else Quality.GOOD
            notes = [COUNTER_ROLLOVER] if c.flags & _BITS[COUNTER_ROLLOVER] else []
            if c.covered_us < width:
                notes.append(f"coverage {c.covered_us / width:.3f}")
            detail = "; ".join(notes) or None
            if self.interval_id is not None:
                _row(out, self.interval_id, c.amount, c.end_us, self.unit, self.device_id, quality, reasons, detail)
                if self.demand_id is not None:
                    _row(out, self.demand_id, c.amount * self.demand_per_amount, c.end_us, "kW", self.device_id,
                         quality, reasons, detail)
            elif c.covered_us and self.demand_id is not None:  # power: no covered time, no mean
                _row(out, self.demand_id, c.amount / c.covered_us, c.end_us, self.unit, self.device_id,
                     quality, reasons, detail)


def _row(out: ReadingBatch, pid: str, value: float, ts: int, unit: str, device_id: str | None,
         quality: Quality, reasons: list[str], detail: str | None) -> None:
    out.append(pid, value, ts, unit, device_id, quality)
    if reasons:
        out.reasons[len(out) - 1] = list(reasons)
    if detail is not None:
        out.detail[len(out) - 1] = detail


class EnergyTracker:
    """Per-point interval state for ingest: validated batches in, derived readings out.

    Only good, numeric readings of counter and power points count. A derived reading is emitted
    once, when the first sample at or past its interval's end arrives; its ``ts`` is the
    interval's end. A sample older than the point's last one is skipped (counted in
    ``out_of_order``): for a counter the next difference covers it, so no energy is lost. State
    lives in memory: after a restart the first interval is partial (the store's raw counter
    still gives the exact figure through ``energy_between``).
    """

    def __init__(self, points: Iterable[Point], interval_s: float = 900.0, *, max_gap_s: float | None = None) -> None:
        width, gap = _widths(interval_s, max_gap_s)
        self.interval_s = interval_s
        self.out_of_order = 0
        points = list(points)
        # Derived points handed back in (validator lists often include them) are not sources.
        derived = {pid for p in points for pid, _k, _u in _derived_ids(p)}
        self._sources: dict[str, _Source] = {
            p.id: _Source(p, width, gap) for p in points if p.id not in derived and _derived_ids(p)
        }

    @classmethod
    def from_config(cls, cfg: SiteConfig, *, max_gap_s: float | None = None) -> EnergyTracker:
        return cls(energy_sources(cfg), cfg.energy.demand_interval_s, max_gap_s=max_gap_s)

    @property
    def tracked(self) -> frozenset[str]:
        return frozenset(self._sources)

    def observe(self, batch: ReadingBatch) -> ReadingBatch:
        """Feed a validated batch; returns the derived readings of the intervals it closed (often none)."""
        out = ReadingBatch()
        sources = self._sources
        # The hot path: most batches hold no energy point, and this check is one C-level scan.
        if not sources or sources.keys().isdisjoint(batch.point_id):
            return out
        values, stamps, qualities = batch.value, batch.ts_us, batch.quality
        good = Quality.GOOD
        closed: list[_Closed] = []
        for i, pid in enumerate(batch.point_id):
            src = sources.get(pid)
            if src is None or qualities[i] != good:
                continue
            value, ts = values[i], stamps[i]
            if value is None or value.__class__ is bool or not math.isfinite(value):
                continue
            if ts < src.last_ts:
                self.out_of_order += 1
                continue
            src.last_ts = ts
            src.track.add(ts, float(value), closed)
            if closed:
                src.emit(closed, out)
                closed.clear()
        return out


# -- queries over a store ------------------------------------------------------------------------------
async def _good_samples(store: Store, point: Point, start: datetime, end: datetime,
                        margin_s: float) -> tuple[list[int], list[float]]:
    pad_us = round(margin_s * _US)
    rows = await store.history(point.id, from_us(to_us(start) - pad_us), from_us(to_us(end) + pad_us))
    # A store keyed by series (unit, device) may interleave them: one time order for the counter.
    good = sorted(
        ((to_us(r.ts), float(r.value)) for r in rows
         if isinstance(r, Reading) and r.quality == Quality.GOOD and _usable(r.value)),
        key=lambda tv: tv[0],
    )
    return [t for t, _ in good], [v for _, v in good]


_I = TypeVar("_I", IntervalEnergy, IntervalDemand)


def _overlapping(items: list[_I], start: datetime, end: datetime) -> list[_I]:
    return [i for i in items if i.start < end and i.end > start]


async def energy_between(
    store: Store, point: Point, start: datetime, end: datetime, interval_s: float = 900.0, *,
    max_gap_s: float | None = None,
) -> list[IntervalEnergy]:
    """A counter's energy per interval over [start, end) ("energy used yesterday, by quarter hour").

    Returns the epoch-aligned intervals that overlap the window (intervals with no data are left
    out). Samples up to one gap beyond both ends are read, so boundary steps split as they would live.
    """
    if not is_counter(point):
        raise ValidationFailed(f"'{point.id}' is a {point.kind} point, not an energy counter")
    if not start < end:
        raise ValidationFailed(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    _widths(interval_s, max_gap_s)
    ts, values = await _good_samples(store, point, start, end, max_gap_s or interval_s)
    rollover, max_step = counter_params(point)
    got = interval_energy(ts, values, interval_s, rollover, max_step, max_gap_s=max_gap_s)
    return _overlapping([e.model_copy(update={"unit": point.unit}) for e in got], start, end)


async def demand_between(
    store: Store, point: Point, start: datetime, end: datetime, interval_s: float = 900.0, *,
    max_gap_s: float | None = None,
) -> list[IntervalDemand]:
    """Demand per interval over [start, end) ("peak demand this month": the max of ``demand``).

    A power point: the time-weighted mean of its samples; a counter in kWh or Wh: interval
    energy / interval hours (kW).
    """
    if is_counter(point):
        if point.unit not in _TO_KWH:
            raise ValidationFailed(f"'{point.id}' counts {point.unit or 'no unit'}: demand needs kWh or Wh")
        return energy_to_demand(await energy_between(store, point, start, end, interval_s, max_gap_s=max_gap_s),
                                point.unit)
    if point.kind != PointKind.POWER:
        raise ValidationFailed(f"'{point.id}' is a {point.kind} point: demand needs a power point or an energy counter")
    if not start < end:
        raise ValidationFailed(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    _widths(interval_s, max_gap_s)
    ts, values = await _good_samples(store, point, start, end, max_gap_s or interval_s)
    return _overlapping(demand(ts, values, interval_s, max_gap_s=max_gap_s, unit=point.unit), start, end)
