"""Readings as InfluxDB line protocol, and rows read back from InfluxDB as readings.

The schema (the same on InfluxDB 1.x and 2.x)::

    readings,brick=<Brick class>,device=<device id>,equip=<equip>,kind=<point kind>,point=<point id>,
             quality=<good|uncertain|bad>,site=<site id>,unit=<unit>,zone=<zone>
             value=<float>,reasons="<r1,r2>",detail="<text>" <microseconds since the epoch, UTC>

- measurement: ``storage.influxdb.measurement`` (default ``readings``): one measurement for every
  point, so a dashboard filters by tag (``point``, ``site``, ``kind``, ``brick``...).
- tags, sorted by key (InfluxDB's own order: its parser does less work): ``device``, ``kind``,
  ``point``, ``quality``, ``site``, ``unit``; plus ``brick``, ``zone`` and ``equip`` when the point's
  configuration gives them. A reading of a point the configuration does not know has only
  ``device``, ``point``, ``quality``, ``site`` and ``unit``. An empty tag (no unit, no device) is left
  out, as line protocol requires; it reads back as ``""`` / ``None``.
- fields: ``value`` is always a float (a bool is 1.0 / 0.0, an int becomes a float): InfluxDB fixes
  a field's type per shard, and one measurement holds every point, so one type for all.
  ``reasons`` (comma-joined) only when there are any; ``detail`` only when set. A reading whose
  value is None (a failed read: it has the reason ``comm_failure``), NaN or infinite has no
  ``value`` field (InfluxDB has no NaN; SQLite stores them as NULL too). A row must have a field:
  one with neither value nor reasons nor detail gets ``reasons=""``.
- timestamp: integer microseconds (``precision=u`` on 1.x, ``us`` on 2.x).
- Writing the same reading twice is one point: InfluxDB overwrites the same series key + time
  (quality is a tag, and a buffered reading's quality never changes).
- Read back: ``value`` is a bool for binary points (``Point.is_binary``), a float otherwise;
  quality, reasons, detail, unit and device come back as written.

Line protocol cannot carry everything a Python string can in a tag: in tag values (units, device
ids, unknown point ids) a newline becomes a space, and a backslash at the end of the value or before
``,``, ``=`` or a space (which InfluxDB would read as an escape) becomes ``/``. Field strings
(``detail``) keep everything, newlines and quotes included.

Dead letters go to the measurement ``dead_letter``: tags ``site``, ``source``; fields ``reason``,
``detail``, ``topic``, ``payload`` (base64), at the received time in nanoseconds (precision ``n``)
with a sequence number in the sub-microsecond digits, so two letters received in the same
microsecond are two points.

Encoding is on the hot path (5,000 readings a write): each (point, unit, device, quality) gets
its escaped ``measurement,tags`` prefix once, and a batch is a join of prefix, value and time.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..models import DeadLetter, Point, Quality, Reading, ReadingBatch, from_us, to_us
from ..models.reading import trusted

__all__ = [
    "DEAD_LETTER",
    "LineEncoder",
    "escape_field_string",
    "escape_measurement",
    "escape_tag",
    "reading_from_row",
]

DEAD_LETTER = "dead_letter"
_QUALITY = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}
_ODD_REPRS = frozenset({"True", "False", "None", "nan", "inf", "-inf"})
_TAG_SPECIAL = re.compile(r"[,= ]")
# A backslash InfluxDB 1.x would take as an escape (or that ends a tag and escapes the separator).
_TAG_BACKSLASH = re.compile(r"\\(?=[,= ]|$)")


def escape_measurement(name: str) -> str:
    return name.replace("\n", " ").replace(",", "\\,").replace(" ", "\\ ")


def escape_tag(text: str) -> str:
    """A tag key or value: commas, equals signs and spaces escaped (see the module docstring)."""
    text = text.replace("\n", " ").replace("\r", " ")
    if "\\" in text:
        text = _TAG_BACKSLASH.sub("/", text)
    if _TAG_SPECIAL.search(text) is None:
        return text
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_field_string(text: str) -> str:
    """A string field value, quotes included."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(v: object) -> str | None:
    """The ``value`` field's text, or None when the reading has no value field."""
    if v is None:
        return None
    if v is True:
        return "1.0"
    if v is False:
        return "0.0"
    text = repr(float(v))  # type: ignore[arg-type]
    # repr of a finite float ends in a digit; 'nan', 'inf' and '-inf' do not.
    return None if text[-1] in "nf" else text


