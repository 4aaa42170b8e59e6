"""MQTT payloads -> readings and dead letters. Pure: no I/O, no clock, never raises.

``PayloadDecoder(device).decode_into(topic, payload, ts_us, batch, dead)`` matches the topic
against the device's subscriptions, fills point-id templates from the wildcard captures,
parses the payload once and appends its readings to a columnar ``ReadingBatch``. One message
may give several readings and dead letters (one per reason). ``decode`` does the same for one
message and returns ``Reading`` objects (tests, one-off use).

Speed matters here (a broker delivers tens of thousands of messages a second): subscriptions
are compiled once, the resolution of a topic to (subscription, point) pairs is cached per
topic, ``json.loads`` runs once per message, and no object is built per reading.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from ..models import (
    DeadLetter,
    MqttDevice,
    MqttPoint,
    MqttSubscription,
    Quality,
    Reading,
    ReadingBatch,
    Value,
    from_us,
    to_us,
)
from ..models.mqtt import wildcard_captures

__all__ = ["Decoded", "PayloadDecoder", "decode_message", "parse_timestamp"]

_TOPIC_CACHE_SIZE = 4096
_BOOL_WORDS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}
_Path = tuple[str | int, ...]


class Decoded(NamedTuple):
    readings: list[Reading]
    dead_letters: list[DeadLetter]


class _Bad(Exception):
    """One value could not be used: ``reason`` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_GOOD = Quality.GOOD


def _compile_path(path: str) -> _Path:
    # "data.0.value": digits index lists (and still work as dict keys, see _get).
    return tuple(int(k) if k.isdigit() else k for k in path.split("."))


def _get(doc: Any, path: _Path) -> Any:
    for key in path:
        if isinstance(doc, dict):
            if key not in doc:
                key = str(key)  # an int key from the path may name a dict member "0"
            doc = doc[key]
        elif isinstance(doc, list) and isinstance(key, int):
            doc = doc[key]
        else:
            raise KeyError(key)
    return doc


def parse_timestamp(raw: Any) -> datetime:
    """ISO 8601 (naive = UTC), epoch seconds, or epoch milliseconds when above 1e11."""
    if isinstance(raw, str) and raw.strip():
        text = raw.strip()
        try:
            number: float | None = float(text)
        except ValueError:
            number = None
        if number is None:
            ts = datetime.fromisoformat(text)
            return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        raw = number
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):
        return datetime.fromtimestamp(raw / 1000 if raw > 1e11 else raw, UTC)
    raise ValueError(f"{raw!r} is neither ISO 8601 nor epoch seconds/milliseconds")


def _number(point: MqttPoint, raw: Any, where: str) -> Value:
    """A JSON value as the point's value; strings holding numbers/bool words are accepted."""
    if point.value_type == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int | float) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[raw.strip().lower()]
        raise _Bad("not_a_number", f"{where}: {raw!r} is not a boolean for {point.id}")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise _Bad("not_a_number", f"{where}: {raw!r} is not a number for {point.id}")
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise _Bad("not_a_number", f"{where}: {raw!r} is not a number for {point.id}") from None
    if not math.isfinite(raw):
        raise _Bad("not_a_number", f"{where}: {raw!r} is not a finite number for {point.id}")
    return raw


def _plain(point: MqttPoint, text: str) -> Value:
    """A whole payload that is one value: '21.5', '-3', 'true'/'on'/'1' for bool points."""
    if point.value_type == "bool":
        word = text.strip()
        value = _BOOL_WORDS.get(word.lower())
        if value is None:
            raise _Bad("malformed", f"{word[:40]!r} is not a boolean for {point.id}")
        return value
    # float() first: most sensors send decimals, and a failed int() would cost an exception.
    try:
        number: Value = float(text)
    except ValueError:
        raise _Bad("malformed", f"{text.strip()[:40]!r} is not a number for {point.id}") from None
    if number - number != 0:  # inf or NaN
        raise _Bad("malformed", f"{text.strip()[:40]!r} is not a finite number for {point.id}")
    if number.is_integer() and text.strip().lstrip("+-").isdigit():
        number = int(text)  # '-3' stays an integer (exactly, past 2**53 too)
    return number


