"""Readings as columns: the form a stream of readings takes from decoder to store.

A ``Reading`` is a pydantic object with a dict, a set and a list behind it; at tens of
thousands of readings a second, building them (and the garbage collector walking them while
they wait in a backlog) costs more than everything else the pipeline does. A ``ReadingBatch``
keeps the same fields as parallel lists of plain values, so a batch of 5,000 readings is a
dozen Python objects. Rows are ``Reading`` again wherever one is needed (``readings()``).

Timestamps are integer microseconds since the epoch, UTC (exact, cheap to compare and store).
Reasons and details are rare, so they live in sparse dicts keyed by row index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .reading import Quality, Reading, Value, trusted

__all__ = ["EPOCH", "ReadingBatch", "from_us", "to_us"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_ORDER = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
# The fields a validated Reading(point_id=, value=, unit=, ts=, device_id=) reports as set, and
# all of them: what exclude_unset keeps matches a Reading built the ordinary way.
_SET_PLAIN = frozenset({"point_id", "value", "unit", "ts", "device_id"})
_SET_ALL = frozenset(Reading.model_fields)


def to_us(ts: datetime) -> int:
    """Integer microseconds since the epoch (exact, no float rounding)."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime; EAIO timestamps are timezone-aware UTC")
    return (ts - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@dataclass(slots=True)
class ReadingBatch:
    """Parallel columns, one row per reading; every list has ``len(self)`` items."""

    point_id: list[str] = field(default_factory=list)
    value: list[Value | None] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    device_id: list[str | None] = field(default_factory=list)
    quality: list[Quality] = field(default_factory=list)
    reasons: dict[int, list[str]] = field(default_factory=dict)  # row -> reasons, rows that have any
    detail: dict[int, str] = field(default_factory=dict)  # row -> detail, rows that have one

    def __len__(self) -> int:
        return len(self.point_id)

    # -- building -----------------------------------------------------------------------------
    def append(self, point_id: str, value: Value | None, ts_us: int, unit: str = "",
               device_id: str | None = None, quality: Quality = Quality.GOOD) -> None:
        self.point_id.append(point_id)
        self.value.append(value)
        self.ts_us.append(ts_us)
        self.unit.append(unit)
        self.device_id.append(device_id)
        self.quality.append(quality)

    @classmethod
    def from_readings(cls, readings: Iterable[Reading]) -> ReadingBatch:
        b = cls()
        for i, r in enumerate(readings):
            b.append(r.point_id, r.value, to_us(r.ts), r.unit, r.device_id, r.quality)
            if r.reasons:
                b.reasons[i] = list(r.reasons)
            if r.detail is not None:
                b.detail[i] = r.detail
        return b

    def extend(self, other: ReadingBatch) -> None:
        offset = len(self)
        self.point_id += other.point_id
        self.value += other.value
        self.ts_us += other.ts_us
        self.unit += other.unit
        self.device_id += other.device_id
        self.quality += other.quality
        for i, reasons in other.reasons.items():
            self.reasons[i + offset] = list(reasons)
        for i, detail in other.detail.items():
            self.detail[i + offset] = detail

    # -- taking apart -------------------------------------------------------------------------
    def take(self, n: int) -> ReadingBatch:
        """Remove the first ``n`` rows and return them as a batch of their own."""
        if n >= len(self):
            head = ReadingBatch(self.point_id, self.value, self.ts_us, self.unit, self.device_id,
                                self.quality, self.reasons, self.detail)
            self.point_id, self.value, self.ts_us, self.unit = [], [], [], []
            self.device_id, self.quality, self.reasons, self.detail = [], [], {}, {}
            return head
        head = ReadingBatch(self.point_id[:n], self.value[:n], self.ts_us[:n], self.unit[:n],
                            self.device_id[:n], self.quality[:n],
                            {i: r for i, r in self.reasons.items() if i < n},
                            {i: d for i, d in self.detail.items() if i < n})
        del self.point_id[:n], self.value[:n], self.ts_us[:n], self.unit[:n]
        del self.device_id[:n], self.quality[:n]
        self.reasons = {i - n: r for i, r in self.reasons.items() if i >= n}
        self.detail = {i - n: d for i, d in self.detail.items() if i >= n}
        return head

    def select(self, rows: Iterable[int]) -> ReadingBatch:
        """A new batch of the given rows (in that order); reasons are copied, not shared."""
        b = ReadingBatch()
        for new, i in enumerate(rows):
            b.append(self.point_id[i], self.value[i], self.ts_us[i], self.unit[i], self.device_id[i], self.quality[i])
            if i in self.reasons:
                b.reasons[new] = list(self.reasons[i])
            if i in self.detail:
                b.detail[new] = self.detail[i]
        return b

    def copy(self) -> ReadingBatch:
        return ReadingBatch(list(self.point_id), list(self.value), list(self.ts_us), list(self.unit),
                            list(self.device_id), list(self.quality),
                            {i: list(r) for i, r in self.reasons.items()}, dict(self.detail))

    # -- quality ------------------------------------------------------------------------------
    def mark(self, i: int, quality: Quality, reason: str) -> None:
        """Lower row ``i``'s quality (never raise it) and add a reason once, as ``Reading.mark``."""
        if _ORDER[quality] > _ORDER[self.quality[i]]:
            self.quality[i] = quality
        reasons = self.reasons.setdefault(i, [])
        if reason not in reasons:
            reasons.append(reason)

    def bad_count(self) -> int:
        return self.quality.count(Quality.BAD)

    # -- back to objects ----------------------------------------------------------------------
    def reading(self, i: int) -> Reading:
        reasons, detail, quality = list(self.reasons.get(i, ())), self.detail.get(i), self.quality[i]
        plain = not reasons and detail is None and quality == Quality.GOOD
        # Every field is already valid: built without pydantic's validation (see trusted()).
        return trusted(Reading, {
            "point_id": self.point_id[i], "value": self.value[i], "unit": self.unit[i],
            "ts": from_us(self.ts_us[i]), "quality": quality, "reasons": reasons,
            "device_id": self.device_id[i], "detail": detail,
        }, _SET_PLAIN if plain else _SET_ALL)

    def readings(self) -> list[Reading]:
        return [self.reading(i) for i in range(len(self))]