class LineEncoder:
    """Encodes readings for one site; ``points`` give the tags from the configuration."""

    def __init__(self, measurement: str, site_id: str, points: Iterable[Point] = ()) -> None:
        self.measurement = measurement
        self.site_id = site_id
        self._head = escape_measurement(measurement)
        # Tags a known point adds to every reading: kind always, brick/zone/equip when set.
        self._point_tags: dict[str, dict[str, str]] = {}
        for p in points:
            tags = {"kind": str(p.kind)}
            for key in ("brick", "zone", "equip"):
                if (tag := getattr(p, key)) is not None and tag != "":
                    tags[key] = tag
            self._point_tags[p.id] = tags
        self._prefixes: dict[tuple[str, str, str | None, Quality], str] = {}
        self._dead_seq = 0

    def prefix(self, point_id: str, unit: str, device_id: str | None, quality: Quality) -> str:
        """``measurement,tag=...`` of a series, escaped; computed once per series."""
        key = (point_id, unit, device_id, quality)
        got = self._prefixes.get(key)
        if got is None:
            tags = dict(self._point_tags.get(point_id, ()))
            tags.update(point=point_id, quality=str(quality), site=self.site_id, unit=unit, device=device_id or "")
            got = self._head + "".join(
                f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v != ""
            )
            self._prefixes[key] = got
        return got

    def encode(self, b: ReadingBatch) -> bytes:
        """The batch as line protocol, one line per reading, in order."""
        if not len(b):
            return b""
        # map() over C-level callables: at 5,000 rows a Python-level loop body is the cost.
        keys = zip(b.point_id, b.unit, b.device_id, b.quality, strict=True)
        prefixes = list(map(self._prefixes.get, keys))
        if None in prefixes:
            prefixes = [p or self.prefix(*k) for p, k in
                        zip(prefixes, zip(b.point_id, b.unit, b.device_id, b.quality, strict=True), strict=True)]
        # repr() is line protocol's form of a float, and of an int read as a float (no `i`
        # suffix); bools, None, NaN and infinities are the reprs that need a line of their own.
        values = list(map(repr, b.value))
        lines = list(map("{} value={} {}".format, prefixes, values, b.ts_us))
        odd = set(b.reasons) | set(b.detail)
        if not _ODD_REPRS.isdisjoint(values):
            odd.update(i for i, text in enumerate(values) if text in _ODD_REPRS)
        for i in odd:
            lines[i] = f"{prefixes[i]} {self._fields(b.value[i], b.reasons.get(i), b.detail.get(i))} {b.ts_us[i]}"
        lines.append("")  # a trailing newline: bodies of several batches concatenate cleanly
        return "\n".join(lines).encode()

    @staticmethod
    def _fields(value: object, reasons: list[str] | None, detail: str | None) -> str:
        parts = []
        if (text := _value(value)) is not None:
            parts.append("value=" + text)
        if reasons:
            parts.append("reasons=" + escape_field_string(",".join(str(r) for r in reasons)))
        if detail is not None:
            parts.append("detail=" + escape_field_string(detail))
        return ",".join(parts) or 'reasons=""'

    def encode_readings(self, readings: Iterable[Reading]) -> bytes:
        return self.encode(ReadingBatch.from_readings(readings))

    def dead_letter(self, letter: DeadLetter) -> bytes:
        """One ``dead_letter`` line, timestamp in nanoseconds (write it with precision ``n``)."""
        self._dead_seq = (self._dead_seq + 1) % 1000
        ts_ns = to_us(letter.received_at) * 1000 + self._dead_seq
        tags = f",site={escape_tag(self.site_id)}" if self.site_id else ""
        if letter.source:
            tags += f",source={escape_tag(letter.source)}"
        fields = ",".join((
            "reason=" + escape_field_string(letter.reason),
            "detail=" + escape_field_string(letter.detail),
            "topic=" + escape_field_string(letter.topic),
            "payload=" + escape_field_string(base64.b64encode(letter.payload).decode()),
        ))
        return f"{escape_measurement(DEAD_LETTER)}{tags} {fields} {ts_ns}\n".encode()


def reading_from_row(row: Mapping[str, Any], ts: int | datetime, binary: frozenset[str] | set[str]) -> Reading:
    """A reading from one row read back (tags and fields by name, missing ones absent or None).

    ``ts``: microseconds since the epoch, or an aware datetime; ``binary``: ids of binary points.
    """
    point_id = str(row["point"])
    value = row.get("value")
    if value is not None:
        value = bool(value) if point_id in binary else float(value)
    reasons = row.get("reasons")
    quality = _QUALITY.get(str(row.get("quality") or "good"), Quality.BAD)
    when = ts if isinstance(ts, datetime) else from_us(int(ts))
    # Rows come from our own writes: build without pydantic's validation (see trusted()).
    return trusted(Reading, {
        "point_id": point_id, "value": value, "unit": row.get("unit") or "", "ts": when,
        "quality": quality, "reasons": str(reasons).split(",") if reasons else [],
        "device_id": row.get("device") or None, "detail": row.get("detail"),
    })