@dataclass(frozen=True, slots=True)
class _Sub:
    """A compiled subscription."""

    spec: MqttSubscription
    wildcard: bool
    targets: tuple[tuple[_Path | None, str, str], ...]  # (json path or None: whole value, path as written, id template)
    timestamp: _Path | None


@dataclass(frozen=True, slots=True)
class _Match:
    """A subscription matched by one topic, its templates resolved to declared points."""

    sub: _Sub
    # (json path or None, the path as written, point id, point or None when not declared,
    #  whether the point takes JSON numbers as they are: a number point)
    targets: tuple[tuple[_Path | None, str, str, MqttPoint | None, bool], ...]


def _compile(spec: MqttSubscription) -> _Sub:
    if spec.fields is not None:
        targets = tuple((_compile_path(path), path, tpl) for path, tpl in spec.fields.items())
    else:
        targets = ((_compile_path(spec.path) if spec.path else None, spec.path or "payload", spec.point or ""),)
    wildcard = any(level in ("+", "#") for level in spec.topic.split("/"))
    ts = _compile_path(spec.timestamp) if spec.timestamp else None
    return _Sub(spec, wildcard, targets, ts)


def _fill(template: str, captures: Sequence[str]) -> str:
    if "{" not in template:
        return template
    for n, value in enumerate(captures, 1):
        template = template.replace(f"{{{n}}}", value)
    return template


