"""Events: what the pipeline tells the agent runtime and dashboards, on topics ``<prefix>/<site>/<kind>/<subject>``.

An event is self-contained: a workflow triggered by one (a fault, a stale sensor, a demand
peak) finds in it what happened, to which point or device, when, the value and unit, the
quality before and after, how serious it is and a sentence for a person, without asking
anything else first. It is flat so that a dashboard can read the JSON without a schema.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field, field_validator

from .advice import Severity
from .reading import Quality, Value, utcnow

__all__ = ["Event", "EventKind", "FaultCode", "event_topic", "new_event_id", "topic_level"]

# What must not appear inside one topic level: the level separator, MQTT's wildcards (a topic
# with them cannot be published to) and NUL (forbidden in MQTT strings).
_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


class EventKind(StrEnum):
    READING = "reading"  # a point's value, decimated to one per point per readings_every_s
    QUALITY = "quality"  # a point's quality or set of reasons changed (e.g. good -> bad [stale])
    FAULT = "fault"  # a device or the store failed or recovered; the buffer is nearly full
    DEMAND = "demand"  # a derived ``<meter>.demand`` interval reading (kW), never decimated
    ENERGY = "energy"  # a derived ``<meter>.interval`` energy reading (kWh), never decimated


class FaultCode(StrEnum):
    """What a fault event says happened (``Event.code``); the pairs are failure and recovery."""

    DEVICE_OFFLINE = "device_offline"
    DEVICE_ONLINE = "device_online"
    STORE_FAILING = "store_failing"
    STORE_RECOVERED = "store_recovered"
    BUFFER_HIGH = "buffer_high"
    BUFFER_OK = "buffer_ok"


def topic_level(text: str) -> str:
    """``text`` made safe as one topic level: no '/', '+', '#' or NUL, never empty."""
    # Ids are dot-separated lower case, so the scan (four C-speed searches) is all most calls cost.
    if not text or "/" in text or "+" in text or "#" in text or "\0" in text:
        return text.translate(_UNSAFE) or "_"
    return text


@functools.lru_cache(maxsize=64)
def _head(prefix: str, site: str) -> str:
    return "/".join(topic_level(p) for p in prefix.split("/")) + "/" + topic_level(site)


def event_topic(prefix: str, site: str, kind: str, subject: str) -> str:
    """``<prefix>/<site>/<kind>/<subject>``. The prefix may span levels ('bldg7/eaio') but has
    its wildcards replaced; the other parts are one level each."""
    return f"{_head(prefix, site)}/{topic_level(kind)}/{topic_level(subject)}"


# Event ids: a random prefix per process and a counter. As unique as uuid4 for a subscriber's
# purposes (telling a redelivered event from a new one), at a tenth of its cost on the hot path.
_PROCESS = uuid.uuid4().hex[:16]
_SEQ = itertools.count(1)


def new_event_id() -> str:
    return f"{_PROCESS}{next(_SEQ):012x}"


class Event(BaseModel):
    """One event. JSON is ``model_dump_json()`` (with ``topic``); ``Event.model_validate_json``
    reads it back. Fields that do not apply to a kind are null / empty."""

    # Frozen: one event object goes to every in-process subscriber; none may change another's.
    model_config = ConfigDict(frozen=True)

    # Unique per event: QoS 1 delivers at least once, so a subscriber may see one twice.
    id: str = Field(default_factory=new_event_id)
    kind: EventKind
    site: str
    subject: str = Field(description="Point id (reading, quality, demand, energy), device id or 'store' (fault)")
    ts: AwareDatetime = Field(default_factory=utcnow, description="The reading's time, or when the fault was seen")
    value: Value | None = None
    unit: str = ""
    quality: Quality | None = None
    reasons: list[str] = Field(default_factory=list)
    previous_quality: Quality | None = Field(default=None, description="Quality events: before the change "
                                             "(null for a point's first sample)")
    previous_reasons: list[str] = Field(default_factory=list)
    severity: Severity | None = Field(default=None, description="Faults and quality changes")
    code: FaultCode | None = Field(default=None, description="Faults: what happened")
    message: str = Field(default="", description="One sentence for a person")
    device_id: str | None = None
    prefix: str = Field(default="eaio", description="First topic level(s), as the bus was configured")

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: datetime) -> datetime:
        return ts.astimezone(UTC)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def topic(self) -> str:
        return event_topic(self.prefix, self.site, self.kind, self.subject)