class PayloadDecoder:
    """Decodes the messages of one MQTT device. Build once per device; ``decode`` is pure."""

    def __init__(self, device: MqttDevice) -> None:
        self.device = device
        self.source = f"mqtt:{device.id}"
        self.max_bytes = device.connection.max_payload_bytes
        self._points = {p.id: p for p in device.points}
        subs = [_compile(s) for s in device.subscriptions]
        self._exact: dict[str, list[_Sub]] = {}
        for s in subs:
            if not s.wildcard:
                self._exact.setdefault(s.spec.topic, []).append(s)
        self._wild = [s for s in subs if s.wildcard]
        self._topics: dict[str, tuple[_Match, ...]] = {}

    def matches(self, topic: str) -> tuple[_Match, ...]:
        """The subscriptions ``topic`` falls under, with resolved points (cached per topic)."""
        found = self._topics.get(topic)
        if found is not None:
            return found
        matched: list[_Match] = []
        for sub in self._exact.get(topic, ()):
            matched.append(self._resolve(sub, ()))
        for sub in self._wild:
            captures = wildcard_captures(sub.spec.topic, topic)
            if captures is not None:
                matched.append(self._resolve(sub, captures))
        if len(self._topics) >= _TOPIC_CACHE_SIZE:
            self._topics.clear()  # many distinct topics (e.g. a '#' over a big fleet): start over
        found = self._topics[topic] = tuple(matched)
        return found

    def _resolve(self, sub: _Sub, captures: Sequence[str]) -> _Match:
        targets = []
        for path, name, template in sub.targets:
            point_id = _fill(template, captures)
            point = self._points.get(point_id)
            targets.append((path, name, point_id, point, point is not None and point.value_type == "number"))
        return _Match(sub, tuple(targets))

    def dead(self, topic: str, payload: bytes, received: datetime, reason: str, detail: str) -> DeadLetter:
        return DeadLetter.model_construct(
            received_at=received, source=self.source, topic=topic, reason=reason, detail=detail, payload=payload,
        )

    def decode(self, topic: str, payload: bytes, received: datetime) -> Decoded:
        """One message's readings (ts = payload time, else ``received``) and dead letters."""
        batch: ReadingBatch = ReadingBatch()
        dead: list[DeadLetter] = []
        self.decode_into(topic, payload, to_us(received), batch, dead)
        return Decoded(batch.readings(), dead)

    def decode_into(self, topic: str, payload: bytes, received_us: int, batch: ReadingBatch,
                    dead: list[DeadLetter]) -> int:
        """Append the message's readings to ``batch`` and its dead letters to ``dead``; returns
        how many readings it gave. Never raises."""
        before = len(batch)
        try:
            self._decode(topic, payload, received_us, batch, dead)
        except Exception as err:  # a decoder bug must cost one message, not the stream
            del batch.point_id[before:], batch.value[before:], batch.ts_us[before:]
            del batch.unit[before:], batch.device_id[before:], batch.quality[before:]
            dead.append(self.dead(topic, payload, from_us(received_us), "malformed", f"decoder error: {err!r}"))
        return len(batch) - before

    def _decode(self, topic: str, payload: bytes, received_us: int, batch: ReadingBatch,
                dead: list[DeadLetter]) -> None:
        if len(payload) > self.max_bytes:
            # Checked before parsing; only the first max_bytes are kept so that a flood of huge
            # messages cannot fill memory or the dead-letter table.
            detail = f"{len(payload)} bytes > max_payload_bytes {self.max_bytes} (first {self.max_bytes} kept)"
            dead.append(self.dead(topic, payload[: self.max_bytes], from_us(received_us), "too_large", detail))
            return
        matches = self._topics.get(topic) or self.matches(topic)
        if not matches:
            dead.append(self.dead(topic, payload, from_us(received_us), "unmapped",
                                  "no subscription matches the topic"))
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError as err:
            dead.append(self.dead(topic, payload, from_us(received_us), "malformed", f"not UTF-8: {err.reason}"))
            return
        problems: dict[str, list[str]] = {}
        doc: Any = _UNPARSED
        for match in matches:
            if match.sub.spec.format == "json" and doc is _UNPARSED:
                try:
                    doc = json.loads(text)
                except ValueError as err:
                    problems.setdefault("malformed", []).append(f"not JSON: {err}")
                    doc = _INVALID
            if doc is _INVALID and match.sub.spec.format == "json":
                continue
            self._apply(match, text, doc, received_us, batch, problems)
        for reason, details in problems.items():
            dead.append(self.dead(topic, payload, from_us(received_us), reason, "; ".join(details)))

    def _apply(
        self, match: _Match, text: str, doc: Any, received_us: int,
        batch: ReadingBatch, problems: dict[str, list[str]],
    ) -> None:
        sub = match.sub
        ts = received_us
        if sub.timestamp is not None:
            try:
                ts = to_us(parse_timestamp(_get(doc, sub.timestamp)))
            except (KeyError, IndexError, TypeError):
                problems.setdefault("bad_timestamp", []).append(f"no timestamp at '{sub.spec.timestamp}'")
                return
            except (ValueError, OverflowError, OSError) as err:
                problems.setdefault("bad_timestamp", []).append(f"'{sub.spec.timestamp}': {err}")
                return
        number = sub.spec.format == "number"
        ids, values, units, devices = batch.point_id, batch.value, batch.unit, batch.device_id
        n = 0
        for path, name, point_id, point, plain_number in match.targets:
            if point is None:
                problems.setdefault("unmapped", []).append(f"point '{point_id}' is not declared")
                continue
            try:
                if number:
                    value = _plain(point, text)
                else:
                    raw = doc
                    if path is not None:
                        try:
                            for key in path:
                                raw = raw[key]
                        except (KeyError, IndexError, TypeError):
                            raw = _get_field(doc, path, name)  # slow path: "0" as a dict key, clear errors
                    kind = raw.__class__
                    # Fast path for the usual case: a finite JSON number for a number point.
                    if plain_number and (kind is float or kind is int) and raw - raw == 0:
                        value = raw
                    else:
                        value = _number(point, raw, name)
            except _Bad as bad:
                problems.setdefault(bad.reason, []).append(bad.detail)
                continue
            ids.append(point_id)
            values.append(value)
            units.append(point.unit)
            devices.append(point.device_id)
            n += 1
        if n:
            batch.ts_us += [ts] * n
            batch.quality += [_GOOD] * n


def _get_field(doc: Any, path: _Path, name: str) -> Any:
    try:
        return _get(doc, path)
    except (KeyError, IndexError, TypeError):
        raise _Bad("missing_field", f"no field '{name}'") from None


_UNPARSED: Any = object()
_INVALID: Any = object()


def decode_message(device: MqttDevice, topic: str, payload: bytes, received: datetime) -> Decoded:
    """One-off decoding (builds a decoder each call; keep a PayloadDecoder for streams)."""
    return PayloadDecoder(device).decode(topic, payload, received)
